"""``python -m examples.widget_controller --kubeconfig <provider kubeconfig> --export-cluster root:provider``."""

from __future__ import annotations

import argparse

from examples.urlfollower import run_until_signalled
from examples.widget_controller.controller import WidgetController


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Reconcile Widgets in every workspace bound to an APIExport.")
    parser.add_argument("--kubeconfig", required=True, help="credentials with apiexports/content on the export")
    parser.add_argument("--context", default=None)
    parser.add_argument("--export-cluster", required=True, help="the logical cluster of the APIExport")
    parser.add_argument("--export", default="widgets", help="the APIExport's name")
    args = parser.parse_args(argv)
    controller = WidgetController.from_kubeconfig(args.kubeconfig, args.export_cluster, args.export,
                                                  context=args.context)
    return run_until_signalled(controller.start(),
                               f"widget controller: watching APIExport {args.export_cluster}/{args.export}")


if __name__ == "__main__":
    raise SystemExit(main())
