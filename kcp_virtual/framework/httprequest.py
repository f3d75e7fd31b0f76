"""The werkzeug request class of both servers (shard and virtual-workspace process).

Its only change: ``request.args.get(name)`` for a parameter the client did not send. werkzeug's
``MultiDict.get`` looks the key up by raising and catching ``BadRequestKeyError`` (~1 µs each), and
every request asks for several absent parameters (``watch``, ``includeObject``, ``fieldValidation``...).
"""

from __future__ import annotations

from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.wrappers import Request

__all__ = ["HTTPRequest", "QueryArgs"]


class QueryArgs(ImmutableMultiDict):
    """Query parameters; ``get`` of an absent key answers the default without an exception."""

    def get(self, key, default=None, type=None):  # noqa: A002 - werkzeug's signature
        if key not in self:
            return default
        return super().get(key, default, type)


class HTTPRequest(Request):
    parameter_storage_class = QueryArgs
