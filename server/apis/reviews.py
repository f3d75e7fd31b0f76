"""The review APIs: ask the shard who a token is and what a user may do. Created, answered, never stored.

* ``authentication.k8s.io/v1``: TokenReview (delegated authentication: is this token valid *in
  this logical cluster*, and whose is it), SelfSubjectReview (``kubectl auth whoami``).
* ``authorization.k8s.io/v1``: SubjectAccessReview and LocalSubjectAccessReview (delegated
  authorization for virtual workspaces and external processes), SelfSubjectAccessReview
  (``kubectl auth can-i``), SelfSubjectRulesReview (``kubectl auth can-i --list``).

Every decision goes through the shard's installed authorizer (``ctx.services.authorizer``) in the
logical cluster of the URL, so reviews and real requests can never disagree.
"""

from __future__ import annotations

from kcp_virtual.framework import errors
from server.auth.authz import Attributes, Decision
from server.auth.serviceaccounts import CLUSTER_EXTRA, InvalidToken, scope_user, split_service_account
from server.auth.user import UserInfo
from server.registry import validation
from server.registry.resourcetype import RequestContext, ResourceType

AUTHENTICATION = "authentication.k8s.io"
AUTHORIZATION = "authorization.k8s.io"
VERSION = "v1"


def _review(ctx: RequestContext, kind: str, group: str) -> dict:
    """The posted object (validated as a JSON object of this kind), its spec, and a response skeleton."""
    if ctx.cluster == "*":
        raise errors.MethodNotAllowed(f"{kind} is not supported on the cross-cluster view")
    body = ctx.body
    if not isinstance(body, dict):
        raise errors.BadRequest(f"the request body must be a {kind} object")
    if body.get("kind") not in (None, "", kind):
        raise errors.BadRequest(f'the body is a {body.get("kind")}, expected {kind}')
    spec = body.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise errors.BadRequest("spec must be an object")
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return {"kind": kind, "apiVersion": f"{group}/{VERSION}", "metadata": {**metadata, "creationTimestamp": None},
            "spec": spec}


def _strings(value, field: str, causes: list) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        causes.append(validation.invalid(field, value, "must be a list of strings"))
        return []
    return list(value)


def _extra(value, causes: list) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        causes.append(validation.invalid("spec.extra", value, "must be a map of string lists"))
        return {}
    return {str(k): _strings(v, f"spec.extra[{k}]", causes) for k, v in value.items()}


# ---------------------------------------------------------------------- authentication.k8s.io


def token_review(ctx: RequestContext) -> tuple[int, dict]:
    """Run the shard's authenticators on ``spec.token`` as if it came with a request to this cluster."""
    review = _review(ctx, "TokenReview", AUTHENTICATION)
    spec = review["spec"]
    causes: list = []
    token = spec.get("token")
    if not isinstance(token, str) or not token.strip():
        causes.append(validation.required("spec.token"))
    audiences = _strings(spec.get("audiences"), "spec.audiences", causes)
    if causes:
        raise errors.Invalid.for_fields("TokenReview", AUTHENTICATION, "", causes)
    environ = {"HTTP_AUTHORIZATION": f"Bearer {token.strip()}", "kcp.cluster": ctx.cluster}
    if audiences:
        environ["kcp.token_audiences"] = tuple(audiences)
    try:
        user = ctx.services.authenticator.authenticate(environ)
    except InvalidToken as exc:
        user, error = None, exc.detail
    except errors.Unauthorized:
        user, error = None, "invalid bearer token"
    else:
        error = "invalid bearer token"
    if user is not None and user.is_anonymous:  # e.g. a service-account token of another logical cluster
        user, error = None, f'the token is not valid in logical cluster "{ctx.cluster}"'
    if user is None:
        review["status"] = {"authenticated": False, "user": {}, "error": error}
    else:
        review["status"] = {"authenticated": True, "user": user.as_dict(),
                            "audiences": audiences or list(_api_audiences(ctx))}
    return 201, review


def _api_audiences(ctx: RequestContext) -> tuple[str, ...]:
    issuer = getattr(ctx.services, "token_issuer", None)
    return issuer.api_audiences if issuer is not None else ()


def self_subject_review(ctx: RequestContext) -> tuple[int, dict]:
    """The caller's own identity, after impersonation (``kubectl auth whoami``)."""
    review = _review(ctx, "SelfSubjectReview", AUTHENTICATION)
    review.pop("spec", None)
    review["status"] = {"userInfo": ctx.user.as_dict()}
    return 201, review


# ---------------------------------------------------------------------- authorization.k8s.io


def _attributes(spec: dict, user: UserInfo, cluster: str, causes: list, *, local_namespace: str | None = None
                ) -> Attributes | None:
    """kube's ``ValidateSubjectAccessReviewSpec`` + ``ResourceAttributesFrom``/``NonResourceAttributesFrom``."""
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if (resource is None) == (non_resource is None):
        causes.append(validation.invalid("spec.resourceAttributes", "null" if resource is None else resource,
                                         "exactly one of nonResourceAttributes or resourceAttributes must be "
                                         "specified"))
        return None
    if local_namespace is not None and non_resource is not None:
        causes.append(validation.invalid("spec.nonResourceAttributes", non_resource,
                                         "disallowed on this kind of request"))
        return None
    attrs = resource if resource is not None else non_resource
    field = "spec.resourceAttributes" if resource is not None else "spec.nonResourceAttributes"
    if not isinstance(attrs, dict):
        causes.append(validation.invalid(field, attrs, "must be an object"))
        return None
    values = {}
    for key in ("namespace", "verb", "group", "version", "resource", "subresource", "name", "path"):
        value = attrs.get(key) or ""
        if not isinstance(value, str):
            causes.append(validation.invalid(f"{field}.{key}", value, "must be a string"))
            value = ""
        values[key] = value
    if causes:
        return None
    if resource is not None:
        if local_namespace is not None and values["namespace"] != local_namespace:
            raise errors.BadRequest(f"spec.resourceAttributes.namespace must match namespace: {local_namespace}")
        return Attributes(user=user, verb=values["verb"], cluster=cluster, is_resource=True,
                          api_group=values["group"], api_version=values["version"], namespace=values["namespace"],
                          resource=values["resource"], subresource=values["subresource"], name=values["name"])
    return Attributes(user=user, verb=values["verb"], cluster=cluster, is_resource=False, path=values["path"])


def _access_status(ctx: RequestContext, attributes: Attributes) -> dict:
    decision: Decision = ctx.services.authorizer.authorize(attributes)
    status: dict = {"allowed": bool(decision.allowed)}
    if getattr(decision, "denied", False):
        status["denied"] = True
    if decision.reason:
        status["reason"] = decision.reason
    return status


def _subject(spec: dict, causes: list) -> UserInfo:
    user = spec.get("user") or ""
    uid = spec.get("uid") or ""
    for field, value in (("spec.user", user), ("spec.uid", uid)):
        if not isinstance(value, str):
            causes.append(validation.invalid(field, value, "must be a string"))
    groups = _strings(spec.get("groups"), "spec.groups", causes)
    extra = _extra(spec.get("extra"), causes)
    if not causes and not user and not groups:
        causes.append(validation.invalid("spec.user", "", "at least one of user or group must be specified"))
    return UserInfo(user if isinstance(user, str) else "", uid if isinstance(uid, str) else "", tuple(groups), extra)


def _in_cluster(user: UserInfo, cluster: str) -> UserInfo:
    """The reviewed subject as seen in ``cluster``: a service account named without its logical cluster is
    this cluster's; one that carries another cluster is anonymous here (see ``serviceaccounts``)."""
    if split_service_account(user.name) is not None and CLUSTER_EXTRA not in user.extra:
        return UserInfo(user.name, user.uid, user.groups, {**user.extra, CLUSTER_EXTRA: [cluster]})
    return scope_user(user, cluster)


def _subject_access(ctx: RequestContext, kind: str, local_namespace: str | None) -> tuple[int, dict]:
    review = _review(ctx, kind, AUTHORIZATION)
    spec = review["spec"]
    causes: list = []
    user = _subject(spec, causes)
    if local_namespace is not None:
        meta_namespace = review["metadata"].get("namespace")
        if meta_namespace and meta_namespace != local_namespace:
            raise errors.BadRequest(f"metadata.namespace must match namespace: {local_namespace}")
        review["metadata"]["namespace"] = local_namespace
    attributes = _attributes(spec, _in_cluster(user, ctx.cluster), ctx.cluster, causes,
                             local_namespace=local_namespace)
    if causes:
        raise errors.Invalid.for_fields(kind, AUTHORIZATION, "", causes)
    review["status"] = _access_status(ctx, attributes)
    return 201, review


def subject_access_review(ctx: RequestContext) -> tuple[int, dict]:
    """May ``spec.user``/``groups``/``extra`` do this in the URL's logical cluster?"""
    return _subject_access(ctx, "SubjectAccessReview", None)


def local_subject_access_review(ctx: RequestContext) -> tuple[int, dict]:
    """SubjectAccessReview confined to the URL's namespace."""
    return _subject_access(ctx, "LocalSubjectAccessReview", ctx.namespace)


def self_subject_access_review(ctx: RequestContext) -> tuple[int, dict]:
    """May the caller do this here (``kubectl auth can-i``)?"""
    review = _review(ctx, "SelfSubjectAccessReview", AUTHORIZATION)
    causes: list = []
    attributes = _attributes(review["spec"], ctx.user, ctx.cluster, causes)
    if causes:
        raise errors.Invalid.for_fields("SelfSubjectAccessReview", AUTHORIZATION, "", causes)
    review["status"] = _access_status(ctx, attributes)
    return 201, review


def self_subject_rules_review(ctx: RequestContext) -> tuple[int, dict]:
    """The caller's rules in a namespace (``kubectl auth can-i --list``), from the authorizer's ``rules_for``."""
    review = _review(ctx, "SelfSubjectRulesReview", AUTHORIZATION)
    namespace = review["spec"].get("namespace") or ""
    if not isinstance(namespace, str) or not namespace:
        raise errors.BadRequest("no namespace on request")
    rules_for = getattr(ctx.services.authorizer, "rules_for", None)
    if rules_for is None:
        review["status"] = {"resourceRules": [], "nonResourceRules": [], "incomplete": True,
                            "evaluationError": "the installed authorizer cannot list rules"}
        return 201, review
    resource_rules, non_resource_rules = rules_for(ctx.user, ctx.cluster, namespace)
    review["status"] = {"resourceRules": list(resource_rules), "nonResourceRules": list(non_resource_rules),
                        "incomplete": False}
    return 201, review


# ---------------------------------------------------------------------- types


def _type(group: str, kind: str, handler, *, namespaced: bool = False) -> ResourceType:
    plural = kind.lower() + "s"
    return ResourceType(group, VERSION, kind, plural, kind.lower(), namespaced, verbs=("create",),
                        handlers={("create", ""): handler})


TYPES: tuple[ResourceType, ...] = (
    _type(AUTHENTICATION, "TokenReview", token_review),
    _type(AUTHENTICATION, "SelfSubjectReview", self_subject_review),
    _type(AUTHORIZATION, "LocalSubjectAccessReview", local_subject_access_review, namespaced=True),
    _type(AUTHORIZATION, "SelfSubjectAccessReview", self_subject_access_review),
    _type(AUTHORIZATION, "SelfSubjectRulesReview", self_subject_rules_review),
    _type(AUTHORIZATION, "SubjectAccessReview", subject_access_review),
)
