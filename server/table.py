"""The shard's name for ``kcp_virtual.framework.table``: shared with the virtual workspaces, which never import
``server``, so it lives there (DESIGN.md section 1, dependency direction)."""

from kcp_virtual.framework.table import *  # noqa: F401,F403
from kcp_virtual.framework.table import __all__  # noqa: F401
