"""Kubernetes API errors as werkzeug HTTP exceptions that render a ``metav1.Status``.

Every error the API returns, and every ERROR watch event, carries the same Status shape
(apimachinery ``api/errors``); raising one of these anywhere below the WSGI app is enough.
They live here, not in ``server``, so that the shard and the virtual workspaces (which never
import ``server``) raise and catch the very same exceptions; ``kcp_virtual.framework.errors`` re-exports them.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

__all__ = ["STATUS_CONTENT_TYPE", "StatusError", "qualified", "BadRequest", "Unauthorized", "Forbidden", "NotFound",
           "MethodNotAllowed", "NotAcceptable", "AlreadyExists", "Conflict", "Gone", "RequestEntityTooLarge",
           "UnsupportedMediaType", "Invalid", "TooManyRequests", "InternalError", "ServiceUnavailable", "Timeout",
           "expired", "status_success", "respond"]

STATUS_CONTENT_TYPE = "application/json"


class StatusError(HTTPException):
    """An HTTP error whose body is a ``metav1.Status``."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, reason: str | None = None, code: int | None = None,
                 details: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.message = message
        self.details = details
        self.extra_headers = headers or {}

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body

    def get_response(self, environ=None, scope=None) -> Response:
        response = Response(orjson.dumps(self.status()), status=self.code,
                            content_type=STATUS_CONTENT_TYPE)
        for name, value in self.extra_headers.items():
            response.headers[name] = value
        return response


def _details(name: str | None, group: str, kind: str, **extra) -> dict:
    details = {"name": name, "group": group, "kind": kind} if name is not None else {"group": group, "kind": kind}
    details.update({k: v for k, v in extra.items() if v})
    return {k: v for k, v in details.items() if v not in (None, "")}


def qualified(resource: str, group: str) -> str:
    """``widgets.example.com`` or ``configmaps`` for the core group."""
    return f"{resource}.{group}" if group else resource


class BadRequest(StatusError):
    code, reason = 400, "BadRequest"


class Unauthorized(StatusError):
    code, reason = 401, "Unauthorized"

    def __init__(self, message: str = "Unauthorized"):
        super().__init__(message)


class Forbidden(StatusError):
    code, reason = 403, "Forbidden"

    @classmethod
    def for_resource(cls, resource: str, group: str, name: str | None, why: str) -> "Forbidden":
        target = qualified(resource, group) + (f' "{name}"' if name else "")
        return cls(f"{target} is forbidden: {why}", details=_details(name, group, resource))


class NotFound(StatusError):
    code, reason = 404, "NotFound"

    @classmethod
    def for_resource(cls, resource: str, group: str, name: str) -> "NotFound":
        return cls(f'{qualified(resource, group)} "{name}" not found', details=_details(name, group, resource))

    @classmethod
    def path(cls) -> "NotFound":
        return cls("the server could not find the requested resource", details={})


class MethodNotAllowed(StatusError):
    code, reason = 405, "MethodNotAllowed"

    @classmethod
    def for_verb(cls, verb: str, resource: str) -> "MethodNotAllowed":
        return cls(f'{verb} is not supported on resources of kind "{resource}"')

    @classmethod
    def for_method(cls) -> "MethodNotAllowed":
        """A method the path does not take at all, such as PUT or PATCH on a collection (kube's words)."""
        return cls("the server does not allow this method on the requested resource")

    @classmethod
    def for_wildcard(cls, verb: str, resource: str) -> "MethodNotAllowed":
        """Anything but list and watch through the cross-workspace ``/clusters/*`` URL."""
        return cls(f'{verb} is not supported on resources of kind "{resource}" through /clusters/*, which serves '
                   "list and watch across workspaces: name one workspace, /clusters/<workspace>, to read one "
                   "object or write")

    @classmethod
    def for_request(cls, verb: str, name: str, resource: str, wildcard: bool) -> "MethodNotAllowed | None":
        """The 405 every resource endpoint gives before looking at storage, or None."""
        if verb in ("update", "patch") and not name:
            return cls.for_method()
        if wildcard and verb not in ("list", "watch"):
            return cls.for_wildcard(verb, resource)
        return None


class NotAcceptable(StatusError):
    code, reason = 406, "NotAcceptable"


class AlreadyExists(StatusError):
    code, reason = 409, "AlreadyExists"

    @classmethod
    def for_resource(cls, resource: str, group: str, name: str) -> "AlreadyExists":
        return cls(f'{qualified(resource, group)} "{name}" already exists', details=_details(name, group, resource))


class Conflict(StatusError):
    code, reason = 409, "Conflict"

    @classmethod
    def modified(cls, resource: str, group: str, name: str) -> "Conflict":
        return cls(f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": the object has been '
                   "modified; please apply your changes to the latest version and try again",
                   details=_details(name, group, resource))

    @classmethod
    def precondition(cls, resource: str, group: str, name: str, what: str) -> "Conflict":
        return cls(f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {what}',
                   details=_details(name, group, resource))


class Gone(StatusError):
    code, reason = 410, "Expired"


class RequestEntityTooLarge(StatusError):
    code, reason = 413, "RequestEntityTooLarge"


class UnsupportedMediaType(StatusError):
    code, reason = 415, "UnsupportedMediaType"


class Invalid(StatusError):
    code, reason = 422, "Invalid"

    @classmethod
    def for_fields(cls, kind: str, group: str, name: str, causes: list[dict]) -> "Invalid":
        """``causes`` are ``{"type", "field", "message"}`` dicts (FieldValueInvalid, FieldValueRequired...)."""
        summary = ", ".join(f'{c["field"]}: {c["message"]}' for c in causes)
        if len(causes) > 1:
            summary = f"[{summary}]"
        details = _details(name, group, kind)
        # metav1.StatusCause serializes its type as "reason"
        details["causes"] = [{"reason": c.get("type", c.get("reason", "")), "message": c["message"],
                              "field": c["field"]} for c in causes]
        return cls(f'{qualified(kind, group)} "{name}" is invalid: {summary}', details=details)


class TooManyRequests(StatusError):
    code, reason = 429, "TooManyRequests"

    def __init__(self, message: str = "Too many requests, please try again later.", retry_after: int = 1):
        super().__init__(message, details={"retryAfterSeconds": retry_after},
                         headers={"Retry-After": str(retry_after)})


class InternalError(StatusError):
    code, reason = 500, "InternalError"

    def __init__(self, message: str):
        super().__init__(f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


class ServiceUnavailable(StatusError):
    code, reason = 503, "ServiceUnavailable"


class Timeout(StatusError):
    code, reason = 504, "Timeout"


def expired(message: str) -> Gone:
    return Gone(message)


def status_success(name: str, group: str, kind: str, uid: str | None = None) -> dict:
    """The body of a successful delete of an object removed at once."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": _details(name, group, kind, uid=uid)}


def respond(dispatch: Callable[[Request], Response], request: Request, log: Any) -> Response:
    """``dispatch(request)`` with any error answered as a Status: a bug still answers one (a 500, its traceback
    logged to ``log``), never a dropped connection. The WSGI entry of the shard and of the external process."""
    try:
        return dispatch(request)
    except StatusError as exc:
        return exc.get_response()
    except Exception as exc:  # noqa: BLE001 - see above
        log.exception("unhandled error", path=request.path)
        return InternalError(f"{type(exc).__name__}: {exc}").get_response()
