"""The shared runner watch's routing (necrocode.runnerhub): which cancellation an event of a
runner pod reaches. Without a server: the selectors and the fan-out index are pure."""

from __future__ import annotations

import pytest

from necrocode.runnerhub import Fanout, matches, parse_selector

JOB_A = "necrocode.io/job=a,necrocode.io/role=runner"
JOB_B = "necrocode.io/job=b,necrocode.io/role=runner"


def runner(job: str, **more: str) -> dict[str, str]:
    return {"necrocode.io/job": job, "necrocode.io/role": "runner", **more}


def test_the_selectors_the_operator_builds_match_as_the_api_server_would() -> None:
    sel = parse_selector(JOB_A)
    assert matches(sel, runner("a"))
    assert not matches(sel, runner("b"))
    assert not matches(sel, {"necrocode.io/job": "a"})  # not a runner
    assert matches(parse_selector("a==1,b!=2,c,!d"), {"a": "1", "b": "3", "c": ""})
    assert not matches(parse_selector("a==1,b!=2,c,!d"), {"a": "1", "b": "2", "c": ""})
    assert not matches(parse_selector("!d"), {"d": "x"})
    assert not matches(parse_selector("c"), {})
    assert matches(parse_selector(""), {"anything": "x"})


def test_a_set_based_selector_is_refused_not_matched_wrongly() -> None:
    with pytest.raises(ValueError):
        parse_selector("necrocode.io/job in (a,b)")
    with pytest.raises(ValueError):
        parse_selector("necrocode.io/job notin x")


def test_an_event_reaches_every_subscriber_of_its_job_and_no_other() -> None:
    f: Fanout[str] = Fanout()
    f.add("job-a", parse_selector(JOB_A))
    f.add("task-a1", parse_selector(JOB_A + ",necrocode.io/task=a1"))  # a TaskCancellation's, if narrower
    f.add("job-b", parse_selector(JOB_B))
    assert sorted(f.route(runner("a", **{"necrocode.io/task": "a1"}))) == ["job-a", "task-a1"]
    assert f.route(runner("a", **{"necrocode.io/task": "a2"})) == ["job-a"]
    assert f.route(runner("b")) == ["job-b"]
    assert f.route(runner("c")) == []
    assert f.route({}) == []


def test_a_subscriber_without_an_equality_requirement_is_checked_for_every_event() -> None:
    f: Fanout[str] = Fanout()
    f.add("any-runner", parse_selector("necrocode.io/role"))
    f.add("job-a", parse_selector(JOB_A))
    assert sorted(f.route(runner("a"))) == ["any-runner", "job-a"]
    assert f.route(runner("z")) == ["any-runner"]


def test_leaving_removes_a_subscriber_and_its_index_entries() -> None:
    f: Fanout[str] = Fanout()
    f.add("one", parse_selector(JOB_A))
    f.add("two", parse_selector(JOB_A))
    f.discard("one")
    assert f.route(runner("a")) == ["two"] and len(f) == 1 and "one" not in f
    f.discard("two")
    f.discard("two")  # twice: harmless
    assert f.route(runner("a")) == [] and len(f) == 0 and not f.everyone()
    f.add("again", parse_selector(JOB_B))  # re-adding with another selector re-indexes it
    f.add("again", parse_selector(JOB_A))
    assert f.route(runner("b")) == [] and f.route(runner("a")) == ["again"]
