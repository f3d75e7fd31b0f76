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
    start.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="the longest a forwarded /services/* request waits for the virtual-workspace server "
                            "(a watch: for its response head), else 504 (default 60)")
    _virtual_workspace_flags(start, "in-process (with --run-virtual-workspaces=true)")
    _limit_arguments(start)
    _etcd_and_sharding_flags(start)
    _logging_flags(start)
    start.set_defaults(func=run_start)


def _logging_flags(parser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("-v", "--v", dest="verbosity", type=int, nargs="?", const=1, default=0,
                        help="log verbosity (0: info, access lines only for 5xx answers; 2: an access line "
                             "per request; 4: debug)")


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


def _limit_arguments(parser) -> None:
    """kube's in-flight limits (``kcp_virtual.framework.inflight``), the same for the shard and the external process,
    and the shard's connection limits (``server.http.serving``)."""
    parser.add_argument("--max-requests-inflight", type=int, default=400, metavar="N",
                        help="read-only requests served at once; more get 429 (watches and system:masters are "
                             "exempt; 0 = no limit; default 400)")
    parser.add_argument("--max-mutating-requests-inflight", type=int, default=200, metavar="N",
                        help="mutating requests served at once; more get 429 (0 = no limit; default 200)")
    parser.add_argument("--audit-log-path", default=None, metavar="FILE",
                        help="append one audit.k8s.io/v1 Event (JSON line, level Metadata) per request: who, what, "
                             "where, the authorization decision and its reason; - is standard output")
    parser.add_argument("--max-connections", type=int, default=20000, metavar="N",
                        help="open connections (parked watches included); more are refused at once (default 20000)")
    # Defaults (None here): server.http.serving's HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT, not imported for `kcp ws`.
    parser.add_argument("--request-header-timeout", type=float, default=None, metavar="SECONDS",
                        help="from a request's first byte to the end of its head (default 32)")
    parser.add_argument("--request-body-timeout", type=float, default=None, metavar="SECONDS",
                        help="from the end of a request head to the end of its body, else 408 (default 60)")
    parser.add_argument("--idle-connection-timeout", type=float, default=None, metavar="SECONDS",
                        help="silence between requests, and the longest a single read or write may block "
                             "(a client that stops reading) (default 120)")


def _timeouts(args) -> dict[str, float]:
    """The connection timeouts given on the command line, as ``Server``/``ShardConfig`` keywords."""
    given = {"header_timeout": args.request_header_timeout, "body_timeout": args.request_body_timeout,
             "idle_timeout": args.idle_connection_timeout}
    return {key: value for key, value in given.items() if value is not None}


def _etcd_and_sharding_flags(start) -> None:
    """``kcp start``'s etcd storage and sharding flags (kept together: one place to merge)."""
    etcd = start.add_argument_group("etcd storage (instead of SQLite)")
    etcd.add_argument("--etcd-servers", default="", metavar="URL[,URL...]",
                      help="store in etcd v3 at these members (http:// or https://) instead of SQLite")
    etcd.add_argument("--etcd-prefix", default=None,
                      help="this shard's key prefix; shards sharing an etcd need prefixes of their own, none "
                           "inside another's (default /registry)")
    etcd.add_argument("--etcd-cafile", default=None, help="CA of the etcd members' serving certificates")
    etcd.add_argument("--etcd-certfile", default=None, help="client certificate for etcd")
    etcd.add_argument("--etcd-keyfile", default=None, help="its key")
    shards = start.add_argument_group("sharding")
    shards.add_argument("--shard-name", default=None,
                        help="this shard's name, its Shard object in root (default root)")
    shards.add_argument("--root-shard-kubeconfig", default=None,
                        help="join the root shard of this admin kubeconfig (<root shard's root directory>/"
                             "admin.kubeconfig) as one more shard; without it, this shard is the root")


def _etcd_and_sharding_config(args) -> dict:
    """The ShardConfig fields of those flags (unset ones keep ShardConfig's defaults), or raise ValueError with
    what is wrong."""
    from server.apis.tenancy import SHARD_NAME
    from server.registry.validation import is_dns1123_label
    from server.storage.etcd import normalize_prefix

    servers = [url.strip() for url in args.etcd_servers.split(",") if url.strip()]
    for url in servers:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--etcd-servers: {url!r} is not an http:// or https:// URL")
    if (args.etcd_certfile is None) != (args.etcd_keyfile is None):
        raise ValueError("--etcd-certfile and --etcd-keyfile go together")
    fields = {"etcd_servers": servers, "etcd_cafile": args.etcd_cafile, "etcd_certfile": args.etcd_certfile,
              "etcd_keyfile": args.etcd_keyfile, "root_shard_kubeconfig": args.root_shard_kubeconfig}
    if args.etcd_prefix is not None:
        try:
            normalize_prefix(args.etcd_prefix)
        except ValueError as exc:
            raise ValueError(f"--etcd-prefix: {exc}") from None
        fields["etcd_prefix"] = args.etcd_prefix
    name = args.shard_name if args.shard_name is not None else SHARD_NAME
    if is_dns1123_label(name):
        raise ValueError(f"--shard-name: {name!r} is not a DNS label (lower case letters, digits and '-')")
    if args.root_shard_kubeconfig and name == SHARD_NAME:
        raise ValueError(f"--root-shard-kubeconfig: a shard joining a root shard needs a --shard-name other than "
                         f"{SHARD_NAME!r}")
    fields["shard_name"] = name
    return fields


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
    from server.storage import StorageError

    logs.configure(args.log_format, args.verbosity)
    log = structlog.get_logger("kcp")
    try:
        virtual_workspaces = tuple(_virtual_workspaces(args))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        etcd_and_sharding = _etcd_and_sharding_config(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = ShardConfig(root_directory=Path(args.root_directory), bind_address=args.bind_address,
                         secure_port=args.secure_port, storage=args.storage, token_auth_file=args.token_auth_file,
                         requestheader_client_ca_file=args.requestheader_client_ca_file,
                         requestheader_allowed_names=[n.strip() for n in args.requestheader_allowed_names.split(",")
                                                      if n.strip()],
                         run_virtual_workspaces=args.run_virtual_workspaces,
                         max_requests_in_flight=args.max_requests_inflight,
                         max_mutating_requests_in_flight=args.max_mutating_requests_inflight,
                         max_connections=args.max_connections, audit_log_path=args.audit_log_path,
                         request_timeout=args.request_timeout,
                         **_timeouts(args),
                         shard_virtual_workspace_url=args.shard_virtual_workspace_url,
                         virtual_workspaces=virtual_workspaces, **etcd_and_sharding)
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
    except (OSError, StorageError) as exc:
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
    _limit_arguments(vw)
    _logging_flags(vw)
    vw.set_defaults(func=run_virtual_workspaces)


def run_virtual_workspaces(args) -> int:
    """``kcp virtual-workspaces``: kcp_virtual.external.process's app behind this project's TLS server and request log."""
    import structlog

    from kcp_virtual.external.process import build_app
    from kcp_virtual.framework.plugins import PluginError
    from kcp_virtual.framework.inflight import InFlightLimiter
    from server.http import logs
    from server.http.audit import AuditLog
    from server.http.metrics import Metrics
    from server.http.serving import Server, client_url

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
        limiter = InFlightLimiter(args.max_requests_inflight, args.max_mutating_requests_inflight)
        metrics.track_in_flight_limit(limiter)
        app = build_app(args.kubeconfig, factories=factories, client_ca_file=client_ca,
                        requestheader_ca_file=requestheader_ca, context=args.context, metrics=metrics,
                        limiter=limiter,
                        bookmark_interval=args.bookmark_interval,
                        allowed_names=[n.strip() for n in args.requestheader_allowed_names.split(",") if n.strip()])
        audit = AuditLog(args.audit_log_path) if args.audit_log_path else None
        server = Server(logs.RequestLogMiddleware(app, metrics, audit=audit), host=args.bind_address,
                        port=args.secure_port,
                        certfile=args.tls_cert_file or str(root / "virtual-workspaces.crt"),
                        keyfile=args.tls_private_key_file or str(root / "virtual-workspaces.key"),
                        client_ca_files=[client_ca, requestheader_ca], http2=True,  # the shard's watches
                        max_connections=args.max_connections, **_timeouts(args))
        server.start()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any start-up failure is reported the same way
        log.error("cannot start", error=str(exc))
        print(f"error: cannot start the virtual workspaces: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(vw.name for vw in app.dispatcher.workspaces) or "none"
    print(f"kcp virtual workspaces are serving on {client_url(args.bind_address, server.port)}/services/ ({names}); "
          f"shard: {app.shard.url}", flush=True)
    return _serve_until_signalled(server, log)


def _front_proxy_parser(sub) -> None:
    proxy = sub.add_parser("front-proxy", help="one URL for the workspaces of every shard (routes /clusters/<path>)")
    proxy.add_argument("--root-shard-kubeconfig", required=True,
                       help="the root shard's admin kubeconfig (<its root directory>/admin.kubeconfig; its CAs "
                            "are taken from there)")
    proxy.add_argument("--root-directory", default=".kcp-front-proxy",
                       help="its certificates and admin.kubeconfig (default .kcp-front-proxy)")
    proxy.add_argument("--bind-address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    proxy.add_argument("--secure-port", type=int, default=6443, help="HTTPS port (default 6443; 0 = any free)")
    _logging_flags(proxy)
    proxy.set_defaults(func=run_front_proxy)


def run_front_proxy(args) -> int:
    import structlog

    from server.frontproxy import FrontProxyServer
    from server.http import logs

    logs.configure(args.log_format, args.verbosity)
    log = structlog.get_logger("kcp")
    try:
        proxy = FrontProxyServer(root_shard_kubeconfig=args.root_shard_kubeconfig, root_directory=args.root_directory,
                                 bind_address=args.bind_address, secure_port=args.secure_port).start()
    except Exception as exc:  # noqa: BLE001 - any start-up failure is reported the same way
        log.error("cannot start", error=str(exc))
        print(f"error: cannot start the front-proxy: {exc}", file=sys.stderr)
        return 1
    print(f"kcp front-proxy is serving on {proxy.url} (workspaces of every shard under {proxy.url}/clusters/"
          "<workspace>)", flush=True)
    print(f"admin kubeconfig: {proxy.kubeconfig_path}  (export KUBECONFIG={proxy.kubeconfig_path})", flush=True)
    return _serve_until_signalled(proxy, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcp", description="kcp-virtual: a kcp-like Kubernetes API server")
    sub = parser.add_subparsers(dest="command", required=True)
    _start_parser(sub)
    _virtual_workspaces_parser(sub)
    _front_proxy_parser(sub)
    workspace_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import gevent.event  # noqa: F401  (imported early so gevent owns the main thread's hub)

    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
