"""The deployment splitter: each sync target of a Deployment runs its share of ``spec.replicas``.

A Deployment of R replicas placed on N targets shows target i (0-based, in the stable order of
``placement.placed_keys``: its targets' keys sorted) ``R // N`` replicas, plus one for the first ``R % N``
targets: 5 on two targets is 3 and 2, 0 is 0 on each, 7 on three is 3, 2 and 2. The shares always add up
to R, and the upstream object keeps R. A change of R or of the set of targets changes the shares of the
remaining targets; both are changes of the Deployment itself (its spec, its labels), so every watcher of
the view receives a MODIFIED event with its new share.
"""

from __future__ import annotations

__all__ = ["share"]


def share(replicas: int, keys: tuple[str, ...], key: str) -> int | None:
    """``key``'s share of ``replicas`` among ``keys`` (sorted); None when ``key`` is not one of them."""
    try:
        index = keys.index(key)
    except ValueError:
        return None
    count = len(keys)
    return replicas // count + (1 if index < replicas % count else 0)
