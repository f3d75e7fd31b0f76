"""Impersonation (``Impersonate-User``/``-Group``/``-Uid``/``-Extra-<key>``), as kube-apiserver does it.

Runs after authentication: every part of the requested identity is authorized for the *real*
caller with verb ``impersonate`` in the request's logical cluster, on ``users`` (or
``serviceaccounts`` in the account's namespace), ``groups``, ``uids`` and ``userextras/<key>``;
one denial is a 403 and nothing is impersonated. Then the request runs as the requested identity.
The headers are removed from the environ so they are never forwarded with another identity.
A ``system:kcp:initializer:*`` group is impersonated only for ``system:masters`` (the external
virtual-workspace process, whose initializingworkspaces content proxy asserts it); anyone else's
request for it is dropped, like the same group from any authenticator (``server.auth.authn``).
"""

from __future__ import annotations

import structlog

from kcp_virtual.external.delegated import header_values, may_claim_identity, pop_extra
from kcp_virtual.framework import errors
from kcp_virtual.framework.authorization import without_initializer_groups
from server.auth.authz import Attributes, Authorizer, forbidden_message
from server.auth.serviceaccounts import CLUSTER_EXTRA, SERVICE_ACCOUNTS_GROUP, split_service_account
from server.auth.user import ANONYMOUS, AUTHENTICATED, UNAUTHENTICATED, UserInfo

USER_KEY = "HTTP_IMPERSONATE_USER"
GROUP_KEY = "HTTP_IMPERSONATE_GROUP"
UID_KEY = "HTTP_IMPERSONATE_UID"
EXTRA_PREFIX = "HTTP_IMPERSONATE_EXTRA_"
AUTHENTICATION_GROUP = "authentication.k8s.io"


def requested(environ: dict) -> bool:
    return may_claim_identity(environ) and any(key.startswith("HTTP_IMPERSONATE_") for key in environ)


def impersonate(environ: dict, requester: UserInfo, authorizer: Authorizer, cluster: str) -> UserInfo:
    """The identity the request runs as: ``requester``, or the impersonated user once every part is allowed."""
    if not requested(environ):
        return requester
    username = (environ.pop(USER_KEY, None) or "").strip()
    groups = header_values(environ.pop(GROUP_KEY, None))
    if not requester.is_master:  # only the external virtual-workspace process (system:masters) vouches for these
        groups = list(without_initializer_groups(groups))
    uid = (environ.pop(UID_KEY, None) or "").strip()
    extra = pop_extra(environ, EXTRA_PREFIX, list)
    if not username:
        raise errors.BadRequest("requested impersonation of groups, uid or extra without impersonating a user")

    def check(resource: str, name: str, *, group: str = "", namespace: str = "", subresource: str = "") -> None:
        attributes = Attributes(user=requester, verb="impersonate", cluster=cluster, is_resource=True,
                                api_group=group, namespace=namespace,
                                resource=resource, subresource=subresource, name=name)
        decision = authorizer.authorize(attributes)
        if not decision.allowed:
            message, details = forbidden_message(attributes, decision.reason)
            raise errors.Forbidden(message, details=details or None)

    service_account = split_service_account(username)
    extra_out: dict[str, list[str]] = {}
    if service_account is not None:
        namespace, name = service_account
        check("serviceaccounts", name, namespace=namespace)
        if not groups:  # an account's groups are a fixed mapping, as in kube
            groups = [SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}"]
        if cluster not in ("", "*"):
            extra_out[CLUSTER_EXTRA] = [cluster]  # an impersonated account belongs to this cluster only
    else:
        check("users", username)
    for group in groups:
        check("groups", group)
    for key, values in extra.items():
        for value in values:
            check("userextras", value, group=AUTHENTICATION_GROUP, subresource=key)
    if uid:
        check("uids", uid, group=AUTHENTICATION_GROUP)
    extra_out.update(extra)
    implied = UNAUTHENTICATED if username == ANONYMOUS else AUTHENTICATED
    if implied not in groups:
        groups.append(implied)
    structlog.contextvars.bind_contextvars(impersonator=requester.name)
    return UserInfo(username, uid, tuple(groups), extra_out)
