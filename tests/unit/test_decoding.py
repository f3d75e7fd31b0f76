"""Request bodies: bounded YAML aliasing and nesting, duplicate keys, JSON-only values, big bodies off the hub."""

from __future__ import annotations

import threading

import gevent
import pytest

from kcp_virtual.framework import decoding
from kcp_virtual.framework.errors import BadRequest


def alias_bomb(levels: int = 8, fanout: int = 9) -> bytes:
    """The issue's 344-byte body: each anchor a list of ``fanout`` aliases of the previous one (9**8 leaves)."""
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: bomb", "x:",
             "  a: &a [" + ",".join(['"lol"'] * fanout) + "]"]
    previous = "a"
    for name in "bcdefghijklmnop"[:levels - 1]:
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{previous}"] * fanout) + "]")
        previous = name
    return "\n".join(lines).encode()


def message(exc_info) -> str:
    return exc_info.value.status()["message"]


def test_alias_bomb_is_refused_without_expanding():
    body = alias_bomb()
    assert len(body) < 400
    with pytest.raises(BadRequest) as exc:
        decoding.decode_yaml(body)
    assert message(exc) == "error converting YAML to JSON: yaml: document contains excessive aliasing"


def test_expansion_past_the_node_cap_is_refused_even_at_a_low_alias_ratio():
    # few aliases, each expanding a long plain list: go-yaml's ratio rule alone would allow it
    body = b"a: &a [" + b",".join([b"1"] * 2000) + b"]\nb: &b [" + b",".join([b"*a"] * 100) + b"]\n" \
        + b"c: [" + b",".join([b"*b"] * 10) + b"]\n"
    with pytest.raises(BadRequest) as exc:
        decoding.decode_yaml(body)
    assert "excessive aliasing" in message(exc)


def test_moderate_aliasing_still_decodes():
    decoded = decoding.decode_yaml(b"base: &b {x: 1, y: [1, 2]}\none: *b\ntwo:\n  <<: *b\n  z: 3\n")
    assert decoded.value == {"base": {"x": 1, "y": [1, 2]}, "one": {"x": 1, "y": [1, 2]},
                             "two": {"x": 1, "y": [1, 2], "z": 3}}


def test_recursive_alias_is_refused():
    with pytest.raises(BadRequest) as exc:
        decoding.decode_yaml(b"a: &a [1, *a]\n")
    assert "excessive aliasing" in message(exc)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_nesting_is_bounded(fmt):
    def nested(depth):
        return b"[" * depth + b"]" * depth

    decode = decoding.decode_json if fmt == "json" else decoding.decode_yaml
    assert decode(nested(decoding.MAX_DEPTH)).value is not None
    with pytest.raises(BadRequest) as exc:
        decode(nested(decoding.MAX_DEPTH + 1))
    assert f"exceeded max depth of {decoding.MAX_DEPTH}" in message(exc)
    with pytest.raises(BadRequest):
        decode(nested(100_000))  # neither a RecursionError nor a crash in the C parsers


def test_aliases_cannot_nest_past_the_depth_bound():
    lines = ["l0: &l0 [1]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, decoding.MAX_DEPTH + 2)]
    with pytest.raises(BadRequest) as exc:
        decoding.decode_yaml("\n".join(lines).encode())
    assert "exceeded max depth" in message(exc)


def test_json_duplicate_keys_are_reported_with_their_paths_last_one_wins():
    decoded = decoding.decode_json(b'{"metadata":{"name":"u3","name":"u4"},"items":[{"a":1},{"a":1,"a":2}]}')
    assert decoded.value == {"metadata": {"name": "u4"}, "items": [{"a": 1}, {"a": 2}]}
    assert decoded.duplicates == ('duplicate field "metadata.name"', 'duplicate field "items[1].a"')


@pytest.mark.parametrize("body", [
    rb'{"a":"x\":1","b":"y\":"}',               # escaped quotes followed by colons inside strings
    rb'{"a\\":1,"a":2}',                          # a key ending in an escaped backslash
    b'{"a" : 1, "b"\n:\t2}',                      # whitespace before the colon
    rb'{"last-applied":"{\"a\":1,\"a\":2}"}',     # duplicates inside a string are not the body's
])
def test_json_without_duplicates_reports_none(body):
    assert decoding.decode_json(body).duplicates == ()


def test_yaml_duplicate_keys_are_reported():
    decoded = decoding.decode_yaml(b"metadata:\n  name: u3\n  name: u4\ndata: {a: 1, a: 2}\n")
    assert decoded.value == {"metadata": {"name": "u4"}, "data": {"a": 2}}
    assert decoded.duplicates == ('duplicate field "metadata.name"', 'duplicate field "data.a"')


def test_yaml_values_are_what_json_carries():
    decoded = decoding.decode_yaml(b"when: 2024-01-01T00:00:00Z\n1: one\nfalse: no\nbig: 123456789012345678901234\n")
    assert decoded.value == {"when": "2024-01-01T00:00:00Z", "1": "one", "false": False,
                             "big": 123456789012345678901234.0}
    with pytest.raises(BadRequest) as exc:
        decoding.decode_yaml(b"x: .inf\n")
    assert "unsupported value" in message(exc)
    assert decoding.decode_yaml(b"# only a comment\n").value is None


def test_malformed_bodies_are_400_in_kube_words():
    with pytest.raises(BadRequest) as exc:
        decoding.decode(b'{"metadata": ', "json")
    assert message(exc).startswith("couldn't get version/kind; json parse error: ")
    with pytest.raises(BadRequest) as exc:
        decoding.decode(b"{bad", "merge-patch")
    assert message(exc).startswith("error decoding patch: ")
    with pytest.raises(BadRequest) as exc:
        decoding.decode(b"a: [", "yaml")
    assert message(exc).startswith("error converting YAML to JSON: yaml: ")


def test_big_bodies_are_decoded_on_a_worker_thread_and_small_ones_inline():
    threads = []

    def decode(data):
        threads.append(threading.get_ident())
        return len(data)

    def run():
        assert decoding.off_hub(decode, b"x" * 10) == 10
        assert decoding.off_hub(decode, b"x" * (decoding.OFF_HUB_BYTES + 1)) == decoding.OFF_HUB_BYTES + 1
        with pytest.raises(BadRequest):  # an exception raised on the worker reaches the caller
            decoding.off_hub(decoding.decode_yaml, b"a: [" + b"1," * decoding.OFF_HUB_BYTES)
        return threading.get_ident()

    hub_thread = gevent.spawn(run).get()
    assert threads[0] == hub_thread and threads[1] != hub_thread


def test_the_hub_keeps_running_while_a_big_body_decodes():
    body = b"data:\n" + b"".join(b"  k%d: v%d\n" % (i, i) for i in range(40_000))
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    tick = gevent.spawn(ticker)
    try:
        decoded = gevent.spawn(decoding.decode_yaml, body).get()
    finally:
        tick.kill()
    assert len(decoded.value["data"]) == 40_000
    assert len(ticks) > 1  # other greenlets ran during the decode


def test_the_worker_raises_in_the_caller_without_printing_and_pauses_the_collector_only_meanwhile():
    import gc
    import sys

    from kcp_virtual.framework import offhub

    seen = {}

    def work():
        seen["gc"] = gc.isenabled()
        raise ValueError("from the worker")

    def run():
        with pytest.raises(ValueError, match="from the worker"):
            offhub.run(work)
        return gc.isenabled()

    printed = []
    hub = gevent.get_hub()
    original, hub.print_exception = hub.print_exception, lambda *a: printed.append(a)
    try:
        assert gevent.spawn(run).get() is True
    finally:
        hub.print_exception = original
    assert seen["gc"] is False and printed == [] and sys.exc_info() == (None, None, None)
