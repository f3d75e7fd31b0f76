"""The ``kcp`` command: ``kcp start`` runs a shard in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _start_parser(sub) -> None:
    start = sub.add_parser("start", help="run a kcp shard (embedded SQLite storage by default)")
    start.add_argument("--root-directory", default=".kcp", help="certificates, kubeconfig and data (default .kcp)")
    start.add_argument("--bind-address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    start.add_argument("--secure-port", type=int, default=6443, help="HTTPS port (default 6443; 0 = any free)")
    start.add_argument("--storage", default=None,
                       help="SQLite database file (default: <root-directory>/kcp.db)")
    start.add_argument("--token-auth-file", default=None,
                       help="static bearer tokens, Kubernetes CSV format: token,user,uid,\"group1,group2\"")
    start.add_argument("--log-format", choices=("text", "json"), default="text")
    start.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1, default=0,
                       help="log verbosity (0 = info, 1+ = debug)")
    start.set_defaults(func=run_start)


def run_start(args) -> int:
    import gevent
    import structlog

    from server import logs
    from server.shard import Shard, ShardConfig

    logs.configure(args.log_format, args.verbosity)
    log = structlog.get_logger("kcp")
    config = ShardConfig(root_directory=Path(args.root_directory), bind_address=args.bind_address,
                         secure_port=args.secure_port, storage=args.storage, token_auth_file=args.token_auth_file)
    try:
        shard = Shard(config).start()
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        print(f"error: cannot start kcp: {exc}", file=sys.stderr)
        return 1
    print(f"kcp is serving on {shard.url} (logical clusters under {shard.url}/clusters/<workspace>)", flush=True)
    print(f"admin kubeconfig: {shard.kubeconfig_path}  (export KUBECONFIG={shard.kubeconfig_path})", flush=True)

    stopping = gevent.event.Event()

    def stop(signum=None):
        if not stopping.is_set():
            log.info("shutting down", signal=signal.Signals(signum).name if signum else None)
            stopping.set()

    gevent.signal_handler(signal.SIGINT, stop, signal.SIGINT)
    gevent.signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    stopping.wait()
    shard.stop()
    log.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcp", description="kcp-virtual: a kcp-like Kubernetes API server")
    sub = parser.add_subparsers(dest="command", required=True)
    _start_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import gevent.event  # noqa: F401  (imported early so gevent owns the main thread's hub)

    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
