"""The warnings raised in the current thread, recorded (for report notes) or dropped, without
touching what other threads see.

``warnings.catch_warnings`` is no tool for code that runs in a worker thread: it swaps
process-wide state (the filter list and ``warnings.showwarning``), so in napari a report or a
survival fit in a worker would swallow the main thread's warnings into its notes, and its
``simplefilter(...)`` would apply to every thread while it runs. Here instead:

* a handler is chained in front of ``warnings.showwarning`` while any collection is open (and
  put back in front if other code swapped it meanwhile: pytest, a library's
  ``catch_warnings``): a warning raised in a thread with an open collection goes to that
  thread's innermost collection; any other warning is passed on, unchanged, to the handler it
  replaced;
* the filters are never changed: what a collection sees is what the process's filters let
  through (an ignored category, e.g. ``DeprecationWarning`` outside ``__main__``, is not
  recorded). So that each collection sees the first occurrence of a warning again (the
  ``"default"`` action shows one per code location), opening one resets the "already shown"
  registries, as any ``catch_warnings`` does (:func:`ignore_warnings` does not); another
  thread may then print a warning it had printed before once more.

Limitation: while another thread holds its own ``catch_warnings(record=True)`` (which resets
``showwarning`` to the original for its duration), this thread's warnings go to that record.
"""
from __future__ import annotations

import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple, Type

_local = threading.local()
_lock = threading.Lock()
_open = 0                                   # collections open in any thread
_prev: Optional[Callable[..., Any]] = None  # the handler ours passes other warnings on to


class _Collection:
    def __init__(self, category: Type[Warning]):
        self.category = category
        self.caught: List[warnings.WarningMessage] = []


def _stack() -> List[_Collection]:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def _fallback(msg: warnings.WarningMessage) -> None:
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    if impl is not None:
        impl(msg)
    else:  # pragma: no cover - another Python
        try:
            sys.stderr.write(warnings.formatwarning(msg.message, msg.category, msg.filename,
                                                    msg.lineno, msg.line))
        except Exception:
            pass


def _show(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` while collections are open (see the module docstring)."""
    for c in reversed(getattr(_local, "stack", None) or ()):
        if issubclass(category, c.category):
            c.caught.append(warnings.WarningMessage(message, category, filename, lineno,
                                                    file, line))
            return
    prev = _prev
    if prev is None or prev is _show or getattr(_local, "forwarding", False):
        # nothing to pass it on to, or a handler that calls ours again: shown as Python would
        _fallback(warnings.WarningMessage(message, category, filename, lineno, file, line))
        return
    _local.forwarding = True
    try:
        prev(message, category, filename, lineno, file, line)
    finally:
        _local.forwarding = False


def _install(reset_registries: bool) -> None:
    global _prev, _open
    with _lock:
        if warnings.showwarning is not _show:
            _prev = warnings.showwarning
            warnings.showwarning = _show
        _open += 1
        reset = getattr(warnings, "_filters_mutated", None) if reset_registries else None
        if reset is not None:          # "already shown" registries start again (not filters)
            try:
                reset()
            except Exception:  # pragma: no cover - another Python
                pass


def _uninstall() -> None:
    global _open
    with _lock:
        _open = max(0, _open - 1)
        if _open == 0 and warnings.showwarning is _show and _prev is not None:
            warnings.showwarning = _prev


@contextmanager
def collect_warnings(category: Type[Warning] = Warning, *, _reset: bool = True
                     ) -> Iterator[List[warnings.WarningMessage]]:
    """Record the warnings of ``category`` raised in this thread inside the block (the list
    fills as they come; ``warnings.WarningMessage`` items). Warnings of other threads, and this
    thread's of other categories, go where they would have gone without it (an outer
    collection of this thread first). The process's filters decide what is raised at all."""
    col = _Collection(category)
    stack = _stack()
    _install(_reset)
    stack.append(col)
    try:
        yield col.caught
    finally:
        try:
            stack.remove(col)
        except ValueError:  # pragma: no cover - defensive
            pass
        _uninstall()


@contextmanager
def ignore_warnings(category: Type[Warning] = Warning) -> Iterator[None]:
    """Drop the warnings of ``category`` raised in this thread inside the block (only this
    thread's: unlike ``catch_warnings`` + ``simplefilter("ignore")``)."""
    with collect_warnings(category, _reset=False):
        yield


def warning_texts(caught, prefix: str = "") -> List[str]:
    """``"<prefix>Category: message"`` per distinct warning, in order (white space folded)."""
    out: List[str] = []
    for w in caught:
        t = f"{prefix}{w.category.__name__}: {' '.join(str(w.message).split())}"
        if t not in out:
            out.append(t)
    return out


__all__: Tuple[str, ...] = ("collect_warnings", "ignore_warnings", "warning_texts")
