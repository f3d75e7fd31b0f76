"""``kcp_virtual.framework.labelselector``: a selector rewritten for the hidden labels selects, on the stored labels,
exactly what the original selects on the labels the view shows -- checked against the shard's own selector parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcp_virtual.framework.errors import BadRequest
from kcp_virtual.framework.labelselector import NOTHING, deciding_hidden
from server.registry.selectors import LabelSelector

HIDDEN_PREFIX = "state.workload.kcp.dev/"
OWN = HIDDEN_PREFIX + "mine"
KEYS = (OWN, HIDDEN_PREFIX + "other", HIDDEN_PREFIX + "third", "app", "tier")
VALUES = ("Sync", "x", "", "3")


def hidden(key: str) -> bool:
    return key.startswith(HIDDEN_PREFIX) and key != OWN


def shown(labels: dict) -> dict:
    return {k: v for k, v in labels.items() if not hidden(k)}


@st.composite
def requirement(draw) -> str:
    key = draw(st.sampled_from(KEYS))
    value = draw(st.sampled_from(VALUES))
    values = ",".join(draw(st.lists(st.sampled_from(VALUES[:2]), min_size=1, max_size=2)))
    space = draw(st.sampled_from(("", " ")))
    return draw(st.sampled_from((
        f"{key}", f"!{key}", f"{space}!{space}{key}", f"{key}{space}={space}{value}", f"{key}=={value}",
        f"{key}{space}!={space}{value}", f"{key} in ({values})", f"{key} notin ({values})", f"{key}>2",
        f"{key} < 5")))


LABELS = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=5)


@settings(max_examples=400, deadline=None)
@given(st.lists(requirement(), min_size=1, max_size=4), LABELS)
def test_the_rewritten_selector_selects_the_stored_object_as_the_original_selects_its_view(terms, labels):
    selector = ",".join(terms)
    original = LabelSelector.parse(selector)
    rewritten = LabelSelector.parse(deciding_hidden(selector, hidden))
    assert rewritten.matches(labels) == original.matches(shown(labels)), (selector, labels)


@pytest.mark.parametrize("selector,expected", [
    (f"{HIDDEN_PREFIX}other=Sync", NOTHING),
    (f"app=a,{HIDDEN_PREFIX}other", f"app=a,{NOTHING}"),
    (f"!{HIDDEN_PREFIX}other,app", "app"),
    (f"{HIDDEN_PREFIX}other notin (Sync),{OWN}=Sync", f"{OWN}=Sync"),
    (f"{OWN}=Sync", f"{OWN}=Sync"),
])
def test_rewrites(selector, expected):
    assert deciding_hidden(selector, hidden) == expected


@pytest.mark.parametrize("selector", ["a in (", f"{HIDDEN_PREFIX}other=a=b", f"{HIDDEN_PREFIX}other in (a", "=x",
                                      f"{HIDDEN_PREFIX}other,a in ("])
def test_a_malformed_selector_stays_malformed_for_the_shard_to_refuse(selector):
    with pytest.raises(BadRequest):
        LabelSelector.parse(deciding_hidden(selector, hidden))
