"""Printing rows as tables (one per group) and writing them as JSON."""

from __future__ import annotations

import dataclasses
import json


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(v, list):
        return "/".join(fmt(x) for x in v)
    return str(v)


def short(note: str, width: int = 100) -> str:
    """First line of a note, cut to width (the JSON keeps it whole)."""
    first = note.strip().splitlines()[0] if note.strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."


def table(rows) -> str:
    out = []
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    for group, rs in groups.items():
        cols: list[str] = []
        for r in rs:
            for k, v in r.metrics.items():
                if k not in cols and not isinstance(v, dict):  # breakdowns (dicts) are in the JSON only
                    cols.append(k)
        header = ["", *cols, "target", "ok", "note"]
        lines = [[r.name, *(fmt(r.metrics.get(k)) for k in cols), r.target or "",
                  fmt(r.ok) if r.ok is not None else "", short(r.note)] for r in rs]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        out.append(f"\n== {group}")

        def line(cells):
            parts = []
            for i, (c, w) in enumerate(zip(cells, widths)):
                if i == len(cells) - 1:
                    parts.append(str(c))
                elif i == 0 or i >= len(cells) - 3:
                    parts.append(str(c).ljust(w))
                else:
                    parts.append(str(c).rjust(w))
            return "  ".join(parts).rstrip()

        out.append(line(header))
        out.extend(line(c) for c in lines)
    return "\n".join(out)


def write_json(path: str, meta: dict, rows, errors: list[dict]):
    def clean(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    data = {"meta": meta, "rows": [clean(dataclasses.asdict(r)) for r in rows], "errors": errors}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
