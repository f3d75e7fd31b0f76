import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from kcp_virtual.framework.errors import BadRequest
from kcp_virtual.framework.table import (AGE_COLUMN, CREATED_AT_COLUMN, DEFAULT_COLUMNS, NAME_COLUMN, Column,
                                         crd_columns, human_duration, jsonpath_column, partial_object_metadata,
                                         to_table)

OBJ = {"apiVersion": "example.com/v1", "kind": "Widget",
       "metadata": {"name": "w1", "namespace": "default", "labels": {"app": "a"}, "uid": "u1",
                    "resourceVersion": "105", "creationTimestamp": "2024-05-01T10:00:00Z",
                    "managedFields": [{"manager": "kubectl"}]},
       "spec": {"size": 3, "ratio": 2.5, "on": True, "tags": ["x", "y"],
                "conds": [{"type": "A"}, {"type": "B", "status": "True"}], "m": {"a.b": "dotted"}}}


def ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_generic_table_shape():
    table = to_table([OBJ], DEFAULT_COLUMNS, list_meta={"resourceVersion": "105", "continue": None})
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "105"}
    assert [(c["name"], c["type"], c["format"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", "string", "name", 0), ("Created At", "date", "", 0)]
    assert table["columnDefinitions"][0]["description"].startswith("Name must be unique within a namespace.")
    row = table["rows"][0]
    assert row["cells"] == ["w1", "2024-05-01T10:00:00Z"]
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": {k: v for k, v in OBJ["metadata"].items() if k != "managedFields"}}
    assert "managedFields" in OBJ["metadata"]  # input untouched
    orjson.dumps(table)


def test_include_object_and_headers_and_version():
    assert to_table([OBJ], DEFAULT_COLUMNS, include_object="None")["rows"][0]["object"] is None
    assert to_table([OBJ], DEFAULT_COLUMNS, include_object="Object")["rows"][0]["object"] is OBJ
    with pytest.raises(BadRequest) as info:
        to_table([OBJ], DEFAULT_COLUMNS, include_object="All")
    assert info.value.message == 'unrecognized includeObject value: "All"'
    watch_event = to_table([OBJ], DEFAULT_COLUMNS, list_meta={"resourceVersion": "105"}, no_headers=True)
    assert watch_event["columnDefinitions"] == [] and len(watch_event["rows"]) == 1
    beta = to_table([OBJ], DEFAULT_COLUMNS, version="v1beta1")
    assert beta["apiVersion"] == beta["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    assert to_table([], DEFAULT_COLUMNS)["rows"] == []


def test_missing_creation_timestamp_is_go_zero_time():
    assert CREATED_AT_COLUMN.getter({"metadata": {"name": "x"}}) == "0001-01-01T00:00:00Z"
    assert NAME_COLUMN.getter({}) == ""


def test_partial_object_metadata_without_managed_fields_shares_metadata():
    obj = {"metadata": {"name": "x"}}
    assert partial_object_metadata(obj)["metadata"] is obj["metadata"]


@pytest.mark.parametrize("type_, path, expected", [
    ("integer", ".spec.size", 3),
    ("integer", ".spec.ratio", 2),  # float truncated like int64(f)
    ("integer", ".spec.on", None),  # a bool is not an integer
    ("number", ".spec.size", 3.0),
    ("boolean", ".spec.on", True),
    ("boolean", ".spec.size", None),
    ("string", ".spec.size", "3"),
    ("string", ".spec.ratio", "2.5"),
    ("string", ".spec.on", "true"),
    ("string", ".spec.tags", '["x","y"]'),
    ("string", ".spec.tags[1]", "y"),
    ("string", ".spec.tags[-1]", "y"),
    ("string", ".spec.tags[5]", None),
    ("string", ".spec.conds[*].status", "True"),  # first element that has the key
    ("string", ".spec.m['a.b']", "dotted"),
    ("string", ".spec.m.a\\.b", "dotted"),
    ("string", "{.metadata.labels.app}", "a"),
    ("string", "spec.size", "3"),
    ("string", ".status.missing", None),
    ("date", ".spec.size", None),
    ("date", ".metadata.uid", "<invalid>"),
    ("foo", ".spec.size", None),  # unknown column types give null cells upstream too
])
def test_jsonpath_cells(type_, path, expected):
    assert jsonpath_column("C", type_, path).getter(OBJ) == expected


def test_bad_jsonpath():
    for path in (".spec..x", ".spec[abc]", ".spec[0", ".."):
        with pytest.raises(ValueError):
            jsonpath_column("C", "string", path)


def test_date_column_is_a_human_age():
    obj = {"metadata": {"name": "w", "creationTimestamp": ago(minutes=5, seconds=3)}}
    assert AGE_COLUMN.getter(obj) == "5m3s"
    assert AGE_COLUMN.getter({"metadata": {"creationTimestamp": ago(days=3, hours=4)}}) == "3d4h"
    assert AGE_COLUMN.getter({"metadata": {}}) is None


@pytest.mark.parametrize("seconds, expected", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (1, "1s"), (70, "70s"), (119, "119s"), (120, "2m"),
    (190, "3m10s"), (70 * 60, "70m"), (179 * 60, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
    (47 * 3600, "47h"), (49 * 3600, "2d1h"), ((8 * 24 + 2) * 3600, "8d"), (367 * 24 * 3600, "367d"),
    ((365 * 2 * 24 + 25) * 3600, "2y1d"), ((365 * 8 * 24 + 2) * 3600, "8y"),
])
def test_human_duration_matches_go(seconds, expected):
    assert human_duration(seconds) == expected


def test_crd_columns():
    names = [c.name for c in crd_columns(None)]
    assert names == ["Name", "Age"]
    cols = crd_columns([{"name": "Size", "type": "integer", "jsonPath": ".spec.size", "priority": 1},
                        {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "r"}])
    assert [c.name for c in cols] == ["Name", "Size", "Ready"]  # no Age unless the CRD lists it
    defs = to_table([OBJ], cols)["columnDefinitions"]
    assert defs[1] == {"name": "Size", "type": "integer", "format": "",
                       "description": "Custom resource definition column (in JSONPath format): .spec.size",
                       "priority": 1}
    assert defs[2]["description"] == "r"
    assert to_table([OBJ], cols)["rows"][0]["cells"] == ["w1", 3, None]


def test_custom_column():
    col = Column("Phase", getter=lambda o: (o.get("status") or {}).get("phase"))
    assert col.definition == {"name": "Phase", "type": "string", "format": "", "description": "", "priority": 0}
    assert to_table([{"metadata": {"name": "n"}, "status": {"phase": "Active"}}], [NAME_COLUMN, col])["rows"][0][
        "cells"] == ["n", "Active"]


def test_large_table_is_fast():
    objs = [dict(OBJ, metadata=dict(OBJ["metadata"], name=f"w{i}")) for i in range(5000)]
    cols = crd_columns([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}, AGE_COLUMN.definition
                        | {"jsonPath": ".metadata.creationTimestamp"}])
    start = time.perf_counter()
    table = to_table(objs, cols)
    assert time.perf_counter() - start < 0.5
    assert len(table["rows"]) == 5000
