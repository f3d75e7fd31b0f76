"""The built-in API types the shard serves in every logical cluster, gathered from their modules.

Each API group (or family) lives in its own module and exposes a tuple of ``ResourceType``;
add a module's tuple here to serve it.
"""

from __future__ import annotations

from server.apis.apiextensions import TYPES as APIEXTENSIONS_TYPES
from server.apis.apis_kcp import TYPES as APIS_TYPES
from server.apis.core import TYPES as CORE_TYPES
from server.apis.logicalclusters import TYPES as LOGICAL_CLUSTER_TYPES
from server.apis.rbac import RBAC_TYPES
from server.apis.reviews import TYPES as REVIEW_TYPES
from server.apis.tenancy import TYPES as TENANCY_TYPES
from server.apis.workload import TYPES as WORKLOAD_TYPES, with_workload_annotations
from server.auth.serviceaccounts import with_token_subresource
from server.registry.resourcetype import ResourceType


def builtin_types() -> list[ResourceType]:
    return [*with_workload_annotations(with_token_subresource(CORE_TYPES)), *RBAC_TYPES, *REVIEW_TYPES,
            *TENANCY_TYPES, *APIEXTENSIONS_TYPES, *APIS_TYPES, *LOGICAL_CLUSTER_TYPES, *WORKLOAD_TYPES]
