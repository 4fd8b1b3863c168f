"""The job-state rules as a pure function (the SQL twin is checked in test_status_db.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from relion_zo.status import STOPPED_PREFIX, classify

NOW = dt.datetime(2026, 11, 22, 12, 0, 0)


def state(**kw):
    base = dict(has_program=True, start_time=None, heartbeat=None, processing_status=None,
                message=None, now=NOW, stale_seconds=30)
    base.update(kw)
    return classify(**base)


def ago(seconds):
    return NOW - dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(has_program=False), "submitted"),
        (dict(), "queued"),
        (dict(start_time=ago(100), heartbeat=ago(5)), "running"),
        (dict(start_time=ago(100), heartbeat=ago(30)), "running"),
        (dict(start_time=ago(100), heartbeat=ago(31)), "lost"),
        (dict(start_time=ago(100)), "lost"),
        (dict(start_time=ago(10)), "running"),
        (dict(processing_status=1, message="done"), "success"),
        (dict(processing_status=1, message=STOPPED_PREFIX + ": via relion-zo stop"), "stopped"),
        (dict(processing_status=0, message=STOPPED_PREFIX), "failure"),
        (dict(processing_status=0, start_time=ago(5), heartbeat=ago(1)), "failure"),
    ],
)
def test_rules(kw, expected):
    assert state(**kw) == expected


def test_stale_limit_comes_from_the_caller():
    kw = dict(start_time=ago(100), heartbeat=ago(45))
    assert state(stale_seconds=30, **kw) == "lost"
    assert state(stale_seconds=60, **kw) == "running"
