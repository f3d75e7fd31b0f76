import pytest
from hypothesis import given, settings, strategies as st

from kcp_virtual.framework.errors import BadRequest
from server.registry.selectors import (DEFAULT_FIELDS, EVENT_FIELDS, NAMESPACE_FIELDS, POD_FIELDS,
                                               SECRET_FIELDS, FieldSelector, LabelSelector, field_getter,
                                               fields_from_paths, with_default_fields)

KEY_ERROR = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
             "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
             "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")


def parse_error(text: str) -> str:
    with pytest.raises(BadRequest) as info:
        LabelSelector.parse(text)
    assert info.value.code == 400
    return info.value.message


# --- label selector parsing -------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("a=b", "a=b"),
    ("a==b", "a==b"),
    ("a!=b", "a!=b"),
    ("  a = b ,  c  ", "a=b,c"),
    ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),
    ("!k", "!k"),
    ("b,a", "a,b"),  # sorted by key, like upstream
    ("a=", "a="),
    ("k in (,a)", "k in (,a)"),
    ("k in (a,)", "k in (,a)"),
    ("k in (,)", "k in ()"),
    ("k in (a,,b)", "k in (,a,b)"),
    ("in in (in,notin)", "in in (in,notin)"),  # keywords are identifiers where a key/value is expected
    ("a>5,b<3", "a>5,b<3"),
    ("example.com/app in (x)", "example.com/app in (x)"),
    ("", ""),
])
def test_parse_canonical(text, canonical):
    assert str(LabelSelector.parse(text)) == canonical


def test_empty():
    assert LabelSelector.parse("").empty
    assert LabelSelector.parse(None).empty
    assert not LabelSelector.parse("a").empty
    assert not LabelSelector.NOTHING.empty


@pytest.mark.parametrize("text, message", [
    ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
    ("a=b c", "found 'c', expected: ',' or 'end of string'"),
    ("a,", "found '', expected: identifier after ','"),
    ("=a", "found '=', expected: !, identifier, or 'end of string'"),
    ("k in (x", "unable to parse requirement: found '', expected: ',' or ')'"),
    ("k in x", "unable to parse requirement: found 'x' expected: '('"),
    ("k in (a,,)", "unable to parse requirement: found ')', expected: ',', or identifier"),
    ("k in (,,)", "unable to parse requirement: found ')', expected: ',', or identifier"),
    ("!a=b", "found '=', expected: ',' or 'end of string'"),
    ("!!a", "unable to parse requirement: found '!', expected: identifier"),
    ("a<x", "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value "
            "must be an integer"),
    ("app:monolith", f'unable to parse requirement: <nil>: Invalid value: "app:monolith": {KEY_ERROR}'),
    ("*bar", f'unable to parse requirement: <nil>: Invalid value: "*bar": {KEY_ERROR}'),
])
def test_parse_errors(text, message):
    assert parse_error(text) == message


def test_error_for_bad_qualified_name_matches_upstream_test():
    # From apimachinery's own test for "a/b/c ?=? def".
    assert parse_error("a/b/c ?=? def").startswith(
        "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a qualified name must consist of "
        "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character "
        "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
        "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and")


def test_invalid_value_names_the_key():
    msg = parse_error("a=b%c")
    assert msg.startswith('unable to parse requirement: values[0][a]: Invalid value: "b%c": a valid label must be '
                          "an empty string or consist of alphanumeric characters")


def test_gt_value_must_be_a_valid_label_value():
    assert parse_error("a<-3").startswith('unable to parse requirement: values[0][a]: Invalid value: "-3": ')


def test_value_too_long():
    assert "must be no more than 63 characters" in parse_error("a=" + "x" * 64)


# --- label selector matching ------------------------------------------------------------------------

@pytest.mark.parametrize("text, labels, expected", [
    ("a=b", {"a": "b"}, True),
    ("a=b", {"a": "c"}, False),
    ("a=b", {}, False),
    ("a==b", {"a": "b", "x": "y"}, True),
    ("a!=b", {}, True),  # a missing key satisfies != and notin
    ("a!=b", {"a": "b"}, False),
    ("a!=b", {"a": "c"}, True),
    ("a in (x,y)", {"a": "y"}, True),
    ("a in (x,y)", {}, False),
    ("a notin (x,y)", {"a": "z"}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("a notin (x,y)", {}, True),
    ("a", {"a": ""}, True),
    ("a", {}, False),
    ("!a", {}, True),
    ("!a", {"a": "1"}, False),
    ("a=", {"a": ""}, True),
    ("a=", {}, False),
    ("a>5", {"a": "6"}, True),
    ("a>5", {"a": "5"}, False),
    ("a>5", {"a": "x"}, False),
    ("a>5", {}, False),
    ("a<5", {"a": "-7"}, True),  # label values can't be negative, but stored ones are compared as int64
    ("a>5", {"a": " 6"}, False),  # strconv.ParseInt has no whitespace tolerance
    ("a=b,c!=d", {"a": "b", "c": "e"}, True),
    ("a=b,c!=d", {"a": "b", "c": "d"}, False),
    ("", {"anything": "x"}, True),
])
def test_matches(text, labels, expected):
    assert LabelSelector.parse(text).matches(labels) is expected


def test_matches_none_labels():
    assert LabelSelector.parse("!a").matches(None)
    assert not LabelSelector.parse("a").matches(None)
    assert not LabelSelector.NOTHING.matches({})


def test_from_match_labels():
    sel = LabelSelector.from_match_labels({"app": "web", "tier": "fe"})
    assert str(sel) == "app=web,tier=fe"
    assert sel.matches({"app": "web", "tier": "fe", "x": "y"})
    assert not sel.matches({"app": "web"})
    assert LabelSelector.from_match_labels({}).empty
    with pytest.raises(BadRequest):
        LabelSelector.from_match_labels({"bad key!": "x"})
    with pytest.raises(BadRequest):
        LabelSelector.from_match_labels({"a": 1})


def test_from_label_selector_object():
    obj = {"matchLabels": {"app": "web"},
           "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]},
                                {"key": "canary", "operator": "DoesNotExist"}]}
    sel = LabelSelector.from_label_selector_object(obj)
    assert str(sel) == "app=web,!canary,env in (prod,stage)"
    assert sel.matches({"app": "web", "env": "prod"})
    assert not sel.matches({"app": "web", "env": "prod", "canary": "1"})
    assert not sel.matches({"app": "web", "env": "dev"})
    assert LabelSelector.from_label_selector_object({}).empty  # empty selects everything
    assert not LabelSelector.from_label_selector_object(None).matches({})  # nil selects nothing
    with pytest.raises(BadRequest) as info:
        LabelSelector.from_label_selector_object({"matchExpressions": [{"key": "a", "operator": "Gt"}]})
    assert info.value.message == '"Gt" is not a valid label selector operator'
    with pytest.raises(BadRequest) as info:
        LabelSelector.from_label_selector_object({"matchExpressions": [{"key": "a", "operator": "In"}]})
    assert info.value.message == "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"


def test_parse_is_cached_and_immutable():
    assert LabelSelector.parse("a=b,c") is LabelSelector.parse("a=b,c")
    assert LabelSelector.parse("a=b") == LabelSelector.parse("a = b")


# --- property test: parse(render(reqs)) behaves like a naive reference -----------------------------

_keys = st.sampled_from(["a", "b", "app", "example.com/tier", "in", "x-y_z.1"])
_values = st.sampled_from(["", "v", "w", "prod", "1", "12", "03", "in", "notin", "a.b_c-d"])


@st.composite
def requirements(draw):
    key = draw(_keys)
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]))
    if op in ("in", "notin"):
        vals = draw(st.lists(_values.filter(bool), min_size=1, max_size=3))  # "(,,)" is a syntax error
        return key, op, vals, f"{key} {op} ({', '.join(vals)})"
    if op in ("exists", "!"):
        return key, op, [], key if op == "exists" else f"!{key}"
    if op in ("gt", "lt"):
        val = draw(st.sampled_from(["0", "5", "2", "12"]))
        return key, op, [val], f"{key}{'>' if op == 'gt' else '<'}{val}"
    val = draw(_values)
    return key, op, [val], f"{key} {op} {val}"


def reference_match(reqs, labels):
    for key, op, vals, _ in reqs:
        has = key in labels
        v = labels.get(key)
        if op in ("=", "==", "in") and not (has and v in vals):
            return False
        if op in ("!=", "notin") and has and v in vals:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op in ("gt", "lt"):
            try:
                n = int(v) if has else None
            except ValueError:
                n = None
            if n is None or not (n > int(vals[0]) if op == "gt" else n < int(vals[0])):
                return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.lists(requirements(), max_size=4), st.dictionaries(_keys, _values, max_size=4))
def test_matches_reference(reqs, labels):
    text = ",".join(r[3] for r in reqs)
    sel = LabelSelector.parse(text)
    assert sel.matches(labels) == reference_match(reqs, labels)
    # The canonical form parses back to an equivalent selector.
    again = LabelSelector.parse(str(sel))
    assert str(again) == str(sel)
    assert again.matches(labels) == sel.matches(labels)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab=!(),<> in", max_size=12))
def test_parse_never_crashes(text):
    try:
        LabelSelector.parse(text)
    except BadRequest:
        pass


# --- field selectors --------------------------------------------------------------------------------

POD = {"metadata": {"name": "p1", "namespace": "default"},
       "spec": {"nodeName": "n1", "restartPolicy": "Always"},
       "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}}


@pytest.mark.parametrize("text, expected", [
    ("metadata.name=p1", True),
    ("metadata.name==p1", True),
    ("metadata.name!=p1", False),
    ("metadata.name=p2", False),
    ("metadata.name=p1,metadata.namespace=default", True),
    ("metadata.name=p1,metadata.namespace!=default", False),
    ("", True),
    (",metadata.name=p1,", True),
])
def test_field_selector_default_fields(text, expected):
    assert FieldSelector.parse(text).matches(POD) is expected


def test_unknown_field_message():
    with pytest.raises(BadRequest) as info:
        FieldSelector.parse("spec.foo=bar")
    assert info.value.code == 400
    assert info.value.message == '"spec.foo" is not a known field selector: only "metadata.name", "metadata.namespace"'
    with pytest.raises(BadRequest) as info:
        FieldSelector.parse("x=1", SECRET_FIELDS)
    assert info.value.message == '"x" is not a known field selector: only "metadata.name", "metadata.namespace", "type"'


def test_whitespace_is_significant_like_upstream():
    with pytest.raises(BadRequest) as info:
        FieldSelector.parse("metadata.name = p1")
    assert info.value.message.startswith('"metadata.name " is not a known field selector')


@pytest.mark.parametrize("text, message", [
    ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
    ("metadata.name=a=b", "invalid field selector: unescaped character in value: 61"),
    ("metadata.name=a\\x", "invalid field selector: invalid escape sequence: \\x"),
    ("metadata.name=a\\", "invalid field selector: invalid escape sequence: \\"),
])
def test_field_selector_syntax_errors(text, message):
    with pytest.raises(BadRequest) as info:
        FieldSelector.parse(text)
    assert info.value.message == message


def test_syntax_errors_win_over_unknown_fields():
    with pytest.raises(BadRequest) as info:
        FieldSelector.parse("aaa=1,zzz")
    assert "can't understand 'zzz'" in info.value.message


def test_escaped_values():
    sel = FieldSelector.parse(r"metadata.name=a\,b\=c\\d")
    assert sel.matches({"metadata": {"name": "a,b=c\\d"}})
    assert str(sel) == r"metadata.name=a\,b\=c\\d"


def test_missing_field_is_empty_string():
    assert FieldSelector.parse("metadata.namespace=").matches({"metadata": {"name": "cluster-scoped"}})
    assert FieldSelector.parse("metadata.namespace!=x").matches({"metadata": {}})
    assert FieldSelector.parse("status.phase=", NAMESPACE_FIELDS).matches({"metadata": {"name": "ns"}})


def test_resource_specific_fields():
    assert FieldSelector.parse("spec.nodeName=n1,status.phase=Running", POD_FIELDS).matches(POD)
    assert FieldSelector.parse("status.podIP=10.0.0.1,spec.hostNetwork=false", POD_FIELDS).matches(POD)
    assert FieldSelector.parse("type=Opaque", SECRET_FIELDS).matches({"type": "Opaque"})
    event = {"metadata": {"name": "e", "namespace": "default"},
             "involvedObject": {"kind": "Widget", "name": "w1", "namespace": "default", "uid": "u-1"},
             "reportingComponent": "ctrl", "type": "Normal"}
    describe = ("involvedObject.kind=Widget,involvedObject.uid=u-1,involvedObject.name=w1,"
                "involvedObject.namespace=default")
    assert FieldSelector.parse(describe, EVENT_FIELDS).matches(event)
    assert FieldSelector.parse("source=ctrl", EVENT_FIELDS).matches(event)  # falls back to reportingComponent
    assert not FieldSelector.parse("involvedObject.kind=Pod", EVENT_FIELDS).matches(event)


def test_getters():
    get = field_getter("spec.replicas")
    assert get({"spec": {"replicas": 3}}) == "3"
    assert get({"spec": {"replicas": True}}) == "true"
    assert get({"spec": "oops"}) is None
    assert field_getter("a.b.c")({"a": {"b": {"c": "d"}}}) == "d"
    assert field_getter("a.b.c")({"a": {"b": {"c": {"x": 1}}}}) is None
    assert set(fields_from_paths(["type"])) == {"type"}
    assert list(with_default_fields(["x"])) == ["metadata.name", "metadata.namespace", "x"]
    assert set(DEFAULT_FIELDS) == {"metadata.name", "metadata.namespace"}


def test_requires_exact_match():
    sel = FieldSelector.parse("metadata.name=w1,metadata.namespace!=x")
    assert sel.requires_exact_match("metadata.name") == "w1"
    assert sel.requires_exact_match("metadata.namespace") is None
    assert FieldSelector.parse("").empty
