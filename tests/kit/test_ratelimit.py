from __future__ import annotations

from homepot.kit.ratelimit import SlidingWindowLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_refused_beyond_its_limit_until_the_window_slides() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 60, clock=clock)

    waits = [limiter.try_hit("a") for _ in range(3)]
    clock.now += 10
    refused = limiter.try_hit("a")

    assert waits == [0, 0, 0]
    assert refused == 50  # the oldest hit leaves the window 60 s after it came
    assert limiter.try_hit("b") == 0  # keys are counted apart
    clock.now += 50
    assert limiter.try_hit("a") == 0


def test_refused_attempts_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(1, 10, clock=clock)
    limiter.hit("a")
    for _ in range(5):
        clock.now += 1
        limiter.try_hit("a")
    assert limiter.retry_after("a") == 5


def test_a_forgiven_hit_no_longer_counts() -> None:
    limiter = SlidingWindowLimiter(2, 10, clock=Clock())
    limiter.hit("a")
    limiter.hit("a")
    assert limiter.retry_after("a") > 0
    limiter.forgive("a")
    assert limiter.retry_after("a") == 0
    limiter.forgive("a")
    limiter.forgive("a")  # nothing left to forgive: no error
    assert limiter.try_hit("a") == 0


def test_reset_forgets_a_key_and_the_header_rounds_up() -> None:
    limiter = SlidingWindowLimiter(1, 10, clock=Clock())
    limiter.hit("a")
    assert limiter.retry_after("a") > 0
    limiter.reset("a")
    assert limiter.retry_after("a") == 0
    assert retry_after_header(0.2) == {"Retry-After": "1"}
    assert retry_after_header(4.1) == {"Retry-After": "5"}


def test_memory_stays_bounded_by_dropping_idle_keys() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(2, 10, clock=clock)
    limiter.MAX_KEYS = 100
    for n in range(100):
        limiter.hit(f"old-{n}")
    clock.now += 11
    limiter.hit("new")
    assert len(limiter._hits) == 1
