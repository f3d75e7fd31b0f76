"""The authenticated identity of a request, as Kubernetes' ``user.Info``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from kcp_virtual.framework.authorization import INITIALIZER_GROUP_PREFIX, without_initializer_groups

T = TypeVar("T")

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def is_master(self) -> bool:
        return MASTERS in self.groups

    @property
    def is_anonymous(self) -> bool:
        return self.name == ANONYMOUS

    def with_authenticated_group(self) -> "UserInfo":
        """Every authenticated user is in ``system:authenticated`` (added once)."""
        if AUTHENTICATED in self.groups:
            return self
        return UserInfo(self.name, self.uid, (*self.groups, AUTHENTICATED), self.extra)

    def without_initializer_groups(self) -> "UserInfo":
        """This user less any ``system:kcp:initializer:*`` group (itself when it has none: the usual case)."""
        if not any(group.startswith(INITIALIZER_GROUP_PREFIX) for group in self.groups):
            return self
        return UserInfo(self.name, self.uid, without_initializer_groups(self.groups), self.extra)

    def as_dict(self) -> dict:
        return {"username": self.name, "uid": self.uid, "groups": list(self.groups),
                "extra": {k: list(v) for k, v in self.extra.items()}}


class PerUser(Generic[T]):
    """``compute(user)`` remembered per ``UserInfo`` object (by identity: a UserInfo with ``extra`` is not
    hashable), for what every request of the same caller would otherwise build again -- authenticators hand
    out the same object for the same credential (a static token). At most ``size`` users are remembered
    (then all are forgotten); an entry keeps its user alive, so its id cannot be reused meanwhile."""

    __slots__ = ("_compute", "_size", "_entries")

    def __init__(self, compute: Callable[[UserInfo], T], size: int = 1024):
        self._compute, self._size = compute, size
        self._entries: dict[int, tuple[UserInfo, T]] = {}

    def __call__(self, user: UserInfo) -> T:
        entry = self._entries.get(id(user))
        if entry is not None and entry[0] is user:
            return entry[1]
        value = self._compute(user)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[id(user)] = (user, value)
        return value
