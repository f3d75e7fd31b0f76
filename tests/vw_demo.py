"""Virtual workspaces that exist only to prove the framework, and the topology helper their end-to-end tests use.

* ``demo`` (resource kind): every ConfigMap labelled ``demo=true``, in every workspace, writable, at
  ``/services/demo/clusters/<cluster|*>/api/v1/...``. Whoever may do the same thing to ConfigMaps
  directly in that workspace may do it here (a SubjectAccessReview through the ShardClient).
* ``demo-view`` (resource kind with a transformation): the same ConfigMaps, read and updated but never
  created or deleted, with every data value shown upper-cased and stored lower-cased.
* ``demo-proxy`` (proxy kind): members of group ``demo:proxy`` reach a workspace's whole API as user
  ``demo-proxy`` in ``system:masters``, whatever they may do themselves.

``VWTopology`` is what the tests see of a topology: the base URL virtual workspaces are served
under and a kubeconfig of the usual shape pointing there. Embedded, the base is the shard's URL;
the external and forwarded topologies only change that URL.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from kcp_virtual import (APIDefinition, Column, ForwardingStorage, GroupVersionResource, ShardClient, Transformation,
                         User, VirtualWorkspace, cluster_path_resolver, proxy_virtual_workspace,
                         resource_virtual_workspace)

DEMO_LABELS = {"demo": "true"}
CONFIGMAPS = GroupVersionResource("", "v1", "configmaps")
PROXY_GROUP = "demo:proxy"
PROXY_IDENTITY = User("demo-proxy", groups=("system:masters", "system:authenticated"))

_DATA_COLUMN = Column("Data", "integer", "", "", 0,
                      lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))


def _configmaps(storage: ForwardingStorage) -> APIDefinition:
    return APIDefinition("", "v1", "ConfigMap", "configmaps", "configmap", True, storage, short_names=("cm",),
                         columns=(_DATA_COLUMN,))


def _same_as_directly(shard: ShardClient):
    """The caller may do here what it may do to the same workspace directly."""
    return lambda user, attributes, context: shard.subject_access_review(user, attributes)


def demo(shard: ShardClient) -> VirtualWorkspace:
    definitions = (_configmaps(ForwardingStorage(shard, CONFIGMAPS, labels=DEMO_LABELS)),)
    return resource_virtual_workspace("demo", resolve=cluster_path_resolver("demo"),
                                      apis=lambda context: definitions, authorize=_same_as_directly(shard),
                                      version=shard.version)


def _map_data(obj: dict, fn) -> dict:
    if not isinstance(obj.get("data"), dict):
        return obj
    return {**obj, "data": {k: fn(v) if isinstance(v, str) else v for k, v in obj["data"].items()}}


UPPER_CASE = Transformation(to_view=lambda obj, context: _map_data(obj, str.upper),
                            from_view=lambda obj, stored, context: _map_data(obj, str.lower))


def demo_view(shard: ShardClient) -> VirtualWorkspace:
    storage = ForwardingStorage(shard, CONFIGMAPS, labels=DEMO_LABELS, transform=UPPER_CASE,
                                verbs=("get", "list", "watch", "update", "patch"))
    definitions = (_configmaps(storage),)
    return resource_virtual_workspace("demo-view", resolve=cluster_path_resolver("demo-view"),
                                      apis=lambda context: definitions, authorize=_same_as_directly(shard),
                                      version=shard.version)


def demo_proxy(shard: ShardClient) -> VirtualWorkspace:
    def authorize(user, attributes, context):
        if context.wildcard:
            return False, "the proxy serves one workspace at a time"
        if PROXY_GROUP in user.groups:
            return True, ""
        return False, f"only members of {PROXY_GROUP} may use this proxy"

    return proxy_virtual_workspace("demo-proxy", shard=shard, resolve=cluster_path_resolver("demo-proxy"),
                                   authorize=authorize, identity=lambda request: PROXY_IDENTITY)


DEMO_VIRTUAL_WORKSPACES = (demo, demo_view, demo_proxy)
#: The same three as plugins (tests/demo_plugin, installed by the ``demo_plugins`` fixture of tests/conftest.py).
DEMO_PLUGINS = ("demo", "demo-view", "demo-proxy")
DEMO_PLUGIN_PROJECT = Path(__file__).resolve().parent / "demo_plugin"


@dataclass
class VWTopology:
    """A topology as its clients see it: where ``/services/...`` is served and how to reach it."""

    name: str
    base_url: str            # https://host:port, under which /services/<vw>/... is served
    admin_kubeconfig: str    # the shard's admin kubeconfig (credentials and CA the clients use)
    workdir: Path

    def url(self, path: str) -> str:
        """``url("demo/clusters/*")`` -> ``https://host:port/services/demo/clusters/*``."""
        return f"{self.base_url}/services/{path}"

    def kubeconfig(self, path: str) -> str:
        """A kubeconfig of the usual shape (the admin's credentials) whose server is ``url(path)``."""
        config = yaml.safe_load(Path(self.admin_kubeconfig).read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url(path)
        target = self.workdir / f"vw-{hashlib.sha1(path.encode()).hexdigest()[:12]}.kubeconfig"
        target.write_text(yaml.safe_dump(config))
        return str(target)

    def kubectl(self, path: str, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        """kubectl (own HOME and cache) against the virtual workspace URL ``url(path)``."""
        return subprocess.run(self.kubectl_command(path, *args), env=self.kubectl_env(), input=input,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def kubectl_command(self, path: str, *args: str) -> list[str]:
        home = self.workdir / "kubectl-home"
        return ["kubectl", f"--cache-dir={home / 'cache'}", f"--kubeconfig={self.kubeconfig(path)}", *args]

    def kubectl_env(self) -> dict:
        home = self.workdir / "kubectl-home"
        home.mkdir(exist_ok=True)
        return {**os.environ, "HOME": str(home)}

    def api_client(self, path: str):
        """An admin ``kubernetes.client.ApiClient`` whose server is ``url(path)``."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig(path), client_configuration=configuration)
        return client.ApiClient(configuration)
