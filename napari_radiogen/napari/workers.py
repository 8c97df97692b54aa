"""The ONE place that runs core generators in napari workers.

A core step is a generator that yields :class:`~napari_radiogen.core.progress.Progress` items
while it works and result objects when it has them (the last one is *the* result). Widgets call
:func:`start_job` with a factory taking a :class:`CancelToken`; this module

* runs the generator on a background thread (``napari.qt.threading.create_worker``),
* shows a ``napari.utils.progress`` bar named after the job and its current stage,
* delivers progress (throttled to one update per ``PROGRESS_INTERVAL``, so the Qt main thread
  never drowns in updates; stage changes and the final step always pass, and the newest
  held-back update follows when the interval is over, so the shown step is never stale) and
  every non-progress item to the widget's callbacks in the main thread,
* turns :class:`RadiogenError` into an error notification, :class:`Cancelled` into an info
  notification, anything else into an error notification with the exception type,
* cancels cooperatively (token + ``worker.quit()``), and ends every running job cleanly when
  its owner widget is destroyed, the application quits or the interpreter exits (a script's
  ``sys.exit`` with the viewer open).
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Iterator, List, Optional

from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.allocator import tune_allocator
from ..core.errors import Cancelled, RadiogenError
from ..core.progress import CancelToken, Progress

log = logging.getLogger(__name__)

#: minimum seconds between two progress callbacks of one job (stage changes always pass)
PROGRESS_INTERVAL = 0.05

# -- OpenMP threads beside a GUI -----------------------------------------------------------------
# torch's CPU kernels run on an OpenMP (libgomp) thread team per calling thread. When the first
# team is the worker thread's, libgomp lets its threads busy-wait between parallel regions
# (their number does not exceed the CPUs), and beside the Qt main thread, the OpenGL renderer
# and any other process those spinning threads take the CPUs the job itself needs: the sample
# case's analysis in a worker thread took a median 6.3 s (4-12 s) instead of 1.8 s with one
# other busy process on 2 cores (scripts/bench_threads.py --busy; idle, passive waiting costs
# about 10 %). Passive waiting fixes it;
# libgomp reads the setting once, when torch loads it, which in napari happens after this
# module is imported (a setting the user made wins).
_OMP_PRIMED = ("OMP_WAIT_POLICY" in os.environ      # the user chose: leave it alone
               or "torch" not in sys.modules)       # in time: passive waiting takes effect
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# -- freed memory reused, as in the radiogen command (core/allocator.py) --------------------------
tune_allocator()


def prime_openmp() -> None:
    """If torch was imported before ``OMP_WAIT_POLICY`` could take effect (another plugin, a
    script), run one parallel torch op in the main thread: with a main-thread team as well as
    the worker's, libgomp counts more threads than CPUs and throttles the busy-waiting (the
    10x loss under load closes as with passive waiting; on an idle machine the sample case took
    1.95-2.0 s this way, 1.7-2.0 s with passive waiting). Cheap (a millisecond), once per
    process; call from the main thread."""
    global _OMP_PRIMED
    if _OMP_PRIMED:
        return
    _OMP_PRIMED = True
    try:
        import torch
        if torch.get_num_threads() > 1:
            torch.zeros(1 << 18).add_(1.0)
    except Exception:  # pragma: no cover - an optimisation only
        log.debug("could not prime the OpenMP threads", exc_info=True)


# -- one core for the viewer ----------------------------------------------------------------------
# A model job started from the viewer runs its torch kernels on one thread fewer than the CPUs
# (never fewer than one, never more than torch's own default): the remaining core draws the
# canvas and builds layers, so the job is not slowed by the viewer nor the viewer by the job.
# On 2 cores this is also faster outright: the models' many small kernels lose more to waking a
# passive second OpenMP thread than they gain from it (``scripts/bench_threads.py`` times the
# settings; figures in the README). ``RADIOGEN_VIEWER_THREADS`` overrides the count.
_TORCH_DEFAULT_THREADS: Optional[int] = None


def viewer_threads() -> int:
    """Intra-op threads for a model job started from the viewer (see above)."""
    env = os.environ.get("RADIOGEN_VIEWER_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("RADIOGEN_VIEWER_THREADS=%r is not a number: ignored", env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(torch_default_threads(), cpus - 1))


def torch_default_threads() -> int:
    """torch's intra-op thread count as the process started (read once, before any job)."""
    global _TORCH_DEFAULT_THREADS
    if _TORCH_DEFAULT_THREADS is None:
        import torch
        _TORCH_DEFAULT_THREADS = torch.get_num_threads()
    return _TORCH_DEFAULT_THREADS


_ACTIVE: "weakref.WeakSet[Job]" = weakref.WeakSet()
_KEEP: List["Job"] = []          # strong refs while running


class Job:
    """A running core generator. ``cancel()`` is safe from the main thread at any time."""

    def __init__(self, name: str, token: CancelToken):
        self.name = name
        self.token = token
        self.worker = None
        self.done = False
        self.cancelled = False
        self.error: Optional[BaseException] = None
        self.result: Any = None
        self.started_at = time.monotonic()
        self.finished_at: Optional[float] = None
        self._pbar = None
        self._last_progress = 0.0
        self._last_stage: Optional[str] = None
        self._pending: Optional[Progress] = None   # newest progress held back by the throttle
        self._flush_timer = None
        self._told: set = set()       # out-of-memory fallbacks already notified
        self.orphaned = False          # the owner widget is gone: its callbacks are dropped

    # -- control ------------------------------------------------------------------------------
    def cancel(self) -> None:
        if self.done:
            return
        self.cancelled = True
        self.token.cancel()
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:  # the C++ object is gone already
                pass

    def wait(self, timeout: float = 30.0) -> bool:
        """Block (processing Qt events) until the job has finished; True if it did."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while not self.done and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self.done

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    # -- progress bar -------------------------------------------------------------------------
    def _update_bar(self, p: Progress) -> None:
        try:
            if self._pbar is None:
                self._pbar = napari_progress(total=max(p.total, 1), desc=self.name)
            if p.total and self._pbar.total != p.total:
                self._pbar.total = p.total
            self._pbar.n = min(p.done, p.total) if p.total else 0
            desc = f"{self.name}: {p.stage}" + (f" ({p.message})" if p.message else "")
            self._pbar.set_description(desc[:120])
            self._pbar.refresh()
        except Exception:  # the progress bar is cosmetic: never let it break a job
            log.debug("progress bar update failed", exc_info=True)

    def _close_bar(self) -> None:
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:
                pass
            self._pbar = None


def fallback_notes(item: Any) -> List[str]:
    """The GPU out-of-memory fallbacks (:func:`core.models.oom_note`) among the warnings of a
    job's result: its own, and those of the result it wraps (``result``: a prepared layer's;
    ``value``: a pipeline stage's)."""
    from ..core.models import OOM_NOTE_START
    found: List[str] = []
    for obj in (item, getattr(item, "result", None), getattr(item, "value", None)):
        for w in getattr(obj, "warnings", None) or []:
            if str(w).startswith(OOM_NOTE_START) and str(w) not in found:
                found.append(str(w))
    return found


def start_job(gen_factory: Callable[[CancelToken], Iterator[Any]], *, name: str,
              on_result: Optional[Callable[[Any], None]] = None,
              on_progress: Optional[Callable[[Progress], None]] = None,
              on_yield: Optional[Callable[[Any], None]] = None,
              on_error: Optional[Callable[[BaseException], None]] = None,
              on_finished: Optional[Callable[["Job"], None]] = None,
              viewer: Any = None, owner: Any = None, progress_bar: bool = True,
              notify: bool = True, progress_interval: Optional[float] = None,
              coalesce_stages: bool = False, leave_core: bool = True,
              uses_torch: bool = True) -> Job:
    """Run ``gen_factory(token)`` on a worker thread; callbacks run in the main thread.

    ``on_yield`` receives every non-Progress item as it arrives (e.g. a pipeline stage's
    result, so layers can appear stage by stage); ``on_result`` receives the last one when the
    job ends successfully. ``owner`` (a QObject, usually the widget) cancels the job when it is
    destroyed. ``viewer`` is accepted for symmetry and kept only as a weak reference.
    ``progress_interval`` (seconds, default :data:`PROGRESS_INTERVAL`) is the least time
    between two progress updates within a stage: every update repaints widgets, which under a
    software OpenGL canvas costs milliseconds of CPU taken from the job.
    ``coalesce_stages``: a stage change waits for the interval too (by default it is shown at
    once), for docks whose every update repaints much; the newest update is still never lost.
    ``leave_core``: run torch on :func:`viewer_threads` threads in the worker (model inference);
    False keeps torch's own thread count (training, where throughput comes first).
    ``uses_torch=False``: a job without models (a survival fit, a table) does not load torch
    to set its thread count (seconds, the first time in a process).
    ``notify``: an error, a cancel and a GPU out-of-memory fallback that a result's warnings
    report (:func:`fallback_notes`) are napari notifications.
    """
    interval = PROGRESS_INTERVAL if progress_interval is None else float(progress_interval)
    if "torch" in sys.modules:
        # torch loaded before passive waiting could take effect: see prime_openmp. A job of
        # a process that has not loaded torch (a survival table) does not load it here, in
        # the main thread (seconds, the first time): its worker does, if the job needs it
        prime_openmp()
    token = CancelToken()
    job = Job(name, token)

    def _guard(cb):
        # a widget deleted mid-run must not receive callbacks (its Qt objects are gone)
        if cb is None:
            return None

        def call(*a):
            if not job.orphaned:
                cb(*a)
        return call

    on_result, on_progress, on_yield, on_error, on_finished = (
        _guard(on_result), _guard(on_progress), _guard(on_yield), _guard(on_error),
        _guard(on_finished))
    job._viewer = weakref.ref(viewer) if viewer is not None else None  # type: ignore[attr-defined]

    def _work():
        # set on every job: the count is per thread (OpenMP, MKL) and pool threads are reused;
        # torch also keeps it as the default of threads that start later, restored below. A job
        # without models (uses_torch=False) does not load torch for that, unless it is loaded
        torch = None
        if uses_torch or "torch" in sys.modules:
            import torch
            torch.set_num_threads(viewer_threads() if leave_core else torch_default_threads())
        gen = gen_factory(token)
        last = None
        try:
            for item in gen:
                if token.cancelled:
                    raise Cancelled("cancelled by the user")
                yield item
                if not isinstance(item, Progress):
                    last = item
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
            if torch is not None:
                torch.set_num_threads(torch_default_threads())
        return last

    def _deliver_progress(item: Progress) -> None:
        if job.done:
            return                    # nothing of a job is shown after its end
        job._last_progress = time.monotonic()
        job._last_stage = item.stage
        job._pending = None
        if progress_bar:
            job._update_bar(item)
            if job.done:
                # creating napari's progress bar processes Qt events, in which the job can
                # end (error, finished) before the bar was stored: close it now, show no more
                job._close_bar()
                return
        if on_progress is not None:
            on_progress(item)

    def _flush_progress() -> None:
        item = job._pending
        if item is not None and not job.done:
            _deliver_progress(item)

    flush_timer = QTimer()
    flush_timer.setSingleShot(True)
    flush_timer.timeout.connect(_flush_progress)
    job._flush_timer = flush_timer

    def _yielded(item: Any) -> None:
        if isinstance(item, Progress):
            now = time.monotonic()
            stage_changed = item.stage != job._last_stage and not coalesce_stages
            final = bool(item.total) and item.done >= item.total
            waited = now - job._last_progress
            if not (stage_changed or final or waited >= interval):
                # held back, not lost: the newest one is shown when the interval is over
                # (a step that yields "preparing" and then computes for seconds shows it)
                job._pending = item
                if not flush_timer.isActive():
                    flush_timer.start(max(1, int(1000 * (interval - waited)) + 1))
                return
            _deliver_progress(item)
        else:
            job.result = item
            if notify:
                for w in fallback_notes(item):
                    if w not in job._told:          # the same words once per job
                        job._told.add(w)
                        show_warning(f"{name}: {w}")
            if on_yield is not None:
                on_yield(item)

    def _returned(value: Any) -> None:
        if value is not None:
            job.result = value
        if job.cancelled:
            return
        if on_result is not None:
            on_result(job.result)

    def _errored(exc: BaseException) -> None:
        job.error = exc
        if isinstance(exc, Cancelled):
            job.cancelled = True
            if notify:
                show_info(f"{name}: cancelled")
        elif isinstance(exc, RadiogenError):
            if notify:
                show_error(f"{name}: {exc}")
        else:
            log.error("%s failed:\n%s", name,
                      "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            if notify:
                show_error(f"{name} failed: {type(exc).__name__}: {exc}")
        if on_error is not None:
            on_error(exc)

    def _finished() -> None:
        job.done = True
        job.finished_at = time.monotonic()
        job._pending = None
        flush_timer.stop()
        job._close_bar()
        if job.cancelled and job.error is None and notify:
            show_info(f"{name}: cancelled")
        if job in _KEEP:
            _KEEP.remove(job)
        watch = getattr(job, "_owner_watch", None)
        if watch is not None:
            watch.remove()
        if on_finished is not None:
            on_finished(job)

    worker = create_worker(_work, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(_yielded)
    worker.returned.connect(_returned)
    worker.errored.connect(_errored)
    worker.finished.connect(_finished)
    job.worker = worker
    if owner is not None and hasattr(owner, "destroyed"):
        def _owner_gone(*_):
            job.orphaned = True
            job.cancel()
        owner.destroyed.connect(_owner_gone)
        # a dock panel closed with its "x": napari takes the widget out of its dock (parent
        # None) without destroying it (the job's callbacks keep it alive), so its job would go
        # on where nothing can cancel it any more
        job._owner_watch = _ClosedPanelWatch(job, owner)   # type: ignore[attr-defined]
    _ACTIVE.add(job)
    _KEEP.append(job)
    _connect_quit()
    worker.start()
    return job


class _ClosedPanelWatch:
    """Cancels ``job`` when ``owner`` (a widget) leaves its parent: the dock panel it was in was
    closed. A widget that never had a parent (a test's, a script's) is not watched for that."""

    def __init__(self, job: "Job", owner: Any):
        from qtpy.QtCore import QEvent, QObject

        class _Filter(QObject):
            def eventFilter(self, obj, event):      # noqa: N802 (Qt's name)
                if event.type() == QEvent.Type.ParentChange and obj.parent() is None \
                        and not job.done:
                    job.cancel()
                return False

        self._filter: Any = _Filter()
        self._owner = owner
        try:
            owner.installEventFilter(self._filter)
        except (AttributeError, RuntimeError, TypeError):   # not a QObject, or deleted
            self._filter = self._owner = None

    def remove(self) -> None:
        """Uninstall the filter (the job ended)."""
        if self._filter is not None and self._owner is not None:
            try:
                self._owner.removeEventFilter(self._filter)
            except RuntimeError:                   # the owner's C++ object is gone
                pass
        self._filter = self._owner = None


def active_jobs() -> List[Job]:
    return [j for j in list(_ACTIVE) if not j.done]


def cancel_all(wait: float = 0.0) -> None:
    """Cancel every running job (used when the viewer or application closes)."""
    jobs = active_jobs()
    for j in jobs:
        j.cancel()
    if wait:
        for j in jobs:
            j.wait(wait)


_QUIT_CONNECTED = False


def _end_jobs_at_exit() -> None:
    """At interpreter exit (a script's ``sys.exit`` or an uncaught exception, the viewer left
    open): cancel the running jobs and wait for their threads, which would otherwise go on
    into the interpreter's shutdown and abort the process when they next signal Qt objects
    that are gone."""
    try:
        if active_jobs():
            cancel_all(wait=5.0)
            # a job is done when its last signal is handled; its pool thread may still be
            # unwinding Python frames, which must not meet the interpreter's finalisation
            from qtpy.QtCore import QThreadPool
            QThreadPool.globalInstance().waitForDone(5000)
    except Exception:  # pragma: no cover - nothing more can be done at exit
        pass


# before the interpreter's atexit handlers where Python offers it (as concurrent.futures
# does): h5py's, registered when a job first imports it and so run before one registered here,
# unhooks HDF5's Python callbacks, and a job still reading would hook them again for HDF5's own
# exit handler to call after the interpreter is gone (a segfault at exit)
getattr(threading, "_register_atexit", atexit.register)(_end_jobs_at_exit)


def _connect_quit() -> None:
    global _QUIT_CONNECTED
    if _QUIT_CONNECTED:
        return
    try:
        from qtpy.QtWidgets import QApplication
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(lambda: cancel_all(wait=5.0))
            _QUIT_CONNECTED = True
    except Exception:  # pragma: no cover
        pass
