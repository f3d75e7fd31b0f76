"""The shard's name for ``kcp_virtual.framework.requestinfo``: shared with the virtual workspaces, which never import
``server``, so it lives there (DESIGN.md section 1, dependency direction)."""

from kcp_virtual.framework.requestinfo import *  # noqa: F401,F403
from kcp_virtual.framework.requestinfo import __all__  # noqa: F401
