"""Per-node clocks: monotonic and wall time derived from simulated time, with skew and drift,
and the faults a monotonic clock can suffer.

Simulated time is integer microseconds (``env.now``). A node's *raw* clock runs at
``1 + drift_ppm / 1e6`` times the simulated rate from an arbitrary origin; its wall clock is
the run's epoch plus a skew plus the raw clock's progress, and its monotonic clock is the raw
clock plus an offset that only the monotonic faults move. A change of drift rebases the raw
clock piecewise, so neither clock goes backwards; a wall-clock jump moves only the wall clock.

Monotonic faults (the wall clock is unaffected by both):

- a *stall* of N ms: the monotonic clock stands still for N ms of simulated time, then runs on
  from where it stopped without catching up (CLOCK_MONOTONIC across a host or VM suspend: it
  ends N ms behind). A stall that starts during another one extends it.
- a *jump* of N ms: the monotonic clock steps N ms forward at once (a clock source that skips).
"""

from __future__ import annotations

from pxq.effects import Now

EPOCH_MS = 1_767_225_600_000
"""Wall time (Unix ms) at simulated time zero: 2026-01-01T00:00:00Z, fixed for determinism."""

PPM = 1_000_000


class NodeClock:
    """The clock of one simulated node."""

    __slots__ = (
        "_base_mono_us",
        "_base_sim_us",
        "_frozen_us",
        "_offset_us",
        "_stall_until_us",
        "drift_ppm",
        "skew_ms",
    )

    def __init__(self, *, origin_us: int, drift_ppm: int, skew_ms: int) -> None:
        if not -PPM // 2 < drift_ppm < PPM // 2:
            raise ValueError(f"drift_ppm {drift_ppm} is out of range")
        self._base_sim_us = 0
        self._base_mono_us = origin_us
        self.drift_ppm = drift_ppm
        self.skew_ms = skew_ms
        self._offset_us = 0
        """Monotonic minus raw time (outside a stall): what stalls took, jumps added."""
        self._stall_until_us: int | None = None
        """While (or after, until settled) a stall: the simulated time it ends."""
        self._frozen_us = 0
        """During a stall: the monotonic time the clock stands at."""

    def _raw_us(self, sim_us: int) -> int:
        return self._base_mono_us + (sim_us - self._base_sim_us) * (PPM + self.drift_ppm) // PPM

    def _raw_sim_us_at(self, raw_us: int) -> int:
        """The earliest simulated time at which the raw clock reads ``raw_us`` (which must not
        be below its reading at the base)."""
        rate = PPM + self.drift_ppm
        t = self._base_sim_us + -(-(raw_us - self._base_mono_us) * PPM // rate)  # ceiling
        while self._raw_us(t) < raw_us:  # guard against rounding
            t += 1
        return t

    def mono_us(self, sim_us: int) -> int:
        stall = self._stall_until_us
        if stall is None:
            return self._raw_us(sim_us) + self._offset_us
        if sim_us < stall:
            return self._frozen_us
        return self._frozen_us + self._raw_us(sim_us) - self._raw_us(stall)

    def now(self, sim_us: int) -> Now:
        return Now(
            mono_ms=self.mono_us(sim_us) // 1000,
            wall_ms=EPOCH_MS
            + self.skew_ms
            + (self._raw_us(sim_us) - self._base_mono_us) // 1000
            + self._base_sim_us // 1000,
        )

    def sim_us_at(self, mono_ms: int, sim_now_us: int) -> int:
        """The earliest simulated time (>= sim_now_us) at which ``mono_ms`` has been reached."""
        target_us = mono_ms * 1000
        if target_us <= self.mono_us(sim_now_us):
            return sim_now_us
        stall = self._stall_until_us
        if stall is None:
            t = self._raw_sim_us_at(target_us - self._offset_us)
        else:
            t = max(stall, self._raw_sim_us_at(self._raw_us(stall) + target_us - self._frozen_us))
        return max(t, sim_now_us)

    def _settle(self, sim_us: int) -> None:
        """Fold a stall that has ended by ``sim_us`` into the offset (before the raw clock is
        rebased, which would move the reading its end is measured from)."""
        stall = self._stall_until_us
        if stall is not None and sim_us >= stall:
            self._offset_us = self._frozen_us - self._raw_us(stall)
            self._stall_until_us = None

    def set_drift(self, sim_us: int, drift_ppm: int) -> None:
        """Change the rate from ``sim_us`` on; monotonic time stays continuous."""
        if not -PPM // 2 < drift_ppm < PPM // 2:
            raise ValueError(f"drift_ppm {drift_ppm} is out of range")
        self._settle(sim_us)
        wall_before = self.now(sim_us).wall_ms
        self._base_mono_us = self._raw_us(sim_us)
        self._base_sim_us = sim_us
        self.drift_ppm = drift_ppm
        self.skew_ms += wall_before - self.now(sim_us).wall_ms

    def jump_wall(self, delta_ms: int) -> None:
        """Step the wall clock (as NTP might); monotonic time is unaffected."""
        self.skew_ms += delta_ms

    def stall_mono(self, sim_us: int, duration_ms: int) -> None:
        """The monotonic clock stands still from ``sim_us`` for ``duration_ms`` of simulated
        time, then runs on without catching up."""
        if duration_ms <= 0:
            raise ValueError(f"a stall of {duration_ms} ms")
        self._settle(sim_us)
        end = sim_us + duration_ms * 1000
        if self._stall_until_us is not None:
            self._stall_until_us = max(self._stall_until_us, end)
            return
        self._frozen_us = self.mono_us(sim_us)
        self._stall_until_us = end

    def stalling(self, sim_us: int) -> bool:
        """Whether the monotonic clock stands still at ``sim_us``."""
        return self._stall_until_us is not None and sim_us < self._stall_until_us

    def end_stall(self, sim_us: int) -> bool:
        """End a stall in progress at ``sim_us``: the clock runs on from where it stood (never
        stepped back, nor forward to catch up). Whether there was one."""
        if not self.stalling(sim_us):
            return False
        self._stall_until_us = sim_us
        self._settle(sim_us)
        return True

    def jump_mono(self, sim_us: int, delta_ms: int) -> None:
        """Step the monotonic clock ``delta_ms`` forward at ``sim_us`` (never back)."""
        if delta_ms <= 0:
            raise ValueError(f"a monotonic jump of {delta_ms} ms")
        self._settle(sim_us)
        if self._stall_until_us is not None:
            self._frozen_us += delta_ms * 1000
        else:
            self._offset_us += delta_ms * 1000
