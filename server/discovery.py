"""The shard's name for ``kcp_virtual.framework.discovery``: shared with the virtual workspaces, which never import
``server``, so it lives there (DESIGN.md section 1, dependency direction)."""

from kcp_virtual.framework.discovery import *  # noqa: F401,F403
from kcp_virtual.framework.discovery import __all__  # noqa: F401
