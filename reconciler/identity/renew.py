"""When to renew a certificate, and how long to wait after a failed attempt. Pure.

A member renews at a random point between 50% and 70% of its certificate's life (so a
fleet issued at once does not renew at once); after a failure it retries with capped
exponential backoff and jitter, and warns once less than a fifth of the life is left.
"""

from __future__ import annotations

import random

RENEW_FROM = 0.5
RENEW_TO = 0.7
WARN_LEFT = 0.2


def renew_at(not_before: float, not_after: float, rng: random.Random) -> float:
    life = not_after - not_before
    return not_before + life * rng.uniform(RENEW_FROM, RENEW_TO)


def retry_delay(
    attempt: int, rng: random.Random, *, base: float = 1.0, cap: float = 300.0
) -> float:
    d = min(cap, base * 2.0 ** min(max(0, attempt), 64))  # no float overflow, ever
    return d * rng.uniform(0.5, 1.0)


def should_warn(not_before: float, not_after: float, now: float) -> bool:
    return not_after - now < (not_after - not_before) * WARN_LEFT
