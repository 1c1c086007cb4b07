"""Schedules judged against runs (taskmon.domain.schedules): pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskmon.domain.schedules import (
    MAX_FIRES,
    Run,
    Schedule,
    expected_fires,
    judge,
    next_fire,
)

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def _cron(cron: str, offset: str | None = None) -> Schedule:
    return Schedule("s1", "app:job", "LabelScheduleSource", cron=cron, cron_offset=offset)


def _every(seconds: float) -> Schedule:
    return Schedule("s1", "app:job", "RedisScheduleSource", interval_s=seconds)


def _run(at: datetime, *, start_after_s: float = 0.5, status: str = "success", n: int = 0) -> Run:
    started = at + timedelta(seconds=start_after_s)
    return Run(f"t{n}-{at.timestamp()}", 0, status, "s1", started, at, started, 12.0)


def test_cron_fires_are_the_minutes_it_names_in_its_time_zone() -> None:
    day = expected_fires(_cron("0 3 * * *"), since=T0, until=T0 + timedelta(days=2))
    assert day == [T0 + timedelta(hours=3), T0 + timedelta(days=1, hours=3)]
    # 03:00 in Paris is 02:00 UTC in winter; "+05:30" is read as TaskIQ reads an offset
    paris = expected_fires(_cron("0 3 * * *", "Europe/Paris"), since=T0, until=T0 + timedelta(1))
    assert paris == [T0 + timedelta(hours=2)]
    india = expected_fires(_cron("30 3 * * *", "+05:30"), since=T0, until=T0 + timedelta(1))
    assert india == [T0 + timedelta(hours=22)]
    steps = expected_fires(_cron("*/15 9-10 * * *"), since=T0, until=T0 + timedelta(hours=12))
    assert len(steps) == 8 and steps[0] == T0 + timedelta(hours=9)


def test_cron_day_fields_follow_the_scheduler_weekdays_and_month_days() -> None:
    # 2026-12-01 is a Tuesday; "mon" in the weekday field
    mondays = expected_fires(_cron("0 0 * * mon"), since=T0, until=T0 + timedelta(days=14))
    assert [d.strftime("%a") for d in mondays] == ["Mon", "Mon"]
    firsts = expected_fires(_cron("0 0 1 * *"), since=T0, until=T0 + timedelta(days=40))
    assert [d.day for d in firsts] == [1, 1]


def test_a_cron_fire_with_a_run_is_ok_late_or_missed_by_its_delay() -> None:
    s = _cron("0 * * * *")
    now = T0 + timedelta(hours=3, minutes=30)
    runs = [
        _run(T0 + timedelta(hours=1, seconds=1), n=1),  # on time
        _run(T0 + timedelta(hours=2, minutes=5), n=2),  # sent five minutes late
    ]
    report = judge(s, runs, since=T0 + timedelta(minutes=30), now=now, grace_s=600, late_after_s=60)
    states = [(f.expected_at.hour, f.state) for f in report.fires]
    assert states == [(1, "ok"), (2, "late"), (3, "missed")]
    assert (report.missed_count, report.late_count, report.runs) == (1, 1, 2)
    assert report.state == "missed"
    assert report.last_run == runs[1]
    assert report.next_fire == T0 + timedelta(hours=4)
    late = report.fires[1]
    assert late.delay_s == pytest.approx(300.5)


def test_a_fire_within_its_grace_period_is_waiting_and_a_pending_run_is_not_a_start() -> None:
    s = _cron("0 * * * *")
    now = T0 + timedelta(hours=1, minutes=2)
    pending = _run(T0 + timedelta(hours=1), status="pending")
    report = judge(s, [pending], since=T0 + timedelta(minutes=30), now=now, grace_s=300)
    assert [f.state for f in report.fires] == ["waiting"]
    assert report.state == "waiting"
    later = judge(s, [pending], since=T0 + timedelta(minutes=30), now=now + timedelta(minutes=10))
    assert later.fires[0].state == "missed"


def test_one_run_counts_for_one_fire_only() -> None:
    s = _cron("* * * * *")
    now = T0 + timedelta(minutes=3, seconds=59)
    report = judge(s, [_run(T0 + timedelta(minutes=1))], since=T0, now=now, grace_s=10)
    assert [f.state for f in report.fires] == ["missed", "ok", "missed", "missed"]


def test_an_unreadable_cron_is_a_problem_not_an_error() -> None:
    report = judge(_cron("61 * * * *"), [], since=T0, now=T0 + timedelta(hours=1))
    assert report.state == "unreadable" and report.problem and "61" in report.problem
    zone = judge(_cron("0 * * * *", "Mars/Olympus"), [], since=T0, now=T0 + timedelta(hours=2))
    assert zone.problem and "Mars/Olympus" in zone.problem
    assert next_fire(_cron("61 * * * *"), T0) is None


def test_interval_fires_follow_the_sends_and_a_silence_is_missed() -> None:
    s = _every(10)
    since = T0
    sends = [T0 + timedelta(seconds=x) for x in (1, 11, 21.5, 31)]
    runs = [_run(at, n=i) for i, at in enumerate(sends)]
    now = T0 + timedelta(seconds=75)
    report = judge(s, runs, since=since, now=now, grace_s=5, late_after_s=3)
    states = [f.state for f in report.fires]
    # four runs, then nothing: 41 and 51 and 61 are missed, 71 is in its grace period
    assert states == ["ok", "ok", "ok", "ok", "missed", "missed", "missed", "waiting"]
    assert report.next_fire == now  # overdue
    assert report.runs == 4


def test_an_interval_schedule_that_never_ran_has_no_fires_to_miss() -> None:
    report = judge(_every(2), [], since=T0, now=T0 + timedelta(days=1))
    assert report.fires == () and report.state == "no runs"


def test_a_long_silence_is_counted_whole_and_listed_by_its_newest_fires() -> None:
    before = _run(T0 - timedelta(seconds=1))
    report = judge(_every(1), [before], since=T0, now=T0 + timedelta(hours=2), grace_s=0)
    assert len(report.fires) == MAX_FIRES
    assert report.missed_count == pytest.approx(7200, abs=2)
    assert report.fires[-1].expected_at > T0 + timedelta(hours=1, minutes=59)


def test_a_one_off_schedule_fires_once() -> None:
    at = T0 + timedelta(hours=1)
    s = Schedule("s1", "app:job", "RedisScheduleSource", time=at)
    assert judge(s, [], since=T0, now=T0 + timedelta(hours=2)).state == "missed"
    ran = judge(s, [_run(at)], since=T0, now=T0 + timedelta(hours=2))
    assert [f.state for f in ran.fires] == ["ok"] and ran.next_fire is None
    assert next_fire(s, T0) == at
