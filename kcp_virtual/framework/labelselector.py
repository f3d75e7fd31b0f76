"""A caller's label selector as a view that hides labels must pass it on to the shard.

The shard evaluates a selector on the stored labels; a view whose ``to_view`` hides some (the syncer's: every
other target's ``state.workload.kcp.dev/<key>``) would let a selector on them tell what the view hides --
``labelSelector=state.workload.kcp.dev/<other>=Sync`` would list exactly the objects also placed on the other
target. So each requirement on a hidden key is decided here as the view shows the object, where that label is
absent: ``!key``, ``key!=v`` and ``key notin (...)`` hold (dropped), ``key``, ``key=v``, ``key==v``,
``key in (...)``, ``key>n`` and ``key<n`` do not (the selector then matches nothing). A term this does not
recognize is passed on unchanged, for the shard to judge (and refuse, 400, when it is malformed).
"""

from __future__ import annotations

import re
from typing import Callable

__all__ = ["deciding_hidden", "NOTHING"]

#: A selector no object matches (a label both present and absent).
NOTHING = "kcp.dev/matches-nothing,!kcp.dev/matches-nothing"
_KEY = r"\s*([^\s!=<>(),]+)\s*"
_VALUE = r"\s*[^\s!=<>(),]*\s*"
_SET = r"\s*\([^()]*\)\s*"
_HOLDS_WHEN_ABSENT = tuple(re.compile(p) for p in (rf"\s*!{_KEY}", rf"{_KEY}!={_VALUE}", rf"{_KEY}\snotin{_SET}"))
_FAILS_WHEN_ABSENT = tuple(re.compile(p) for p in (_KEY, rf"{_KEY}==?{_VALUE}", rf"{_KEY}\sin{_SET}",
                                                   rf"{_KEY}[<>]\s*-?[0-9]+\s*"))


def _terms(selector: str) -> list[str]:
    """The selector's requirements: split at the commas outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def _absent_holds(term: str) -> tuple[str, bool] | None:
    """(key, whether the requirement holds for an object without that label), or None for a term not understood."""
    for holds, patterns in ((True, _HOLDS_WHEN_ABSENT), (False, _FAILS_WHEN_ABSENT)):
        for pattern in patterns:
            match = pattern.fullmatch(term)
            if match:
                return match.group(1), holds
    return None


def deciding_hidden(selector: str, hidden: Callable[[str], bool]) -> str:
    """``selector`` with every requirement on a ``hidden`` label key decided as if the label were absent."""
    kept, nothing = [], False
    for term in _terms(selector):
        decided = _absent_holds(term)
        if decided is None or not hidden(decided[0]):
            kept.append(term)
        elif not decided[1]:
            nothing = True
    return ",".join([*kept, NOTHING] if nothing else kept)
