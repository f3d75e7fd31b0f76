"""hack/bench driver: ./hack/bench [--quick] [--json out.json] [--only NAME ...] [--list]"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from . import report, util
from .scenarios import SCENARIOS, Context, ShardUnavailable
from .services import REPO_ROOT


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hack/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="1 wrk run per target instead of 3, 1,000 idle watches only, fewer reps")
    ap.add_argument("--json", default=os.path.join(REPO_ROOT, "hack", "bench-results.json"),
                    help="where to write the results (default: hack/bench-results.json)")
    ap.add_argument("--only", action="append", metavar="SCENARIO",
                    help="run only these scenarios (repeatable); see --list")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--scale", action="store_true",
                    help="also the long scale runs (watch-scale: 50,000 idle watches)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    ap.add_argument("--runs", type=int, help="wrk runs per target (default 3, 1 with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (logs, data)")
    ap.add_argument("--shard-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for kcp start (repeatable)")
    a = ap.parse_args(argv)

    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:14s} {s.title}")
        return 0
    selected = [s for s in SCENARIOS if not a.only or s.name in a.only]
    if a.only and len(selected) != len(set(a.only)):
        known = {s.name for s in SCENARIOS}
        ap.error(f"unknown scenario(s): {', '.join(sorted(set(a.only) - known))}")

    nofile = util.raise_nofile()  # inherited by the shard, the servers and the clients
    cores = util.Cores.detect()
    workdir = tempfile.mkdtemp(prefix="kcp-bench-")
    ctx = Context(workdir=workdir, cores=cores, quick=a.quick, scale=a.scale,
                  runs=a.runs or (1 if a.quick else 3), duration=a.duration,
                  shard_args=a.shard_arg)
    ctx.meta.update({
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": a.quick, "scale": a.scale, "runs": ctx.runs, "wrk_duration_s": a.duration,
        "pinning": cores.describe(), "cpus": os.cpu_count(), "nofile": nofile,
        "python": platform.python_version(), "wrk": _version(["wrk", "-v"]),
        "nginx": _version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "workdir": workdir,
    })
    print(f"hack/bench: {cores.describe()}; work dir {workdir}", flush=True)
    busy = util.background_busy(2.0)
    ctx.meta["background_cpu_busy_pct"] = round(busy, 1)
    if busy > 10:
        print(f"  !! the machine is already {busy:.0f}% busy before the bench starts: other load "
              "skews the numbers (ratios less than absolutes)", flush=True)
    rows, errors = [], []
    t_start = time.monotonic()
    try:
        for s in selected:
            print(f"\n-- {s.name}: {s.title}", flush=True)
            if s.needs_shard and not ctx.shard_ok:
                msg = f"skipped: shard unavailable ({ctx.meta.get('shard_error')})"
                print(f"  !! {msg}", flush=True)
                errors.append({"scenario": s.name, "error": msg})
                continue
            t0 = time.monotonic()
            try:
                for row in s.fn(ctx):
                    rows.append(row)
                    print(f"  -> {row.name}: " + ", ".join(
                        f"{k}={report.fmt(v)}" for k, v in row.metrics.items())
                        + (f"  [{report.short(row.note)}]" if row.note else ""), flush=True)
            except ShardUnavailable as e:
                errors.append({"scenario": s.name, "error": f"shard unavailable: {e}"})
                print(f"  !! shard unavailable: {e}", flush=True)
            except Exception as e:  # noqa: BLE001
                errors.append({"scenario": s.name, "error": f"{type(e).__name__}: {e}"})
                print(f"  !! {s.name} failed:", flush=True)
                traceback.print_exc()
            print(f"  ({time.monotonic() - t0:.0f}s)", flush=True)
    except KeyboardInterrupt:
        errors.append({"scenario": "-", "error": "interrupted"})
    finally:
        ctx.cleanup()
        ctx.meta["seconds"] = round(time.monotonic() - t_start, 1)
    print(report.table(rows))
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"  {e['scenario']}: {e['error']}")
    report.write_json(a.json, ctx.meta, rows, errors)
    print(f"\nwrote {a.json} ({ctx.meta['seconds']}s; {cores.describe()}; machine "
          f"{ctx.meta['background_cpu_busy_pct']}% busy before the start)")
    if a.keep or errors:
        print(f"logs and data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
