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


def timed_application(argv=(), threshold_s: float = 0.004):
    """A ``QApplication`` that records every Qt event whose delivery takes longer than
    ``threshold_s``: ``app.records`` holds ``(start, seconds, depth, event type, receiver
    class, receiver object name)`` (``depth`` 0: an event the loop itself delivered, more: one
    sent while another was being handled). Create it before napari creates its own
    application. Each event then goes through Python, so timings are slower than without it:
    for finding what fills a gap (:meth:`EventLoopMeter.worst`), not for measuring it."""
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    class TimedApplication(QApplication):
        def __init__(self, args):
            super().__init__(list(args) or ["radiogen"])
            self.records: List[Tuple[float, float, int, str, str, str]] = []
            self._depth = 0

        def notify(self, receiver, event):
            # what the record names, read before the delivery: the event and its receiver
            # may be deleted by it (a single-shot timer's receiver is)
            cls = type(receiver).__name__
            try:
                name, kind = receiver.objectName(), int(event.type())
            except (AttributeError, RuntimeError):
                name, kind = "", -1
            self._depth += 1
            t = time.perf_counter()
            try:
                return super().notify(receiver, event)
            finally:
                dt = time.perf_counter() - t
                self._depth -= 1
                if dt > threshold_s:
                    try:
                        kind_name = QEvent.Type(kind).name
                    except (ValueError, TypeError):
                        kind_name = str(kind)
                    self.records.append((t, dt, self._depth, str(kind_name), cls, str(name)))

    return TimedApplication(argv)


def events_between(records, start: float, end: float) -> List[str]:
    """The recorded events (:func:`timed_application`) that started between ``start`` and
    ``end``, one line each: offset and duration in ms, depth, event type, receiver."""
    return [f"+{1000 * (t - start):6.1f} ms {1000 * dt:6.1f} ms depth {d} {kind} {cls}"
            + (f" '{name}'" if name else "")
            for t, dt, d, kind, cls, name in records if start - 0.001 <= t <= end]
