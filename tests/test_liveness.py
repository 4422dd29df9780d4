"""The station's liveness rule (freshness, watchdog, fps) on a fake clock: no threads, no sleeps."""

from __future__ import annotations

import logging

import pytest

from facediag.edge.compat import zip_strict  # zip(strict=True) on Python 3.8 too (.ci/py38)
from facediag.edge.station.liveness import Liveness, LivenessLimits, WatchdogFeeder


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


LIMITS = LivenessLimits(max_frame_age_s=2.0, max_processing_age_s=5.0)


def _ready(clock: FakeClock, **kw) -> Liveness:
    live = Liveness(LIMITS, clock=clock, **kw)
    live.mark_ready()
    return live


def test_not_alive_before_ready_even_with_frames():
    clock = FakeClock()
    live = Liveness(LIMITS, clock=clock)
    live.frame_processed(clock())
    assert live.is_alive() == (False, "starting")
    # /status still shows why frames would or would not count
    assert live.freshness().alive


def test_alive_while_processed_frames_are_fresh_then_names_the_stale_frame():
    clock = FakeClock()
    live = _ready(clock)
    assert live.is_alive() == (True, "")
    for _ in range(10):
        clock.advance(0.5)
        live.frame_processed(captured_at=clock() - 0.1)
        assert live.is_alive()[0]
    clock.advance(2.0)  # the newest frame was captured 2.1 s ago: over the 2 s limit
    alive, why = live.is_alive()
    assert not alive and "no fresh frame" in why and "2.1 s old" in why and "limit 2 s" in why


def test_frame_age_limit_is_inclusive_at_the_boundary():
    clock = FakeClock()
    live = _ready(clock)
    live.frame_processed(captured_at=clock())
    clock.advance(2.0)
    assert live.is_alive()[0]
    clock.advance(0.001)
    assert not live.is_alive()[0]


def test_old_captures_count_as_stale_even_when_processing_is_fresh():
    """A frame that waited 3 s before being processed is not fresh (a stuck hand-off, a replayed buffer)."""
    clock = FakeClock()
    live = _ready(clock)
    live.frame_processed(captured_at=clock() - 3.0)
    alive, why = live.check()
    assert not alive and "no fresh frame" in why


def test_processing_stall_is_reported_when_frame_limit_is_the_looser_one():
    clock = FakeClock()
    live = Liveness(LivenessLimits(max_frame_age_s=60.0, max_processing_age_s=1.0), clock=clock)
    live.mark_ready()
    live.frame_processed(captured_at=clock())
    clock.advance(1.5)
    alive, why = live.check()
    assert not alive and why == "processing stalled (limit 1 s)"


def test_fps_is_a_moving_average_of_processing_intervals():
    clock = FakeClock()
    live = _ready(clock)
    assert live.fps() == 0.0
    clock.advance(0.1)
    live.frame_processed(clock())
    assert live.fps() == pytest.approx(10.0)  # the first interval sets it
    for _ in range(200):
        clock.advance(0.05)
        live.frame_processed(clock())
    assert live.fps() == pytest.approx(20.0, rel=1e-3)  # converges to the new rate
    live.frame_processed(clock())  # zero interval: ignored, no division by zero
    assert live.fps() == pytest.approx(20.0, rel=1e-3)


def test_watchdog_check_equals_health_without_a_source_excuse():
    clock = FakeClock()
    live = _ready(clock)
    clock.advance(3.0)
    live.loop_tick()
    assert not live.check().alive
    assert live.watchdog_check() == live.check()


def test_a_source_excuse_keeps_the_watchdog_fed_only_while_the_loop_turns():
    """The seam for "capture is working through its backoff" / "booted without camera": health stays
    degraded, the watchdog passes while the loop is alive, and stops when the loop wedges."""
    clock = FakeClock()
    excuse: list[str | None] = [None]
    live = _ready(clock, source_excuse=lambda: excuse[0])
    clock.advance(3.0)
    live.loop_tick()
    assert not live.watchdog_check().alive  # no excuse given: frames are stale
    excuse[0] = "camera reconnecting (backoff)"
    assert live.watchdog_check() == (True, "camera reconnecting (backoff)")
    assert not live.check().alive, "health still says degraded"
    clock.advance(5.5)  # the loop stopped turning for longer than max_processing_age_s
    assert not live.watchdog_check().alive


class Sent:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bool:
        self.count += 1
        return True


def test_watchdog_feeder_sends_every_period_while_alive_and_pauses_then_resumes(caplog):
    clock = FakeClock()
    live = Liveness(LIMITS, clock=clock)
    sent = Sent()
    feeder = WatchdogFeeder(live, sent, period=1.0)
    assert not feeder.tick(clock())  # not READY: nothing is sent
    live.mark_ready()
    times = []
    for _ in range(30):  # 3 s of a 10 Hz loop with fresh frames
        now = clock.advance(0.1)
        live.frame_processed(now, now)
        if feeder.tick(now):
            times.append(now)
    assert sent.count == len(times) == 3  # at t+0.1, then once per period
    assert all(b - a == pytest.approx(1.0) for a, b in zip_strict(times[:-1], times[1:]))

    caplog.set_level(logging.INFO, logger="facediag.edge.station.liveness")
    outage_start = clock()
    for _ in range(40):  # 4 s without frames: paused after the 2 s frame limit
        feeder.tick(clock.advance(0.1))
    late = sent.count
    assert feeder.paused and late <= 5
    paused_logs = [r for r in caplog.records if "watchdog paused" in r.getMessage()]
    assert len(paused_logs) == 1 and "no fresh frame" in paused_logs[0].getMessage()

    now = clock.advance(0.1)
    live.frame_processed(now, now)
    assert feeder.tick(now), "resumes on the first check after frames are fresh again (re-checked every 0.1 s)"
    assert not feeder.paused and clock() - outage_start < 4.2
    assert sum("watchdog resumed" in r.getMessage() for r in caplog.records) == 1


def test_watchdog_feeder_is_idle_without_a_systemd_watchdog():
    clock = FakeClock()
    live = _ready(clock)
    sent = Sent()
    feeder = WatchdogFeeder(live, sent, period=None)
    for _ in range(10):
        feeder.tick(clock.advance(1.0))
    assert sent.count == 0
