"""The authenticated identity of a request, as Kubernetes' ``user.Info``."""

from __future__ import annotations

from dataclasses import dataclass, field

from kcp_virtual.framework.authorization import INITIALIZER_GROUP_PREFIX, without_initializer_groups

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
