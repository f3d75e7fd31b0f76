"""``python -m tests.reliability.summary results.json``: the figures of a reliability run, as README rows."""

from __future__ import annotations

import json
import sys


def summarize(results: dict) -> list[str]:
    lines = [f"conditions: {json.dumps(results.get('conditions', {}), sort_keys=True)}"]
    for run in results.get("overload", []):
        p = run["prober"]
        lines.append(f"overload | {run['attack']} | prober p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, "
                     f"max {p['max_ms']} ms, {p['requests']} requests {p['statuses']}, errors {p['errors']} | "
                     f"{json.dumps({k: v for k, v in run.items() if k not in ('attack', 'prober')}, sort_keys=True)}")
    for run in results.get("crash", []):
        lines.append(f"crash | {run['kills']} kills, {run['clients']} clients, {run['watchers']} watchers | "
                     f"acknowledged {run['acknowledged']}, lost {run['lost']} | restart p50 {run['restart_s_p50']} s, "
                     f"max {run['restart_s_max']} s | resumed watches exact {run['watch_resumes_exact']}, "
                     f"410 + relist {run['watch_resumes_expired_410']}")
    for run in results.get("vw_crash", []):
        for fault in run["runs"]:
            lines.append(f"vw_crash | {json.dumps(fault, sort_keys=True)}")
    for run in results.get("fuzz", []):
        lines.append(f"fuzz | {run['requests']} requests over {run['paths']} paths in {run['seconds']} s | "
                     f"5xx {run['responses_5xx']} (504 ResourceVersionTooLarge: {run['rv_too_large_504']}) | "
                     f"alive {run['shard_alive']} | {run['by_server']}")
    for run in results.get("oracle", []):
        lines.append(f"oracle | {run['topology']}: {run['checks']} checks, {run['mutations']} mutations | "
                     f"leaks {run['leaks']}, wrong denials {run['wrong_denials']}, other {run['other_mismatches']} | "
                     f"lagged then converged {run['lagged_then_converged']} (max {run['lag_max_ms']} ms)")
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print("\n".join(summarize(json.load(f))))
