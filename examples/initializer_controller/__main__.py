"""``python -m examples.initializer_controller --kubeconfig <type owner kubeconfig> --type-cluster root:org --type db``."""

from __future__ import annotations

import argparse

from examples.initializer_controller.controller import WORKERS, InitializerController
from examples.urlfollower import run_until_signalled


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Initialize the new workspaces of a WorkspaceType.")
    parser.add_argument("--kubeconfig", required=True,
                        help="credentials with initialize on the WorkspaceType (and get/list/watch on workspacetypes)")
    parser.add_argument("--context", default=None)
    parser.add_argument("--type-cluster", required=True, help="the logical cluster of the WorkspaceType")
    parser.add_argument("--type", required=True, help="the WorkspaceType's name")
    parser.add_argument("--workers", type=int, default=WORKERS, help="workspaces initialized at once")
    args = parser.parse_args(argv)
    controller = InitializerController.from_kubeconfig(args.kubeconfig, args.type_cluster, args.type,
                                                       context=args.context, workers=args.workers)
    return run_until_signalled(controller.start(), f"initializer controller: initializer {controller.initializer}")


if __name__ == "__main__":
    raise SystemExit(main())
