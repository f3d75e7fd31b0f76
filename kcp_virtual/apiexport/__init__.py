"""The ``apiexport`` virtual workspace : an export's objects in every workspace bound to it.

Read in this order: ``virtualworkspace`` (URL, authorizer, binding check, the factory), ``exports``
(the export's resources and bindings as the shard has them now).
"""

from kcp_virtual.apiexport.virtualworkspace import NAME, NOT_BOUND, apiexport, url_path

__all__ = ["NAME", "NOT_BOUND", "apiexport", "url_path"]
