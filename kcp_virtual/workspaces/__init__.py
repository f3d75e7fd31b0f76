"""The ``workspaces`` virtual workspace: ``kubectl get workspaces`` shows only the
workspaces the caller may access, computed from the live RBAC state on every request.

Read in this order: ``virtualworkspace`` (URL, authorizer, the factory), ``visibility`` (rules to
names), ``storage`` (get, list, create, delete), ``watch`` (the view kept current), ``projection``
(ClusterWorkspace to Workspace).
"""

from kcp_virtual.workspaces.virtualworkspace import NAME, SCOPES, url_path, workspaces

__all__ = ["NAME", "SCOPES", "url_path", "workspaces"]
