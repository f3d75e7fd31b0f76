"""The ``initializingworkspaces`` virtual workspace (DESIGN.md section 4): a workspace type's owner initializes the
new workspaces of its type, and nothing else.

Read in this order: ``virtualworkspace`` (URL, authorization rules, the three parts, the factory),
``initializers`` (names, the labels the shard derives, the group), ``status`` (the one write allowed),
``clusterworkspaces`` (the resource as served).
"""

from kcp_virtual.initializingworkspaces.virtualworkspace import NAME, initializingworkspaces, url_path

__all__ = ["NAME", "initializingworkspaces", "url_path"]
