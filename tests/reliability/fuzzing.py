"""Generated requests against every path a shard and its virtual workspaces serve (``test_fuzz``).

Why not schemathesis: it generates mostly what a schema allows, while what breaks servers is what it does
not -- malformed and truncated bodies in every content type, deep nesting, oversized bodies, every patch
type against every path, broken selectors and resourceVersions, percent-encoded and ``..`` paths,
duplicate query parameters. So the paths come from the servers' own OpenAPI v3 (the shard's per
workspace, each virtual workspace's own), and hypothesis strategies mutate everything around them.

Inputs of the bugs #18 fixed are generated like any other: YAML alias bombs, duplicate JSON keys,
non-string and oversized ConfigMap data under invalid keys, PUT to a collection, strategic merge patch
through the apiexport virtual workspace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import quote

from hypothesis import strategies as st

TEMPLATE = re.compile(r"\{([^}]+)\}")
METHODS = ("GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND")
CONTENT_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf",
                 "application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json",
                 "application/apply-patch+yaml", "text/plain", "application/x-www-form-urlencoded",
                 "application/json; charset=utf-16", "multipart/form-data; boundary=x", "", "*/*", "application/")
ACCEPTS = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf", "*/*", "text/html",
           "application/json;as=Table;v=v1;g=meta.k8s.io", "application/json;as=PartialObjectMetadataList;v=v1;"
           "g=meta.k8s.io", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList", "", "garbage/*;q=x")


@dataclass(frozen=True)
class Path:
    """A served path template (``/clusters/root/api/v1/namespaces/{namespace}/configmaps/{name}``) and who serves it."""

    template: str
    server: str  # "shard", or the virtual workspace: "workspaces", "apiexport", "initializingworkspaces", "syncer"

    @property
    def collection(self) -> bool:
        return not self.template.rstrip("/").endswith("}")


def catalog(get_json, clusters: list[str], vw_prefixes: dict[str, list[str]]) -> list[Path]:
    """Every path in the OpenAPI v3 of each of ``clusters`` and of each virtual workspace prefix, plus discovery."""
    paths: set[Path] = set()

    def add_documents(prefix: str, server: str) -> None:
        root = get_json(f"{prefix}/openapi/v3")
        for gv, entry in (root or {}).get("paths", {}).items():
            document = get_json(entry["serverRelativeURL"].split("?")[0] if entry["serverRelativeURL"].startswith("/")
                                else f"{prefix}/openapi/v3/{gv}") or {}
            for template in document.get("paths", {}):
                paths.add(Path(prefix + template, server))
        for discovery in ("/api", "/apis", "/api/v1", "/openapi/v3", "/version"):
            paths.add(Path(prefix + discovery, server))

    for cluster in clusters:
        add_documents(f"/clusters/{cluster}", "shard")
    for server, prefixes in vw_prefixes.items():
        for prefix in prefixes:
            add_documents(prefix, server)
    for extra in ("/healthz", "/livez", "/readyz", "/readyz/ping", "/version", "/metrics", "/", "/api", "/services",
                  "/services/", "/clusters", "/clusters/", "/openapi/v2"):
        paths.add(Path(extra, "shard"))
    return sorted(paths, key=lambda p: p.template)


# --------------------------------------------------------------------------- values

_DNS_NAME = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z", fullmatch=True)
_NASTY_SEGMENTS = st.sampled_from(["..", ".", "%2e%2e", "%2F", "a%2Fb", "%00", "%ff", "UPPER", "a" * 300, "*",
                                   "%2A", "a:b", "root:x", "~", "%20", "%", "%zz", ":", "a..b", "-a", "é",
                                   "%C3%A9", "%E2%80%AE", ";", "a;b=c", "@", "$", "!", "'", "(", ")"])
#: Names of what ``test_fuzz.seed`` creates, so that writes reach stored objects too, not only their 404.
SEEDED_NAMES = st.sampled_from(["a", "w", "placed", "initializing", "widgets", "t", "fuzz", "default"])
SEGMENT = st.one_of(_DNS_NAME, _DNS_NAME, SEEDED_NAMES, _NASTY_SEGMENTS,
                    st.text(st.characters(codec="utf-8"), max_size=12).map(lambda t: quote(t, safe="")))
NAMESPACE = st.one_of(st.sampled_from(["default", "fuzz", "kube-system", "missing-ns"]), SEGMENT)


def fill(template: str, draw) -> str:
    def value(match: re.Match) -> str:
        return draw(NAMESPACE if match.group(1) == "namespace" else SEGMENT)
    return TEMPLATE.sub(value, template)


def mangle(path: str, draw) -> str:
    """Sometimes the path, sometimes it with ``..``, doubled slashes, a trailing slash or a cut segment."""
    how = draw(st.integers(0, 9))
    if how == 0:
        return path + "/"
    if how == 1:
        return path.replace("/", "//", 1)
    if how == 2:
        return path + "/../" + draw(SEGMENT)
    if how == 3:
        return path.rsplit("/", 1)[0] + "/" + draw(SEGMENT)
    if how == 4:
        return path + "/" + draw(SEGMENT) + "/" + draw(SEGMENT)
    if how == 5:
        parts = path.split("/")
        i = draw(st.integers(1, max(1, len(parts) - 1)))
        parts[i] = quote(parts[i], safe="")
        return "/".join(parts)
    return path


_SELECTOR = st.one_of(
    st.sampled_from(["a=b", "a!=b", "a in (b,c)", "a notin (b)", "!a", "a", "a=b,c=d", "a==b", "metadata.name=x",
                     "metadata.namespace!=default", "a in (", "=b", "a=", ",", "a in ()", "a=b=c", "(a)", "a,,b",
                     "a" * 70 + "=b", "a/b/c=d", "status.phase=Ready", "spec.x=y", "a in (b", "x=\u00e9"]),
    st.text(st.characters(codec="utf-8"), max_size=30))
# A resourceVersion past the shard's makes a read wait 3 s for it, then 504 Timeout (ResourceVersionTooLarge),
# as kube does: rare here, or it would be most of the run's time.
_RV = st.integers(0, 39).flatmap(lambda n: st.sampled_from(["99999999999999999999", "12345678"]) if n == 0 else
                                 st.one_of(st.sampled_from(["0", "1", "-1", "", "abc", "1.5", " 1", "0x10", "1e3"]),
                                           st.integers(-5, 20).map(str)))
_NUMBER = st.one_of(st.sampled_from(["-1", "0", "1", "", "x", "9" * 30, "1.5"]), st.integers(-10, 10 ** 6).map(str))
QUERY_PARAMS = {
    "labelSelector": _SELECTOR, "fieldSelector": _SELECTOR, "resourceVersion": _RV,
    "resourceVersionMatch": st.sampled_from(["NotOlderThan", "Exact", "", "bogus"]), "limit": _NUMBER,
    "continue": st.one_of(st.sampled_from(["", "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MX0", "%%%", "e30="]),
                          st.binary(max_size=40).map(lambda b: quote(b))),
    "dryRun": st.sampled_from(["All", "", "bogus", "All,All"]), "fieldManager": st.one_of(SEGMENT, st.just("")),
    "fieldValidation": st.sampled_from(["Strict", "Warn", "Ignore", "", "bogus"]),
    "force": st.sampled_from(["true", "false", "x"]), "pretty": st.sampled_from(["true", "1", "x"]),
    "propagationPolicy": st.sampled_from(["Foreground", "Background", "Orphan", "x"]),
    "gracePeriodSeconds": _NUMBER, "allowWatchBookmarks": st.sampled_from(["true", "false", "x"]),
    "sendInitialEvents": st.sampled_from(["true", "false", "x"]), "includeObject": st.sampled_from(
        ["None", "Metadata", "Object", "x"]), "timeout": st.sampled_from(["1s", "x", "-1s", "10m"]),
    "orphanDependents": st.sampled_from(["true", "false", "x"]), "x": SEGMENT,
}


@st.composite
def query(draw) -> str:
    """A query string: known parameters with broken values, duplicates, and perhaps a bounded watch."""
    pairs = []
    if draw(st.integers(0, 5)) == 0:  # a watch: timeoutSeconds first, so a duplicate of it never wins
        pairs.append(("timeoutSeconds", "1"))
        pairs.append(("watch", draw(st.sampled_from(["true", "1", "false", "x"]))))
    for name in draw(st.lists(st.sampled_from(sorted(QUERY_PARAMS)), max_size=4)):
        pairs.append((name, draw(QUERY_PARAMS[name])))
        if draw(st.integers(0, 6)) == 0:
            pairs.append((name, draw(QUERY_PARAMS[name])))  # a duplicate
    return "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs)


# --------------------------------------------------------------------------- bodies

_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                    st.text(max_size=20))
JSON_VALUE = st.recursive(_SCALAR, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=12)
_KEY = st.one_of(st.from_regex(r"\A[-._a-zA-Z0-9]{1,20}\Z", fullmatch=True), st.text(max_size=12))


@st.composite
def kube_object(draw) -> dict:
    """Something shaped like an object of any kind, with wrong pieces here and there."""
    obj: dict = {}
    if draw(st.booleans()):
        obj["apiVersion"] = draw(st.sampled_from(["v1", "apps/v1", "example.io/v1", "tenancy.kcp.dev/v1alpha1",
                                                  "bogus/v9", "", "v1/v1"]))
    if draw(st.booleans()):
        obj["kind"] = draw(st.sampled_from(["ConfigMap", "Secret", "Namespace", "Widget", "ClusterWorkspace",
                                            "Role", "Deployment", "Status", "", "List"]))
    metadata: dict = {}
    for field_name, strategy in (("name", st.one_of(_DNS_NAME, SEGMENT)), ("namespace", NAMESPACE),
                                 ("generateName", _DNS_NAME), ("resourceVersion", _RV),
                                 ("labels", st.dictionaries(_KEY, st.text(max_size=10), max_size=3)),
                                 ("annotations", st.dictionaries(_KEY, st.text(max_size=10), max_size=3)),
                                 ("finalizers", st.lists(st.text(max_size=12), max_size=2)),
                                 ("uid", st.text(max_size=10)), ("deletionTimestamp", st.text(max_size=25)),
                                 ("ownerReferences", st.lists(JSON_VALUE, max_size=2)),
                                 ("managedFields", st.lists(JSON_VALUE, max_size=2))):
        if draw(st.integers(0, 3)) == 0:
            metadata[field_name] = draw(strategy)
    if draw(st.integers(0, 6)):
        obj["metadata"] = metadata
    elif draw(st.booleans()):
        obj["metadata"] = draw(JSON_VALUE)
    if draw(st.booleans()):
        obj["data"] = draw(st.dictionaries(_KEY, st.one_of(st.text(max_size=30), JSON_VALUE), max_size=3))
    for field_name in draw(st.lists(st.sampled_from(["spec", "status", "rules", "roleRef", "subjects", "stringData",
                                                     "binaryData", "type", "immutable", "items"]), max_size=3)):
        obj[field_name] = draw(JSON_VALUE)
    return obj


def _yaml(value) -> bytes:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=False)
    return text.encode()


#: The billion laughs: nine levels of nine aliases each.
_ALIAS_BOMB = ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join('*' + chr(97 + i) for _ in range(9))}]\n" for i in range(8))).encode()


@st.composite
def body(draw) -> tuple[bytes | None, str]:
    """(bytes, content type): well-formed and malformed bodies of every kind."""
    kind = draw(st.integers(0, 15))
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if kind == 0:
        return None, content_type
    if kind <= 4:
        return json.dumps(draw(kube_object())).encode(), content_type
    if kind == 5:  # truncated JSON
        data = json.dumps(draw(kube_object())).encode()
        return data[:draw(st.integers(0, max(0, len(data) - 1)))], content_type
    if kind == 6:  # deep nesting
        depth = draw(st.sampled_from([50, 500, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode(), "application/json"
    if kind == 7:  # random bytes, sometimes with the kubernetes protobuf magic
        raw = draw(st.binary(max_size=200))
        return (b"k8s\x00" + raw if draw(st.booleans()) else raw), content_type
    if kind == 8:
        return _yaml(draw(kube_object())), draw(st.sampled_from(["application/yaml", "application/apply-patch+yaml"]))
    if kind == 9:  # a JSON patch, right or wrong
        ops = draw(st.lists(st.fixed_dictionaries({
            "op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "bogus"]),
            "path": st.sampled_from(["/metadata/labels/a", "/data/x", "/spec", "", "/", "/metadata/name", "/x/~2",
                                     "/items/-", "/metadata/finalizers/0", "a"]),
            "value": JSON_VALUE, "from": st.sampled_from(["/data/x", "/metadata", ""])}), max_size=3))
        return json.dumps(ops).encode(), "application/json-patch+json"
    if kind == 10:  # a merge patch or strategic merge patch of any JSON
        return json.dumps(draw(JSON_VALUE)).encode(), draw(st.sampled_from(
            ["application/merge-patch+json", "application/strategic-merge-patch+json"]))
    if kind == 11:  # big: just past the 3 MiB body limit, or well under it
        size = draw(st.sampled_from([3 * 1024 * 1024 + 10, 200_000]))
        return (b'{"metadata":{"name":"big"},"x":"' + b"a" * size + b'"}'), "application/json"
    if kind == 12:  # invalid UTF-8 inside JSON
        return b'{"metadata":{"name":"\xff\xfe"}}', "application/json"
    if kind == 13:
        return json.dumps(draw(JSON_VALUE)).encode(), content_type
    if kind == 14:  # what kube refuses by name: duplicate keys, an alias bomb, a ConfigMap past 1 MiB
        return draw(st.sampled_from([
            (b'{"metadata":{"name":"d","name":"e"},"data":{"a":"1","a":"2"}}', "application/json"),
            (_ALIAS_BOMB, "application/yaml"),
            (b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"x":"'
             + b"a" * (1024 * 1024 + 10) + b'"}}', "application/json")]))
    return draw(st.sampled_from([b"null", b"[]", b"{}", b'""', b"1", b"true", b"{", b"}", b"\x00", b" "])), content_type
