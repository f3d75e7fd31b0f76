"""Label and field selectors, parsed and matched like apimachinery's ``labels`` and ``fields`` packages.

Selectors are evaluated for every object of a list and every watch event, so parsing produces flat tuples
that ``matches`` walks without further allocation, and label-selector parsing is cached by text.
Errors are ``BadRequest`` with apimachinery's own wording (the apiserver wraps them into a 400 verbatim).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

from kcp_virtual.framework.errors import BadRequest
from server.registry.validation import go_quote, is_qualified_name, is_valid_label_value

__all__ = [
    "LabelSelector", "FieldSelector", "Requirement", "DEFAULT_FIELDS", "POD_FIELDS", "EVENT_FIELDS",
    "SECRET_FIELDS", "NAMESPACE_FIELDS", "field_getter", "fields_from_paths", "with_default_fields",
]

# ---------------------------------------------------------------------------------------------------
# Label selectors (k8s.io/apimachinery/pkg/labels/selector.go)

# Operators, as spelled by selection.Operator.
IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS = "in", "notin", "=", "==", "!="
EXISTS, DOES_NOT_EXIST, GREATER_THAN, LESS_THAN = "exists", "!", "gt", "lt"
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"

# Matching codes: "=", "==" and "in" behave alike, as do "!=" and "notin".
_M_IN, _M_NOT_IN, _M_EXISTS, _M_NOT_EXISTS, _M_GT, _M_LT = range(6)
_MATCH_CODE = {IN: _M_IN, EQUALS: _M_IN, DOUBLE_EQUALS: _M_IN, NOT_IN: _M_NOT_IN, NOT_EQUALS: _M_NOT_IN,
               EXISTS: _M_EXISTS, DOES_NOT_EXIST: _M_NOT_EXISTS, GREATER_THAN: _M_GT, LESS_THAN: _M_LT}

# The lexer: whitespace separates; '=!(),<>' are symbols ('!=' and '==' greedily); anything else is an identifier.
_TOKENS = re.compile(r"!=|==|[=!(),<>]|[^=!(),<> \t\r\n]+").findall
_IDENT, _EOS = "<ident>", "<eos>"
_SYMBOLS = frozenset(("!=", "==", "=", "!", "(", ")", ",", "<", ">"))
_INT64 = re.compile(r"[+-]?[0-9]+").fullmatch
_MISSING = object()


def _parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(s, 10, 64)``: Python's int() would also take spaces and underscores."""
    if not _INT64(text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


class _ParseError(Exception):
    pass


def _field_error(field: str, value: Any, detail: str) -> str:
    return f"{field}: Invalid value: {_render(value)}: {detail}"


def _render(value: Any) -> str:
    if isinstance(value, str):
        return go_quote(value)
    return "[" + ",".join(go_quote(v) for v in value) + "]"


class Requirement:
    """One ``key op values`` term. Built only through ``Requirement.new`` (which validates)."""

    __slots__ = ("key", "operator", "values", "_code", "_set", "_int")

    def __init__(self, key: str, operator: str, values: tuple[str, ...]):
        self.key = key
        self.operator = operator
        self.values = values  # sorted, de-duplicated
        self._code = _MATCH_CODE[operator]
        self._set = frozenset(values)
        self._int = _parse_int64(values[0]) if operator in (GREATER_THAN, LESS_THAN) else None

    @classmethod
    def new(cls, key: str, operator: str, values: Iterable[str] = ()) -> "Requirement":
        """``labels.NewRequirement``: raises ``_ParseError`` with the aggregated field errors."""
        vals = list(values)
        if not all(isinstance(v, str) for v in vals):
            raise _ParseError(_field_error("values", [str(v) for v in vals], "values must be strings"))
        vals = sorted(set(vals))
        errs = []
        key_errs = is_qualified_name(key) if isinstance(key, str) else ("must be a string",)
        if key_errs:
            errs.append(_field_error("key", key, "; ".join(key_errs)))
        if operator in (IN, NOT_IN):
            if not vals:
                errs.append(_field_error("values", vals, "for 'in', 'notin' operators, values set can't be empty"))
        elif operator in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS):
            if len(vals) != 1:
                errs.append(_field_error("values", vals, "exact-match compatibility requires one single value"))
        elif operator in (EXISTS, DOES_NOT_EXIST):
            if vals:
                errs.append(_field_error("values", vals, "values set must be empty for exists and does not exist"))
        elif operator in (GREATER_THAN, LESS_THAN):
            if len(vals) != 1:
                errs.append(_field_error("values", vals, "for 'Gt', 'Lt' operators, exactly one value is required"))
            for i, v in enumerate(vals):
                if _parse_int64(v) is None:
                    errs.append(_field_error(f"values[{i}]", v,
                                             "for 'Gt', 'Lt' operators, the value must be an integer"))
        else:
            supported = ", ".join(go_quote(o) for o in (IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS,
                                                        GREATER_THAN, LESS_THAN, EXISTS, DOES_NOT_EXIST))
            errs.append(f"operator: Unsupported value: {go_quote(str(operator))}: supported values: {supported}")
        for i, v in enumerate(vals):
            value_errs = is_valid_label_value(v)
            if value_errs:
                errs.append(_field_error(f"values[{i}][{key}]", v, "; ".join(value_errs)))
        if errs:
            raise _ParseError(errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]")
        return cls(key, operator, tuple(vals))

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key, _MISSING)
        code = self._code
        if code == _M_IN:
            return value is not _MISSING and value in self._set
        if code == _M_NOT_IN:
            return value is _MISSING or value not in self._set
        if code == _M_EXISTS:
            return value is not _MISSING
        if code == _M_NOT_EXISTS:
            return value is _MISSING
        if value is _MISSING or not isinstance(value, str):
            return False
        number = _parse_int64(value)
        if number is None:
            return False
        return number > self._int if code == _M_GT else number < self._int

    def __str__(self) -> str:
        op = self.operator
        if op == EXISTS:
            return self.key
        if op == DOES_NOT_EXIST:
            return "!" + self.key
        if op in (IN, NOT_IN):
            return f"{self.key} {op} ({','.join(self.values)})"
        return self.key + {GREATER_THAN: ">", LESS_THAN: "<"}.get(op, op) + self.values[0]

    def __repr__(self) -> str:
        return f"Requirement({self})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Requirement) and self.key == other.key and self.operator == other.operator
                and self.values == other.values)

    def __hash__(self) -> int:
        return hash((self.key, self.operator, self.values))


class _Parser:
    """A direct port of apimachinery's recursive-descent parser, so errors name the same tokens."""

    __slots__ = ("items", "pos")

    def __init__(self, text: str):
        items = []
        for lit in _TOKENS(text):
            if lit in _SYMBOLS or lit == "in" or lit == "notin":
                items.append((lit, lit))
            else:
                items.append((_IDENT, lit))
        items.append((_EOS, ""))
        self.items = items
        self.pos = 0

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self.items[self.pos]
        if values and (tok == IN or tok == NOT_IN):
            tok = _IDENT  # 'in'/'notin' are plain identifiers where a key or value is expected
        return tok, lit

    def consume(self, values: bool = True) -> tuple[str, str]:
        tok, lit = self.lookahead(values)
        self.pos += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.lookahead()
            if tok == _IDENT or tok == "!":
                try:
                    reqs.append(self.requirement())
                except _ParseError as exc:
                    raise _ParseError(f"unable to parse requirement: {exc}") from None
                tok, lit = self.consume()
                if tok == _EOS:
                    return reqs
                if tok == ",":
                    tok2, lit2 = self.lookahead()
                    if tok2 != _IDENT and tok2 != "!":
                        raise _ParseError(f"found '{lit2}', expected: identifier after ','")
                else:
                    raise _ParseError(f"found '{lit}', expected: ',' or 'end of string'")
            elif tok == _EOS:
                return reqs
            else:
                raise _ParseError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> Requirement:
        operator = ""
        tok, key = self.consume()
        if tok == "!":
            operator = DOES_NOT_EXIST
            tok, key = self.consume()
        if tok != _IDENT:
            raise _ParseError(f"found '{key}', expected: identifier")
        key_errs = is_qualified_name(key)
        if key_errs:
            # Upstream validates the key with a nil field path here, hence the "<nil>".
            raise _ParseError(_field_error("<nil>", key, "; ".join(key_errs)))
        nxt, _ = self.lookahead()
        if nxt == _EOS or nxt == ",":
            return Requirement.new(key, operator or EXISTS)
        if operator == DOES_NOT_EXIST:
            return Requirement.new(key, operator)
        tok, lit = self.consume(values=False)
        operator = {IN: IN, NOT_IN: NOT_IN, "=": EQUALS, "==": DOUBLE_EQUALS, "!=": NOT_EQUALS,
                    ">": GREATER_THAN, "<": LESS_THAN}.get(tok, "")
        if not operator:
            raise _ParseError(f"found '{lit}', expected: {_BINARY_OPERATORS}")
        values = self.values() if operator in (IN, NOT_IN) else self.exact_value()
        return Requirement.new(key, operator, values)

    def values(self) -> set[str]:
        tok, lit = self.consume()
        if tok != "(":
            raise _ParseError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead()
        if tok == _IDENT or tok == ",":
            found = self.identifiers()
            if self.consume()[0] != ")":
                raise _ParseError(f"found '{lit}', expected: ')'")
            return found
        if tok == ")":
            self.consume()
            return {""}
        raise _ParseError(f"found '{lit}', expected: ',', ')' or identifier")

    def identifiers(self) -> set[str]:
        found: set[str] = set()
        while True:
            tok, lit = self.consume()
            if tok == _IDENT:
                found.add(lit)
                tok2, lit2 = self.lookahead()
                if tok2 == ",":
                    continue
                if tok2 == ")":
                    return found
                raise _ParseError(f"found '{lit2}', expected: ',' or ')'")
            if tok == ",":  # empty values: "(,a", "a,,b", "a,)"
                if not found:
                    found.add("")
                tok2, _ = self.lookahead()
                if tok2 == ")":
                    found.add("")
                    return found
                if tok2 == ",":
                    self.consume()
                    found.add("")
                continue
            raise _ParseError(f"found '{lit}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        tok, _ = self.lookahead()
        if tok == _EOS or tok == ",":
            return {""}
        tok, lit = self.consume()
        if tok == _IDENT:
            return {lit}
        raise _ParseError(f"found '{lit}', expected: identifier")


class LabelSelector:
    """An AND of requirements. ``LabelSelector.parse("")`` selects everything; ``NOTHING`` selects nothing."""

    __slots__ = ("requirements", "_nothing")

    def __init__(self, requirements: Iterable[Requirement] = (), *, nothing: bool = False):
        # Sorted by key like upstream, so str() is canonical (stable sort keeps duplicates' order).
        self.requirements: tuple[Requirement, ...] = tuple(sorted(requirements, key=lambda r: r.key))
        self._nothing = nothing

    @staticmethod
    def parse(text: str | None) -> "LabelSelector":
        """Parse a ``labelSelector=`` query value; raises ``BadRequest`` on bad syntax, keys or values."""
        if not text:
            return EVERYTHING
        return _parse_label_selector(text)

    @classmethod
    def from_match_labels(cls, match_labels: Mapping[str, str] | None) -> "LabelSelector":
        """``labels.ValidatedSelectorFromSet``: every label must equal the given value."""
        if not match_labels:
            return EVERYTHING
        try:
            return cls(Requirement.new(k, EQUALS, (v,)) for k, v in match_labels.items())
        except _ParseError as exc:
            raise BadRequest(str(exc)) from None

    @classmethod
    def from_label_selector_object(cls, selector: Mapping[str, Any] | None) -> "LabelSelector":
        """``metav1.LabelSelectorAsSelector``: a missing selector matches nothing, an empty one everything."""
        if selector is None:
            return NOTHING
        match_labels = selector.get("matchLabels") or {}
        expressions = selector.get("matchExpressions") or []
        if not match_labels and not expressions:
            return EVERYTHING
        ops = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}
        reqs = []
        try:
            for k, v in match_labels.items():
                reqs.append(Requirement.new(k, EQUALS, (v,)))
            for expr in expressions:
                op = ops.get(expr.get("operator"))
                if op is None:
                    raise _ParseError(f"{go_quote(str(expr.get('operator') or ''))} is not a valid label selector "
                                      "operator")
                reqs.append(Requirement.new(expr.get("key") or "", op, expr.get("values") or ()))
        except _ParseError as exc:
            raise BadRequest(str(exc)) from None
        return cls(reqs)

    @property
    def empty(self) -> bool:
        """True when the selector does not restrict anything (so callers can skip matching)."""
        return not self.requirements and not self._nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self._nothing:
            return False
        if labels is None:
            labels = {}
        for req in self.requirements:
            if not req.matches(labels):
                return False
        return True

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements))

    def __repr__(self) -> str:
        return "LabelSelector(NOTHING)" if self._nothing else f"LabelSelector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LabelSelector) and self.requirements == other.requirements
                and self._nothing == other._nothing)

    def __hash__(self) -> int:
        return hash((self.requirements, self._nothing))


EVERYTHING = LabelSelector()
NOTHING = LabelSelector(nothing=True)
LabelSelector.EVERYTHING = EVERYTHING  # type: ignore[attr-defined]
LabelSelector.NOTHING = NOTHING  # type: ignore[attr-defined]


@lru_cache(maxsize=1024)
def _parse_label_selector(text: str) -> LabelSelector:
    # Selectors are immutable, and clients repeat the same few strings, so caching by text is safe and cheap.
    try:
        return LabelSelector(_Parser(text).parse())
    except _ParseError as exc:
        raise BadRequest(str(exc)) from None

# ---------------------------------------------------------------------------------------------------
# Field selectors (k8s.io/apimachinery/pkg/fields/selector.go)

FieldGetter = Callable[[dict], "str | None"]


def _stringify(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None  # objects and lists are never selectable


def field_getter(path: str) -> FieldGetter:
    """A getter for a dotted path (``spec.nodeName``); missing or non-scalar values come back as ``None``."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        key = parts[0]

        def get1(obj: dict) -> str | None:
            return _stringify(obj.get(key))
        return get1
    if len(parts) == 2:
        k1, k2 = parts

        def get2(obj: dict) -> str | None:
            inner = obj.get(k1)
            return _stringify(inner.get(k2)) if isinstance(inner, dict) else None
        return get2

    def get(obj: dict) -> str | None:
        cur: Any = obj
        for part in parts:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(part)
        return _stringify(cur)
    return get


def fields_from_paths(paths: Iterable[str]) -> dict[str, FieldGetter]:
    """``{path: getter}`` for fields stored at the JSON path they are selected by (most of them)."""
    return {p: field_getter(p) for p in paths}


DEFAULT_FIELDS: dict[str, FieldGetter] = fields_from_paths(("metadata.name", "metadata.namespace"))


def with_default_fields(extra: Mapping[str, FieldGetter] | Iterable[str]) -> dict[str, FieldGetter]:
    """``metadata.name``/``metadata.namespace`` plus ``extra`` (a getter map or dotted paths)."""
    fields = dict(DEFAULT_FIELDS)
    fields.update(extra if isinstance(extra, Mapping) else fields_from_paths(extra))
    return fields


def _pod_ip(pod: dict) -> str | None:
    status = pod.get("status") or {}
    ips = status.get("podIPs")
    if isinstance(ips, list) and ips and isinstance(ips[0], dict):
        return ips[0].get("ip")
    return status.get("podIP")


def _host_network(pod: dict) -> str:
    return "true" if (pod.get("spec") or {}).get("hostNetwork") is True else "false"


def _event_source(event: dict) -> str | None:
    source = event.get("source")
    component = source.get("component") if isinstance(source, dict) else None
    return component or event.get("reportingComponent")


SECRET_FIELDS = with_default_fields(("type",))
NAMESPACE_FIELDS = with_default_fields(("status.phase",))
POD_FIELDS = with_default_fields({
    **fields_from_paths(("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                         "status.phase", "status.nominatedNodeName")),
    "spec.hostNetwork": _host_network,
    "status.podIP": _pod_ip,
})
EVENT_FIELDS = with_default_fields({
    **fields_from_paths(("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                         "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                         "involvedObject.fieldPath", "reason", "reportingComponent", "type")),
    "source": _event_source,
})


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not backslash-escaped."""
    if "\\" not in text:
        return text.split(",")
    terms, start, escaped = [], 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """The first operator wins; at one position '!=' and '==' are tried before '='."""
    for i, ch in enumerate(term):
        if ch == "!" and term.startswith("!=", i):
            return term[:i], "!=", term[i + 2:]
        if ch == "=":
            if term.startswith("==", i):
                return term[:i], "==", term[i + 2:]
            return term[:i], "=", term[i + 1:]
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _unescape(value: str) -> str:
    if "\\" not in value and "," not in value and "=" not in value:
        return value
    out, escaped = [], False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise BadRequest(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            # Upstream formats the rune with %v, i.e. as its code point.
            raise BadRequest(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if escaped:
        raise BadRequest("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


class FieldSelector:
    """An AND of ``field=value`` / ``field!=value`` terms over the fields a resource declares selectable."""

    __slots__ = ("terms",)

    def __init__(self, terms: Iterable[tuple[str, FieldGetter, str, bool]] = ()):
        self.terms: tuple[tuple[str, FieldGetter, str, bool], ...] = tuple(terms)  # (field, getter, value, negated)

    @staticmethod
    def parse(text: str | None, allowed: Mapping[str, FieldGetter] = DEFAULT_FIELDS) -> "FieldSelector":
        """Parse a ``fieldSelector=`` value against ``allowed`` (field -> getter); raises ``BadRequest``.

        Like upstream, whitespace is significant and every term is parsed before any field is checked.
        """
        if not text:
            return FieldSelector()
        parsed = []
        for part in sorted(_split_terms(text)):
            if not part:
                continue
            split = _split_term(part)
            if split is None:
                raise BadRequest(f"invalid selector: '{text}'; can't understand '{part}'")
            lhs, op, rhs = split
            parsed.append((lhs, _unescape(rhs), op == "!="))
        terms = []
        for field, value, negated in parsed:
            getter = allowed.get(field)
            if getter is None:
                known = ", ".join(go_quote(f) for f in allowed)
                raise BadRequest(f"{go_quote(field)} is not a known field selector: only {known}")
            terms.append((field, getter, value, negated))
        return FieldSelector(terms)

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: dict) -> bool:
        for _field, getter, value, negated in self.terms:
            actual = getter(obj)
            if ((actual or "") == value) == negated:  # a missing field reads as "" (fields.Set.Get)
                return False
        return True

    def requires_exact_match(self, field: str) -> str | None:
        """The value ``field`` must equal (e.g. ``metadata.name`` for a single-object watch), if any."""
        for name, _getter, value, negated in self.terms:
            if name == field and not negated:
                return value
        return None

    def __str__(self) -> str:
        return ",".join(f"{f}{'!=' if neg else '='}{_escape(v)}" for f, _g, v, neg in self.terms)

    def __repr__(self) -> str:
        return f"FieldSelector({[(f, v, n) for f, _g, v, n in self.terms]!r})"
