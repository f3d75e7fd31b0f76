import pytest

from kcp_virtual.framework.errors import Invalid
from server.registry.validation import (GENERATED_SUFFIX_ALPHABET, generate_name, go_float, go_quote,
                                                is_dns1123_label, is_dns1123_subdomain, is_qualified_name,
                                                is_valid_label_value, is_valid_path_segment_name, validate_object_meta,
                                                validate_object_meta_update)

SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_ERR = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
             "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
NAME_PART_ERR = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                 "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
                 "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")


def meta(**kw):
    return {"metadata": kw}


# --- format validators ------------------------------------------------------------------------------

def test_dns1123_subdomain():
    assert is_dns1123_subdomain("example.com") == ()
    assert is_dns1123_subdomain("a" * 253) == ()
    assert is_dns1123_subdomain("Bad_Name") == (SUBDOMAIN_ERR,)
    assert is_dns1123_subdomain("a" * 254) == ("must be no more than 253 characters",)
    for bad in ("", "-a", "a-", "a..b", ".a", "a.", "a\n"):
        assert is_dns1123_subdomain(bad), bad


def test_dns1123_label():
    assert is_dns1123_label("my-name") == ()
    assert is_dns1123_label("a.b") == ("must not contain dots",)
    assert is_dns1123_label("Ab") == (LABEL_ERR,)
    assert is_dns1123_label("a" * 64) == ("must be no more than 63 characters",)


def test_qualified_name():
    assert is_qualified_name("app") == ()
    assert is_qualified_name("example.com/My_Name.1") == ()
    assert is_qualified_name("app:x") == (NAME_PART_ERR,)
    assert is_qualified_name("/x") == ("prefix part must be non-empty",)
    assert is_qualified_name("x/") == ("name part must be non-empty", NAME_PART_ERR)
    assert is_qualified_name("Example.com/x") == ("prefix part " + SUBDOMAIN_ERR,)
    assert is_qualified_name("a" * 64) == ("name part must be no more than 63 characters",)
    assert is_qualified_name("a/b/c")[0].startswith("a qualified name must consist of")


def test_label_value():
    assert is_valid_label_value("") == ()
    assert is_valid_label_value("My_value-1.2") == ()
    assert is_valid_label_value("-x")[0].startswith("a valid label must be an empty string or consist of")
    assert is_valid_label_value("x" * 64) == ("must be no more than 63 characters",)


def test_path_segment_name():
    assert is_valid_path_segment_name("system:controller") == ()
    assert is_valid_path_segment_name("..") == ("may not be '..'",)
    assert is_valid_path_segment_name("a/b%c") == ("may not contain '/'", "may not contain '%'")


def test_go_formatting():
    assert go_quote("a") == '"a"'
    assert go_quote('a"b') == '"a\\"b"'
    assert go_float(1e6) == "1e+06" and go_float(2.5) == "2.5" and go_float(3.0) == "3"


# --- ObjectMeta -------------------------------------------------------------------------------------

def test_bad_name_reads_like_kube():
    causes = validate_object_meta(meta(name="Bad_Name", namespace="default"), namespaced=True)
    assert causes == [{"type": "FieldValueInvalid", "field": "metadata.name",
                       "message": f'Invalid value: "Bad_Name": {SUBDOMAIN_ERR}'}]
    err = Invalid.for_fields("ConfigMap", "", "Bad_Name", causes)
    assert err.code == 422
    assert err.message == f'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": {SUBDOMAIN_ERR}'


def test_valid_objects():
    obj = meta(name="web-1", namespace="default", labels={"app": "web", "example.com/tier": ""},
               annotations={"Example.com/Note": "x" * 1000}, finalizers=["kubernetes", "example.com/cleanup"],
               ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u",
                                 "controller": True}])
    assert validate_object_meta(obj, namespaced=True) == []
    assert validate_object_meta(meta(name="system:admin"), namespaced=False, name_rule="path") == []
    assert validate_object_meta(meta(name="kube-system"), namespaced=False, name_rule="label") == []


def test_name_required_unless_generate_name():
    assert validate_object_meta(meta(namespace="d"), namespaced=True) == [
        {"type": "FieldValueRequired", "field": "metadata.name",
         "message": "Required value: name or generateName is required"}]
    assert validate_object_meta(meta(generateName="web-", namespace="d"), namespaced=True) == []
    assert validate_object_meta({}, namespaced=False)[0]["field"] == "metadata.name"


def test_generate_name_prefix_rules():
    causes = validate_object_meta(meta(generateName="Web-", namespace="d"), namespaced=True)
    assert [c["field"] for c in causes] == ["metadata.generateName"]
    assert causes[0]["message"] == f'Invalid value: "Web-": {SUBDOMAIN_ERR}'
    assert validate_object_meta(meta(generateName="ns-"), namespaced=False, name_rule="label") == []


def test_name_rules():
    assert validate_object_meta(meta(name="a.b"), namespaced=False, name_rule="label")[0]["message"] == \
        'Invalid value: "a.b": must not contain dots'
    assert validate_object_meta(meta(name=".."), namespaced=False, name_rule="path")[0]["message"] == \
        "Invalid value: \"..\": may not be '..'"
    assert validate_object_meta(meta(name="a/b"), namespaced=False, name_rule="path")[0]["message"] == \
        "Invalid value: \"a/b\": may not contain '/'"


def test_namespace_rules():
    assert validate_object_meta(meta(name="a"), namespaced=True) == [
        {"type": "FieldValueRequired", "field": "metadata.namespace", "message": "Required value"}]
    assert validate_object_meta(meta(name="a", namespace="Bad"), namespaced=True)[0]["message"] == \
        f'Invalid value: "Bad": {LABEL_ERR}'
    assert validate_object_meta(meta(name="a", namespace="x"), namespaced=False) == [
        {"type": "FieldValueForbidden", "field": "metadata.namespace",
         "message": "Forbidden: not allowed on this type"}]


def test_labels():
    causes = validate_object_meta(meta(name="a", labels={"app:x": "ok", "k": "bad value"}), namespaced=False)
    assert [(c["type"], c["field"]) for c in causes] == [("FieldValueInvalid", "metadata.labels")] * 2
    assert causes[0]["message"] == f'Invalid value: "app:x": {NAME_PART_ERR}'
    assert causes[1]["message"].startswith('Invalid value: "bad value": a valid label must be an empty string')
    causes = validate_object_meta(meta(name="a", labels={"k": 5}), namespaced=False)
    assert causes[0]["type"] == "FieldValueTypeInvalid"
    assert validate_object_meta(meta(name="a", labels="x"), namespaced=False)[0]["field"] == "metadata.labels"


def test_duplicate_causes_are_dropped():
    causes = validate_object_meta(meta(name="a", labels={"a": "bad value", "b": "bad value"}), namespaced=False)
    assert len(causes) == 1


def test_annotations():
    assert validate_object_meta(meta(name="a", annotations={"A_b": "x"}), namespaced=False) == []
    causes = validate_object_meta(meta(name="a", annotations={"a b": "x"}), namespaced=False)
    assert causes[0]["field"] == "metadata.annotations"
    big = {"a": "x" * (256 * 1024)}
    assert validate_object_meta(meta(name="a", annotations=big), namespaced=False) == [
        {"type": "FieldValueTooLong", "field": "metadata.annotations",
         "message": "Too long: may not be more than 262144 bytes"}]
    assert validate_object_meta(meta(name="a", annotations={"a": "x" * (256 * 1024 - 1)}), namespaced=False) == []


def test_finalizers_and_owner_references():
    causes = validate_object_meta(meta(name="a", finalizers=["bad finalizer"]), namespaced=False)
    assert causes[0]["field"] == "metadata.finalizers"
    causes = validate_object_meta(meta(name="a", finalizers=["orphan", "foregroundDeletion"]), namespaced=False)
    assert causes[0]["message"] == ('Invalid value: ["orphan","foregroundDeletion"]: finalizer orphan and '
                                    "foregroundDeletion cannot be both set")
    causes = validate_object_meta(meta(name="a", ownerReferences=[{"kind": "X"}]), namespaced=False)
    assert [c["field"] for c in causes] == ["metadata.ownerReferences.apiVersion", "metadata.ownerReferences.name",
                                            "metadata.ownerReferences.uid"]
    assert causes[0]["message"] == 'Invalid value: "": version must not be empty'


def test_negative_generation():
    assert validate_object_meta(meta(name="a", generation=-1), namespaced=False) == [
        {"type": "FieldValueInvalid", "field": "metadata.generation",
         "message": "Invalid value: -1: must be greater than or equal to 0"}]


def test_several_causes_aggregate_like_kube():
    causes = validate_object_meta(meta(name="Bad_Name"), namespaced=True)
    err = Invalid.for_fields("widgets", "example.com", "Bad_Name", causes)
    assert err.message.startswith('widgets.example.com "Bad_Name" is invalid: [metadata.name: Invalid value: ')
    assert err.message.endswith(", metadata.namespace: Required value]")


def test_update_rules():
    old = meta(name="a", namespace="d", uid="u1", deletionTimestamp="2024-01-01T00:00:00Z", finalizers=["x"])
    assert validate_object_meta_update(meta(name="a", namespace="d", uid="u1", finalizers=[]), old) == []
    causes = validate_object_meta_update(meta(name="a", namespace="d", uid="u1", finalizers=["x", "z", "y"]), old)
    assert causes == [{"type": "FieldValueForbidden", "field": "metadata.finalizers",
                       "message": 'Forbidden: no new finalizers can be added if the object is being deleted, '
                                  'found new finalizers []string{"y", "z"}'}]
    causes = validate_object_meta_update(meta(name="b", namespace="d", uid="u2"), meta(name="a", namespace="d",
                                                                                        uid="u1"))
    assert [c["message"] for c in causes] == ['Invalid value: "b": field is immutable',
                                              'Invalid value: "u2": field is immutable']


# --- generateName -----------------------------------------------------------------------------------

def test_generate_name():
    name = generate_name("web-")
    assert name.startswith("web-") and len(name) == 9
    assert all(c in GENERATED_SUFFIX_ALPHABET for c in name[4:])
    long = generate_name("x" * 100)
    assert len(long) == 63 and long.startswith("x" * 58)
    assert len({generate_name("a-") for _ in range(50)}) > 40
    assert is_dns1123_subdomain(generate_name("kopf-event-")) == ()


@pytest.mark.parametrize("value", ["a", "ab-", "a" * 58])
def test_generated_names_are_valid_when_prefix_is(value):
    assert validate_object_meta(meta(generateName=value), namespaced=False) == []
    assert validate_object_meta(meta(name=generate_name(value)), namespaced=False) == []
