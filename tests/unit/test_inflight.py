"""The max-in-flight limiter: per-kind limits, exemptions, slots held until the answer is sent."""

from __future__ import annotations

import pytest

from kcp_virtual.framework.errors import TooManyRequests
from kcp_virtual.framework.inflight import IN_FLIGHT_SLOT, InFlightLimiter, answer, is_watch
from server import cli
from server.http import serving


def env(method: str = "GET", query: str = "", path: str = "/clusters/root/api/v1/configmaps") -> dict:
    return {"REQUEST_METHOD": method, "QUERY_STRING": query, "PATH_INFO": path}


def test_read_only_and_mutating_requests_have_their_own_limits():
    limiter = InFlightLimiter(max_read_only=2, max_mutating=1)
    reads = [limiter.admit(env(), ()) for _ in range(2)]
    with pytest.raises(TooManyRequests) as refused:
        limiter.admit(env("HEAD"), ())
    status = refused.value.get_response()
    assert (status.status_code, status.headers["Retry-After"]) == (429, "1")
    assert refused.value.status()["details"] == {"retryAfterSeconds": 1}
    write = limiter.admit(env("POST"), ())  # a separate budget
    assert limiter.try_admit(env("DELETE"), ()) is None
    assert (limiter.in_flight, limiter.rejected) == ({"readOnly": 2, "mutating": 1}, {"readOnly": 1, "mutating": 0})
    reads[0].release()
    reads[0].release()  # once only
    write.release()
    assert limiter.in_flight == {"readOnly": 1, "mutating": 0}
    with limiter.admit(env("PATCH"), ()):
        assert limiter.in_flight["mutating"] == 1
    assert limiter.in_flight["mutating"] == 0


@pytest.mark.parametrize("request_env", [env(query="watch=true"), env(query="labelSelector=a&watch=1"),
                                         env(path="/api/v1/watch/namespaces/default/configmaps")])
def test_watches_and_masters_are_exempt(request_env):
    limiter = InFlightLimiter(max_read_only=1, max_mutating=1)
    assert is_watch(request_env)
    held = limiter.admit(env(), ())
    for _ in range(5):
        limiter.admit(request_env, ())
        limiter.admit(env(), ("system:masters",))
        limiter.admit(env("POST"), ("system:masters", "x"))
    assert limiter.in_flight == {"readOnly": 1, "mutating": 0}
    held.release()
    assert not is_watch(env(query="watch=false&x=watch=true"))


def test_a_limit_of_zero_is_no_limit():
    limiter = InFlightLimiter(max_read_only=0, max_mutating=0)
    for _ in range(100):
        limiter.admit(env(), ())
        limiter.admit(env("PUT"), ())
    assert limiter.in_flight == {"readOnly": 0, "mutating": 0}


def test_answer_holds_the_slot_until_the_response_is_closed_and_gives_it_back_on_base_exceptions():
    limiter = InFlightLimiter(max_read_only=1, max_mutating=1)
    environ = env()

    def respond():
        environ[IN_FLIGHT_SLOT] = limiter.admit(environ, ())
        return lambda environ, start_response: iter([b"a", b"b"])

    body = answer(environ, lambda *a: None, respond)
    assert b"".join(body) == b"ab" and limiter.in_flight["readOnly"] == 1
    body.close()
    assert limiter.in_flight["readOnly"] == 0 and IN_FLIGHT_SLOT not in environ

    def interrupted():
        respond()
        raise serving.BodyTimeout("late")

    with pytest.raises(serving.BodyTimeout):
        answer(environ, lambda *a: None, interrupted)
    assert limiter.in_flight["readOnly"] == 0


def test_the_command_line_documents_the_servers_own_timeouts():
    text = cli.build_parser()._subparsers._group_actions[0].choices["start"].format_help()
    for flag, value in (("--request-header-timeout", serving.HEADER_TIMEOUT),
                        ("--request-body-timeout", serving.BODY_TIMEOUT),
                        ("--idle-connection-timeout", serving.IDLE_TIMEOUT)):
        help_text = " ".join(text.rsplit(flag, 1)[1].split("--", 1)[0].split())
        assert f"(default {value:g})" in help_text, (flag, help_text)
