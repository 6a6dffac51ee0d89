"""Limit options are checked where they are written (pure logic, no servers)."""

from __future__ import annotations

import pickle

import pytest

from k1.flow import CONCURRENCY_WAIT_MAX, Limit, LimitExceeded, RateWait, wait_countdown
from k1.flow.limits import InvalidLimit, check_declared


@pytest.mark.parametrize(("options", "field"), [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": True}, "concurrency"),
    ({"concurrency": "2"}, "concurrency"),
    ({"rate": "10/d"}, "rate"),
    ({"rate": "0/s"}, "rate"),
    ({}, "concurrency"),
    ({"concurrency": 1, "per": "not-an-argument"}, "per"),
    ({"concurrency": 1, "lease": 0.5}, "lease"),
    ({"concurrency": 1, "tasks": "k1.tasks.demo.flaky"}, "tasks"),
])
def test_a_bad_option_names_its_field(options, field):
    with pytest.raises(InvalidLimit) as caught:
        Limit("analysis", **options)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}:")


def test_a_bad_name_is_refused():
    with pytest.raises(InvalidLimit, match=r"^name:"):
        Limit("two words", concurrency=1)


def test_limits_on_a_task_must_be_a_list_of_limits():
    with pytest.raises(TypeError, match=r"must be a list of k1\.flow\.Limit"):
        check_declared([{"name": "x"}], "t")
    with pytest.raises(TypeError, match="two limits named the same"):
        check_declared([Limit("x", concurrency=1), Limit("x", rate="1/s")], "t")
    (limit,) = check_declared([Limit("x", rate="5/m")], "t")
    assert limit.tasks == ("t",) and limit.interval == 12.0


def test_keys_per_project_and_per_argument():
    assert Limit("a", concurrency=1).key_of("acme", {"x": 1}) == ""
    assert Limit("a", concurrency=1, per="project").key_of("acme", {}) == "acme"
    assert Limit("a", concurrency=1, per="account").key_of("acme", {"account": "b7"}) == "b7"
    assert Limit("a", concurrency=1, per="n").key_of("acme", {"n": 3}) == "3"


def test_concurrency_waits_back_off_to_a_bound_and_rate_waits_are_exact():
    waits = [wait_countdown(LimitExceeded("a", "", 0.0), n) for n in range(12)]
    assert waits[0] < waits[3] and max(waits) <= CONCURRENCY_WAIT_MAX * 1.2
    assert min(waits[6:]) >= CONCURRENCY_WAIT_MAX
    assert wait_countdown(RateWait("a", "", 2.5), 40) == 2.5


def test_a_refusal_says_which_part_of_the_limit_refused_and_survives_pickling():
    # Celery stores the exception of a retry (a wait) in the result backend by its args.
    for refusal, kind in ((LimitExceeded("a", "k", 0.0), "concurrency"),
                          (LimitExceeded("a", "k", 40.0, "rate"), "rate"),
                          (RateWait("a", "k", 2.5), "rate")):
        copy = pickle.loads(pickle.dumps(refusal))
        assert (type(copy), copy.name, copy.key, copy.kind) == (type(refusal), "a", "k", kind)


def test_a_refreshed_copy_is_aged_from_before_its_read(monkeypatch):
    """A change written while a process reads its copy reaches that process at the first
    call REFRESH_INTERVAL after the change (what the tests' refresh waits rely on), even
    when the read took a while."""
    from types import SimpleNamespace

    from k1.flow import limits

    clock = [100.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    stored = ["old"]

    def slow_read() -> str:
        value = stored[0]
        clock[0] += 0.5  # the read takes half a second; halfway through, the value changes
        stored[0] = "new"
        return value

    copy = limits.Refreshed(slow_read)
    assert copy.current() == "old"
    clock[0] = 100.25 + limits.REFRESH_INTERVAL  # a refresh interval after the change
    assert copy.current() == "new"
