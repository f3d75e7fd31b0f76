"""``python -m examples.fake_syncer --kubeconfig <syncer kubeconfig> --workspace root:compute --sync-target a``."""

from __future__ import annotations

import argparse

from examples.fake_syncer.syncer import FakeSyncer
from examples.urlfollower import run_until_signalled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the workloads placed on a SyncTarget by reporting them ready.")
    parser.add_argument("--kubeconfig", required=True, help="credentials with sync (and get/list/watch) on the target")
    parser.add_argument("--context", default=None)
    parser.add_argument("--workspace", required=True, help="the logical cluster of the SyncTarget")
    parser.add_argument("--sync-target", required=True, help="the SyncTarget's name")
    args = parser.parse_args(argv)
    syncer = FakeSyncer.from_kubeconfig(args.kubeconfig, args.workspace, args.sync_target,
                                        context=args.context).start()
    return run_until_signalled(syncer, f"fake syncer: running the workloads of SyncTarget "
                                       f"{args.workspace}/{args.sync_target} (key {syncer.key})")


if __name__ == "__main__":
    raise SystemExit(main())
