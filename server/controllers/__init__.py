"""In-process controllers of the shard (workspace lifecycle, API binding, URL publication...).

A controller is anything with ``start()`` and ``stop()``; ``Shard`` starts them after storage and
the API are up, on the shard's gevent hub, and stops them before storage closes.
"""

from __future__ import annotations

from typing import Protocol


class Controller(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...
