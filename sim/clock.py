"""Per-node clocks: monotonic and wall time derived from simulated time, with skew and drift.

Simulated time is integer microseconds (``env.now``). A node's monotonic clock runs at
``1 + drift_ppm / 1e6`` times the simulated rate from an arbitrary origin; its wall clock is
the run's epoch plus a skew, running at the same rate. A change of drift rebases the clock
piecewise, so monotonic time never goes backwards; a wall-clock jump moves only the wall clock.
"""

from __future__ import annotations

from pxq.effects import Now

EPOCH_MS = 1_767_225_600_000
"""Wall time (Unix ms) at simulated time zero: 2026-01-01T00:00:00Z, fixed for determinism."""

PPM = 1_000_000


class NodeClock:
    """The clock of one simulated node."""

    __slots__ = ("_base_mono_us", "_base_sim_us", "drift_ppm", "skew_ms")

    def __init__(self, *, origin_us: int, drift_ppm: int, skew_ms: int) -> None:
        if not -PPM // 2 < drift_ppm < PPM // 2:
            raise ValueError(f"drift_ppm {drift_ppm} is out of range")
        self._base_sim_us = 0
        self._base_mono_us = origin_us
        self.drift_ppm = drift_ppm
        self.skew_ms = skew_ms

    def mono_us(self, sim_us: int) -> int:
        return self._base_mono_us + (sim_us - self._base_sim_us) * (PPM + self.drift_ppm) // PPM

    def now(self, sim_us: int) -> Now:
        mono_us = self.mono_us(sim_us)
        return Now(
            mono_ms=mono_us // 1000,
            wall_ms=EPOCH_MS
            + self.skew_ms
            + (mono_us - self._base_mono_us) // 1000
            + self._base_sim_us // 1000,
        )

    def sim_us_at(self, mono_ms: int, sim_now_us: int) -> int:
        """The earliest simulated time (>= sim_now_us) at which ``mono_ms`` has been reached."""
        target_us = mono_ms * 1000
        if target_us <= self.mono_us(sim_now_us):
            return sim_now_us
        rate = PPM + self.drift_ppm
        delta_mono = target_us - self._base_mono_us
        t = self._base_sim_us + -(-delta_mono * PPM // rate)  # ceiling division
        while self.mono_us(t) < target_us:  # guard against rounding
            t += 1
        return max(t, sim_now_us)

    def set_drift(self, sim_us: int, drift_ppm: int) -> None:
        """Change the rate from ``sim_us`` on; monotonic time stays continuous."""
        if not -PPM // 2 < drift_ppm < PPM // 2:
            raise ValueError(f"drift_ppm {drift_ppm} is out of range")
        wall_before = self.now(sim_us).wall_ms
        self._base_mono_us = self.mono_us(sim_us)
        self._base_sim_us = sim_us
        self.drift_ppm = drift_ppm
        self.skew_ms += wall_before - self.now(sim_us).wall_ms

    def jump_wall(self, delta_ms: int) -> None:
        """Step the wall clock (as NTP might); monotonic time is unaffected."""
        self.skew_ms += delta_ms
