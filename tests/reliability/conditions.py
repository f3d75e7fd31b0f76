"""How long the reliability suites run, and where their measured figures go.

``KCP_RELIABILITY=long`` selects the long variants (``./hack/reliability`` sets it); every suite asks
``scale(ci, long)`` for its counts. ``record(suite, **figures)`` adds figures to the JSON file named
by ``KCP_RELIABILITY_RESULTS`` (nothing without it), with the date and the machine's conditions.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

LONG = os.environ.get("KCP_RELIABILITY", "") == "long"


def scale(ci, long):
    """``long`` in the long run, ``ci`` otherwise."""
    return long if LONG else ci


def record(suite: str, **figures) -> None:
    path = os.environ.get("KCP_RELIABILITY_RESULTS")
    if not path:
        return
    target = Path(path)
    results = json.loads(target.read_text()) if target.exists() else {}
    results.setdefault("conditions", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "variant": "long" if LONG else "ci",
        "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version()})
    results.setdefault(suite, []).append(figures)
    target.write_text(json.dumps(results, indent=2, sort_keys=True))


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))]


def wait(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """``get()`` once ``ok`` of it holds, polled; an AssertionError showing the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.05)
