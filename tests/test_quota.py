"""The run-wide rate limit: the schedule's guarantees, AIMD back-off/recovery, and the global property across processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from fredflow.limiter import DECREASE, DECREASE_AGAIN, AdaptiveLimiter, AimdPolicy
from fredflow.quota import JITTER_MARGIN, RemoteLimiter, TokenService


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_schedule_spacing_and_burst_with_a_controlled_clock():
    service = TokenService(rate=10, burst=3)
    now = 100.0
    slots = []
    for caller in range(40):  # many callers, interleaved, each asking for a few
        slots += [now + d for d in service.lease(1 + caller % 3, now=now)]
        now += 0.01
    interval = 1 / (10 * (1 - JITTER_MARGIN))
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert sum(1 for t in slots if t < slots[0] + interval / 2) <= 3  # the burst: at most 3 at once
    assert min(gaps[3:]) >= interval - 1e-9  # then one slot per interval
    assert max_in_window(slots, 1.0) <= 10 + 3
    # after 10 s idle the schedule may lag "now" by burst-1 intervals, no more: again 3 at once, then spaced
    idle_now = now + 10
    later = service.lease(5, now=idle_now) + service.lease(5, now=idle_now)  # a lease holds <= 0.25 s: 2 slots
    assert later[:3] == [0, 0, 0] and later[3] == pytest.approx(interval)


def test_the_schedule_is_never_handed_out_beyond_its_horizon():
    service = TokenService(rate=20, burst=1)
    assert len(service.lease(100, now=0.0)) == 5  # 20 req/s x 0.25 s, for every task together
    assert service.lease(3, now=0.0) == []  # full: come back later
    assert service.retry_in(now=0.0) == pytest.approx(5 / (20 * (1 - JITTER_MARGIN)) - 0.25)
    assert len(service.lease(3, now=0.2)) >= 1


def test_throttle_pauses_and_slows_the_whole_schedule_then_recovers():
    service = TokenService(rate=10, burst=1)
    service.lease(3, now=0.0)
    delays = service.lease(1, throttled=1, now=1.0)
    policy = service.policy
    assert policy.rate == pytest.approx(10 * DECREASE)
    assert 1.0 + delays[0] >= policy.paused_until > 1.0  # nothing before the pause ends
    # 429s from requests already in flight during the pause: same episode, no second cut
    service.lease(1, throttled=3, now=1.05)
    assert policy.rate == pytest.approx(10 * DECREASE) and policy.episodes == 1
    # successes regain the rate linearly in time, up to the configured rate and no further
    now = policy.paused_until
    for _ in range(40):
        now += 0.25
        service.lease(1, ok=2, now=now)
    assert policy.rate == pytest.approx(10)


def test_repeated_429s_cut_harder_and_settle_below_a_lower_real_limit():
    policy = AimdPolicy(rate=25, burst=2)
    now = 0.0
    assert policy.on_throttled(now)
    first = policy.rate
    now = policy.paused_until + 0.01  # right after the pause: still too fast
    assert policy.on_throttled(now)
    assert policy.rate == pytest.approx(first * DECREASE_AGAIN)
    assert policy.rate >= policy.min_rate


async def test_adaptive_limiter_keeps_any_second_within_rate_plus_burst():
    limiter = AdaptiveLimiter(rate=40, burst=2)
    times: list[float] = []

    async def worker():
        for _ in range(15):
            await limiter.acquire()
            times.append(time.monotonic())

    await asyncio.gather(*(worker() for _ in range(6)))
    assert max_in_window(times, 1.0) <= 40 + 2
    assert len(times) / (times[-1] - times[0]) <= 40 * 1.05


_CHILD = r"""
import asyncio, json, sys, time
from fredflow.quota import RemoteLimiter
url, n, coros = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    limiter = RemoteLimiter(url, rate=float(sys.argv[4]), burst=1)
    times = []
    async def one(k):
        for _ in range(k):
            await limiter.acquire()
            times.append(time.monotonic())
    await asyncio.gather(*(one(n // coros) for _ in range(coros)))
    await limiter.close()
    print(json.dumps(times))
asyncio.run(main())
"""


def test_global_rate_holds_across_two_processes():
    rate = 12.0
    with TokenService(rate=rate, burst=1) as service:
        # two processes, unequal demand: no static split, the busier one gets more of the quota
        procs = [subprocess.Popen([sys.executable, "-c", _CHILD, service.url, str(n), "4", str(rate)],
                                  stdout=subprocess.PIPE, text=True)
                 for n in (40, 16)]
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        stats = service.stats()
    a, b = (json.loads(out) for out in outputs)
    both = sorted(a + b)
    assert len(both) == 56 and stats["granted"] >= 56
    # CLOCK_MONOTONIC is system-wide on Linux: the two processes' times are comparable
    assert max_in_window(both, 1.0) <= rate + 1
    span = both[-1] - both[0]
    achieved = (len(both) - 1) / span
    assert achieved <= rate * 1.02
    assert achieved >= rate * (1 - JITTER_MARGIN) * 0.9  # the quota is used, not split and left idle
    # while both were busy they shared the schedule; after the small one finished the big one had it all
    tail = [t for t in a if t > max(b)]
    assert len(tail) >= 10
    tail_rate = (len(tail) - 1) / (tail[-1] - tail[0])
    assert tail_rate >= rate * (1 - JITTER_MARGIN) * 0.9


async def test_remote_limiter_reports_429_and_next_slots_come_after_the_pause():
    with TokenService(rate=20, burst=1) as service:
        limiter = RemoteLimiter(service.url, rate=20, burst=1)
        await limiter.acquire()
        limiter.throttled()
        before = time.monotonic()
        await limiter.acquire()  # this lease carries the 429
        waited = time.monotonic() - before
        await limiter.close()
        assert service.stats()["throttled"] == 1 and service.policy.episodes == 1
        assert waited >= 0.2  # paused (MIN_PAUSE_S), not sent straight away


def test_late_reports_of_429s_sent_before_the_cut_do_not_cut_again():
    service = TokenService(rate=20, burst=1)
    service.lease(2, now=0.0)
    epoch_before = service.epoch
    service.lease(1, throttled=[epoch_before], now=0.1)
    cut_once = service.policy.rate
    assert service.epoch == epoch_before + 1
    # long after the pause, another task reports 429s of slots it was given before the cut
    service.lease(1, throttled=[epoch_before, epoch_before], now=5.0)
    assert service.policy.rate >= cut_once and service.epoch == epoch_before + 1
    # a 429 on a slot from the new epoch is new evidence: the rate is cut again
    service.lease(1, throttled=[service.epoch], now=6.0)
    assert service.epoch == epoch_before + 2
