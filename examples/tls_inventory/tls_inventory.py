"""``tls-inventory``: every TLS certificate in the workspaces, read-only, with its expiry and never its private key.

``/services/tls-inventory/clusters/<workspace>/api/v1/secrets`` shows the Secrets of type kubernetes.io/tls of
one workspace to whoever may list Secrets there; ``/clusters/*`` shows those of every workspace to holders of
verb ``inventory`` on ``secrets`` in ``root`` (the grant a platform team gives its certificate auditors).
"""

import base64

from cryptography import x509

from kcp_virtual import (READ_VERBS, APIDefinition, Attributes, Column, ForwardingStorage, GroupVersionResource,
                         Transformation, cluster_path_resolver, resource_virtual_workspace)

NAME = "tls-inventory"
INVENTORY = Attributes(verb="inventory", cluster="root", is_resource=True, resource="secrets", api_version="v1")


def expires(secret: dict) -> str:
    try:
        pem = base64.b64decode((secret.get("data") or {})["tls.crt"])
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, TypeError, ValueError):
        return "<no valid tls.crt>"


def without_key(secret: dict, context) -> dict:
    return {**secret, "data": {k: v for k, v in (secret.get("data") or {}).items() if k != "tls.key"}}


def tls_inventory(shard):
    storage = ForwardingStorage(shard, GroupVersionResource("", "v1", "secrets"), fields={"type": "kubernetes.io/tls"},
                                transform=Transformation(to_view=without_key), verbs=READ_VERBS)
    apis = (APIDefinition("", "v1", "Secret", "secrets", "secret", True, storage,
                          columns=(Column("Expires", format="date-time", getter=expires),)),)

    def authorize(user, attributes, context):
        return shard.subject_access_review(user, INVENTORY if context.wildcard else attributes)

    return resource_virtual_workspace(NAME, resolve=cluster_path_resolver(NAME), apis=lambda context: apis,
                                      authorize=authorize, version=shard.version)
