"""Progress reporting and cancellation shared by every long-running core step.

Core steps are generators: they ``yield Progress(...)`` while working and yield their result
object last. A consumer (CLI, widget worker, test, benchmark) drives them with :func:`run`,
or iterates them itself. Cancellation is cooperative: pass a :class:`CancelToken` and call
``token.cancel()`` from any thread; the step raises :class:`Cancelled` at its next check.
Closing the generator (``gen.close()``) also stops it cleanly.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from .errors import Cancelled


@dataclass
class Progress:
    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    time: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        return (self.done / self.total) if self.total else 0.0

    def __str__(self) -> str:
        pct = f" {100 * self.fraction:5.1f}%" if self.total else ""
        msg = f" {self.message}" if self.message else ""
        return f"[{self.stage}]{pct} ({self.done}/{self.total}){msg}"


class CancelToken:
    """Thread-safe cancel flag."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


#: set when the process was asked to stop (the ``radiogen`` command's Ctrl-C, see
#: :func:`interrupt`); :func:`check` and :func:`run` then raise KeyboardInterrupt
_INTERRUPTED = threading.Event()


def interrupt() -> None:
    """Ask every core step of the process to stop: for a SIGINT handler, beside raising
    KeyboardInterrupt itself. Python ignores an exception raised where it cannot propagate
    (a weakref callback, a ``__del__``: "Exception ignored in ..."), so a Ctrl-C landing there
    would be lost; the flag is not, and the step stops at its next :func:`check`."""
    _INTERRUPTED.set()


def interrupted() -> bool:
    return _INTERRUPTED.is_set()


def clear_interrupt() -> None:
    _INTERRUPTED.clear()


def check(token: Optional[CancelToken]) -> None:
    """Raise :class:`Cancelled` if ``token`` was cancelled (``None`` never cancels), and
    KeyboardInterrupt if the process was interrupted (:func:`interrupt`)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
    if token is not None:
        token.check()


def run(gen: Iterator[Any], on_progress: Optional[Callable[[Progress], None]] = None) -> Any:
    """Drive a core generator to the end; return the value it returns, else the last
    non-Progress item it yielded."""
    result = None
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value if stop.value is not None else result
        if _INTERRUPTED.is_set():
            gen.close()
            raise KeyboardInterrupt
        if isinstance(item, Progress):
            if on_progress is not None:
                on_progress(item)
        else:
            result = item
