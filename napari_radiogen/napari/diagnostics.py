"""Responsiveness measurement: sample the Qt event loop with a timer.

Used by ``scripts/bench_viewer.py`` (the speed numbers) and by the widget tests (behaviour:
the loop keeps ticking while a job runs)."""
from __future__ import annotations

import time
from typing import List, Sequence, Tuple


class EventLoopMeter:
    """Ticks every ``interval_ms`` in the Qt main thread and records each gap between ticks
    as (gap seconds, start, end) in ``time.perf_counter`` time."""

    def __init__(self, interval_ms: int = 10):
        from qtpy.QtCore import QTimer
        self.interval_ms = interval_ms
        self.gaps: List[Tuple[float, float, float]] = []
        self.last = None
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append((now - self.last, self.last, now))
        self.last = now

    def start(self) -> "EventLoopMeter":
        self.gaps, self.last = [], time.perf_counter()
        self.timer.start(self.interval_ms)
        return self

    def stop(self) -> float:
        """Stop sampling; the longest gap (s)."""
        self.timer.stop()
        return self.worst()

    def worst(self) -> float:
        return max((g for g, _, _ in self.gaps), default=0.0)

    def worst_outside(self, spans: Sequence[Tuple[float, float]]) -> float:
        """Longest gap that does not overlap any of ``spans`` [(start, end)]."""
        free = [g for g, a, b in self.gaps if not any(a < e and s < b for s, e in spans)]
        return max(free, default=0.0)

    def describe(self, t0: float) -> str:
        if not self.gaps:
            return "no ticks"
        g, _, end = max(self.gaps)
        return f"{g:.3f} s ending {end - t0:.2f} s after the start"
