"""The ``kcp`` command: ``kcp start`` runs a shard; ``kcp virtual-workspaces`` serves its virtual workspaces apart."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kcp_virtual.cli import workspace as workspace_cli


def _start_parser(sub) -> None:
    start = sub.add_parser("start", help="run a kcp shard (embedded SQLite storage by default)")
    start.add_argument("--root-directory", default=".kcp", help="certificates, kubeconfig and data (default .kcp)")
    start.add_argument("--bind-address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    start.add_argument("--secure-port", type=int, default=6443, help="HTTPS port (default 6443; 0 = any free)")
    start.add_argument("--storage", default=None,
                       help="SQLite database file (default: <root-directory>/kcp.db)")
    start.add_argument("--token-auth-file", default=None,
                       help="static bearer tokens, Kubernetes CSV format: token,user,uid,\"group1,group2\"")
    start.add_argument("--requestheader-client-ca-file", default=None,
                       help="CA whose client certificates may assert X-Remote-User/-Group/-Extra-* "
                            "(default: the generated <root-directory>/requestheader-ca.crt)")
    start.add_argument("--requestheader-allowed-names", default="kcp-shard-proxy",
                       help="comma-separated client-certificate CNs allowed to assert requestheaders; "
                            "empty = any certificate of that CA (default kcp-shard-proxy)")
    start.add_argument("--run-virtual-workspaces", type=_boolean, nargs="?", const=True, default=True,
                       metavar="true|false",
                       help="serve /services/* in-process (default true); false forwards it to "
                            "--shard-virtual-workspace-url (a `kcp virtual-workspaces` process)")
    start.add_argument("--shard-virtual-workspace-url", default=None,
                       help="base URL of this shard's virtual workspaces, published in status "
                            "(default: the shard's own URL)")
    _virtual_workspace_flags(start, "in-process (with --run-virtual-workspaces=true)")
    start.add_argument("--max-connections", type=int, default=None, metavar="N",
                       help="client connections served at once, idle watches included (default 20,000; each needs "
                            "a file descriptor)")
    start.add_argument("--log-format", choices=("text", "json"), default="text")
    start.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1, default=0,
                       help="log verbosity (0 = info, 1+ = debug)")
    start.set_defaults(func=run_start)


def _virtual_workspace_flags(parser, where: str) -> None:
    where = f" {where}" if where else ""
    parser.add_argument("--virtual-workspaces", default=None, metavar="NAMES",
                        help=f"comma-separated names of the installed virtual workspace plugins to serve{where} "
                             "(default: every installed one; an empty value: none of them)")
    parser.add_argument("--virtual-workspace", action="append", default=[], metavar="MODULE:FACTORY",
                        help="also serve this virtual workspace, not packaged as a plugin (a callable taking a "
                             "ShardClient and returning a VirtualWorkspace); repeatable, for development")


def _virtual_workspaces(args) -> list:
    """The virtual workspaces the flags ask for, as ``plugins.select`` takes them: names, then factories."""
    from kcp_virtual.framework import plugins

    names = None if args.virtual_workspaces is None else [
        name.strip() for name in args.virtual_workspaces.split(",") if name.strip()]
    extra = [plugins.load_factory(spec) for spec in args.virtual_workspace]
    if names is None:
        names = sorted(plugins.installed())
    return plugins.select([*names, *extra])


def _boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run_start(args) -> int:
    import structlog

    from kcp_virtual.framework.plugins import PluginError
    from server.http import logs
    from server.shard import Shard, ShardConfig

    logs.configure(args.log_format, args.verbosity)
    log = structlog.get_logger("kcp")
    try:
        virtual_workspaces = tuple(_virtual_workspaces(args))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = ShardConfig(root_directory=Path(args.root_directory), bind_address=args.bind_address,
                         secure_port=args.secure_port, storage=args.storage, token_auth_file=args.token_auth_file,
                         requestheader_client_ca_file=args.requestheader_client_ca_file,
                         requestheader_allowed_names=[n.strip() for n in args.requestheader_allowed_names.split(",")
                                                      if n.strip()],
                         run_virtual_workspaces=args.run_virtual_workspaces,
                         shard_virtual_workspace_url=args.shard_virtual_workspace_url,
                         **({"max_connections": args.max_connections} if args.max_connections else {}),
                         virtual_workspaces=virtual_workspaces)
    if not args.run_virtual_workspaces and not args.shard_virtual_workspace_url:
        print("error: --run-virtual-workspaces=false needs --shard-virtual-workspace-url (where "
              "`kcp virtual-workspaces` listens)", file=sys.stderr)
        return 2
    if args.shard_virtual_workspace_url and not args.shard_virtual_workspace_url.startswith("https://"):
        print("error: --shard-virtual-workspace-url must be an https:// URL", file=sys.stderr)
        return 2
    try:
        shard = Shard(config).start()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        print(f"error: cannot start kcp: {exc}", file=sys.stderr)
        return 1
    print(f"kcp is serving on {shard.url} (logical clusters under {shard.url}/clusters/<workspace>)", flush=True)
    print(f"admin kubeconfig: {shard.kubeconfig_path}  (export KUBECONFIG={shard.kubeconfig_path})", flush=True)
    if not args.run_virtual_workspaces:
        print(f"virtual workspaces: {shard.url}/services/* is forwarded to {args.shard_virtual_workspace_url}",
              flush=True)
    return _serve_until_signalled(shard, log)


def _serve_until_signalled(server, log) -> int:
    """Block until SIGINT or SIGTERM, then stop ``server`` (the shard, or the virtual-workspace server)."""
    import gevent
    import gevent.event

    stopping = gevent.event.Event()

    def stop(signum=None):
        if not stopping.is_set():
            log.info("shutting down", signal=signal.Signals(signum).name if signum else None)
            stopping.set()

    gevent.signal_handler(signal.SIGINT, stop, signal.SIGINT)
    gevent.signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    stopping.wait()
    server.stop()
    log.info("stopped")
    return 0


def _virtual_workspaces_parser(sub) -> None:
    vw = sub.add_parser("virtual-workspaces", help="serve the virtual workspaces of a shard as their own process")
    vw.add_argument("--kubeconfig", required=True,
                    help="how to reach the shard: its admin kubeconfig (<root-directory>/admin.kubeconfig)")
    vw.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    vw.add_argument("--root-directory", default=".kcp",
                    help="the shard's root directory, for the default certificates below (default .kcp)")
    vw.add_argument("--bind-address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    vw.add_argument("--secure-port", type=int, default=6444, help="HTTPS port (default 6444; 0 = any free)")
    vw.add_argument("--tls-cert-file", default=None,
                    help="serving certificate (default <root-directory>/virtual-workspaces.crt)")
    vw.add_argument("--tls-private-key-file", default=None,
                    help="its key (default <root-directory>/virtual-workspaces.key)")
    vw.add_argument("--client-ca-file", default=None,
                    help="CA of user client certificates (default <root-directory>/ca.crt)")
    vw.add_argument("--requestheader-client-ca-file", default=None,
                    help="CA of the proxy allowed to assert X-Remote-* identities "
                         "(default <root-directory>/requestheader-ca.crt)")
    vw.add_argument("--requestheader-allowed-names", default="kcp-shard-proxy",
                    help="comma-separated CNs of that proxy; empty = any certificate of the CA "
                         "(default kcp-shard-proxy)")
    _virtual_workspace_flags(vw, "")
    vw.add_argument("--bookmark-interval", type=float, default=60.0, metavar="SECONDS",
                    help="BOOKMARKs of the watches it serves from its cache, as often as the shard's "
                         "(default 60)")
    vw.add_argument("--log-format", choices=("text", "json"), default="text")
    vw.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1, default=0,
                    help="log verbosity (0 = info, 1+ = debug)")
    vw.set_defaults(func=run_virtual_workspaces)


def run_virtual_workspaces(args) -> int:
    """``kcp virtual-workspaces``: kcp_virtual.external.process's app behind this project's TLS server and request log."""
    import structlog

    from kcp_virtual.external.process import build_app
    from kcp_virtual.framework.plugins import PluginError
    from server.http import logs
    from server.http.metrics import Metrics
    from server.http.serving import Server

    logs.configure(args.log_format, args.verbosity)
    log = structlog.get_logger("kcp")
    root = Path(args.root_directory)
    client_ca = args.client_ca_file or str(root / "ca.crt")
    requestheader_ca = args.requestheader_client_ca_file or str(root / "requestheader-ca.crt")
    try:
        factories = _virtual_workspaces(args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        metrics = Metrics()
        app = build_app(args.kubeconfig, factories=factories, client_ca_file=client_ca,
                        requestheader_ca_file=requestheader_ca, context=args.context, metrics=metrics,
                        bookmark_interval=args.bookmark_interval,
                        allowed_names=[n.strip() for n in args.requestheader_allowed_names.split(",") if n.strip()])
        server = Server(logs.RequestLogMiddleware(app, metrics), host=args.bind_address, port=args.secure_port,
                        certfile=args.tls_cert_file or str(root / "virtual-workspaces.crt"),
                        keyfile=args.tls_private_key_file or str(root / "virtual-workspaces.key"),
                        client_ca_files=[client_ca, requestheader_ca], http2=True)  # the shard's watches
        server.start()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any start-up failure is reported the same way
        log.error("cannot start", error=str(exc))
        print(f"error: cannot start the virtual workspaces: {exc}", file=sys.stderr)
        return 1
    host = args.bind_address if args.bind_address not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    names = ", ".join(vw.name for vw in app.dispatcher.workspaces) or "none"
    print(f"kcp virtual workspaces are serving on https://{host}:{server.port}/services/ ({names}); "
          f"shard: {app.shard.url}", flush=True)
    return _serve_until_signalled(server, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcp", description="kcp-virtual: a kcp-like Kubernetes API server")
    sub = parser.add_subparsers(dest="command", required=True)
    _start_parser(sub)
    _virtual_workspaces_parser(sub)
    workspace_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import gevent.event  # noqa: F401  (imported early so gevent owns the main thread's hub)

    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
