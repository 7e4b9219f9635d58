"""Pure restart decisions: exponential backoff with jitter, crash-loop detection.

No clock or randomness of its own: ``now`` and ``rng`` are passed in, so the policy runs on
virtual time in the tests.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from reconciler.model import RestartPolicy


def backoff_delay(policy: RestartPolicy, failures: int, rng: random.Random) -> float:
    """Delay before restart number ``failures`` (1-based): ``initial * 2^(n-1)``, capped,
    with "equal jitter" (uniform in [d/2, d]) so a fleet does not restart in lock-step."""
    if failures <= 0:
        return 0.0
    base = min(policy.backoff_max_s, policy.backoff_initial_s * (2.0 ** min(failures - 1, 60)))
    return base / 2.0 + rng.uniform(0.0, base / 2.0)


@dataclass(frozen=True)
class Verdict:
    """What to do after an instance exited or failed its health check."""

    restart: bool
    delay_s: float = 0.0
    crash_loop: bool = False
    reason: str = ""


@dataclass
class RestartTracker:
    """Counts failures inside the policy's window; decides restart, delay or crash loop."""

    policy: RestartPolicy
    rng: random.Random = field(default_factory=random.Random)
    failures: deque[float] = field(default_factory=deque)
    restarts: int = 0

    def record_failure(self, now: float, exit_code: int | None, unhealthy: bool) -> Verdict:
        clean = exit_code == 0 and not unhealthy
        if self.policy.policy == "never":
            return Verdict(False, reason="restart policy is never")
        if self.policy.policy == "on-failure" and clean:
            return Verdict(False, reason="exited cleanly (policy on-failure)")
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.policy.window_s:
            self.failures.popleft()
        n = len(self.failures)
        if n >= self.policy.max_failures:
            return Verdict(
                False,
                crash_loop=True,
                reason=f"crash loop: {n} failures within {self.policy.window_s:g}s",
            )
        self.restarts += 1
        return Verdict(True, backoff_delay(self.policy, n, self.rng), reason="restarting")
