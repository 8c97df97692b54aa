"""The worker bridge: results, progress, cancel, errors, and a main thread that keeps running."""
import os
import time

import pytest

from napari_radiogen.core.errors import CaseLoadError
from napari_radiogen.core.progress import Progress, check


def _steps(token, n=50, dt=0.01, fail_at=None, exc=None):
    for i in range(n):
        check(token)
        time.sleep(dt)
        if fail_at is not None and i == fail_at:
            raise exc
        yield Progress("work", i + 1, n)
    yield {"answer": 42}


def test_job_delivers_result_progress_and_keeps_loop_free(qtbot):
    from napari_radiogen.napari.diagnostics import EventLoopMeter
    from napari_radiogen.napari.workers import start_job

    results, progress = [], []
    meter = EventLoopMeter().start()
    t0 = time.monotonic()
    job = start_job(lambda tok: _steps(tok, n=100, dt=0.02), name="demo",
                    on_result=results.append, on_progress=progress.append, progress_bar=True)
    qtbot.waitUntil(lambda: job.done, timeout=20000)
    elapsed = time.monotonic() - t0
    worst = meter.stop()
    assert results == [{"answer": 42}]
    assert progress and progress[-1].done == 100         # final progress always delivered
    assert len(progress) < 100                           # throttled
    # the job runs beside the loop, which keeps ticking (a job run in the main thread would
    # leave one gap as long as the job)
    assert len(meter.gaps) >= 20 and worst < 0.5 * elapsed, f"loop stalled {worst:.3f}s"


def test_cancel_stops_job_and_skips_result(qtbot):
    from napari_radiogen.napari.workers import start_job

    results, errors = [], []
    job = start_job(lambda tok: _steps(tok, n=500, dt=0.01), name="long",
                    on_result=results.append, on_error=errors.append, notify=False)
    qtbot.wait(100)
    t0 = time.monotonic()
    job.cancel()
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert time.monotonic() - t0 < 2.0
    assert job.cancelled and results == []


@pytest.mark.parametrize("exc", [CaseLoadError("bad file x.nii.gz"), ValueError("boom")])
def test_errors_are_reported_not_raised(qtbot, exc):
    from napari_radiogen.napari.workers import start_job

    errors, results = [], []
    job = start_job(lambda tok: _steps(tok, n=10, fail_at=3, exc=exc), name="failing",
                    on_result=results.append, on_error=errors.append, notify=False)
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert errors and errors[0] is exc and results == []
    assert job.error is exc


def _burst_then_compute(token):
    yield Progress("work", 1, 10, "loading")
    yield Progress("work", 2, 10, "preparing")     # right after: held back by the throttle
    for _ in range(40):                             # then a long step with no progress
        check(token)
        time.sleep(0.01)
    yield {"answer": 42}


def test_throttled_progress_is_shown_late_not_lost(qtbot):
    """A step that reports "preparing" right after "loading" and then computes for a while
    must show "preparing" while it computes (the throttle delays it, it does not drop it)."""
    from napari_radiogen.napari.workers import start_job

    seen = []
    job = start_job(_burst_then_compute, name="burst", progress_bar=False,
                    on_progress=lambda p: seen.append((p.message, job.done)))
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert [m for m, _ in seen] == ["loading", "preparing"]
    assert not seen[-1][1], "the held-back update arrived only after the job ended"


def test_throttled_progress_does_not_outlive_the_job(qtbot):
    """An update still held back when the job ends is dropped, not shown afterwards."""
    from napari_radiogen.napari.workers import start_job

    def quick(token):
        yield Progress("work", 1, 10, "a")
        yield Progress("work", 2, 10, "b")
        yield "result"

    seen = []
    job = start_job(quick, name="quick", progress_bar=False,
                    on_progress=lambda p: seen.append(p.message))
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    n = len(seen)
    qtbot.wait(200)
    assert len(seen) == n and seen[0] == "a"


def test_a_job_that_ends_while_its_progress_bar_is_made_shows_nothing_after(qtbot,
                                                                          monkeypatch):
    """napari's progress bar processes Qt events while it is made: a job that fails right
    away ends in there. Its bar is closed all the same and no progress reaches the widget
    after the job's end (a stuck 0 % bar and a status line overwritten by a late update)."""
    from qtpy.QtWidgets import QApplication

    import napari_radiogen.napari.workers as workers
    bars = []

    class Bar:
        total, n = 1, 0

        def __init__(self, total, desc):
            for _ in range(50):                      # the job ends meanwhile
                QApplication.processEvents()
                time.sleep(0.005)
            self.closed = False
            bars.append(self)

        def set_description(self, d):
            pass

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(workers, "napari_progress", Bar)

    def fail_at_once(token):
        yield Progress("segment", 0, 4, "loading the model")
        raise CaseLoadError("missing sequence(s): t1ce")

    events = []
    job = workers.start_job(fail_at_once, name="failing", notify=False,
                            on_progress=lambda p: events.append("progress"),
                            on_error=lambda e: events.append("error"),
                            on_finished=lambda j: events.append("finished"))
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    qtbot.wait(100)
    assert bars and all(b.closed for b in bars)
    assert events[-1] == "finished" and "progress" not in events[events.index("finished"):]


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_openmp_threads_wait_passively_unless_the_user_chose(preset):
    """torch's OpenMP threads must not busy-wait beside the GUI (it slowed the analysis in a
    worker thread many times over on a busy machine): importing the worker bridge before torch
    selects passive waiting, and leaves a user's own setting alone."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = ("import os, sys; import napari_radiogen.napari.workers as w; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == (preset or "PASSIVE")


def _threads_seen(token, seen):
    import torch
    seen.append(torch.get_num_threads())
    yield "ok"


def test_model_jobs_leave_a_core_to_the_viewer_and_training_keeps_all(qtbot, monkeypatch):
    """An inference job runs torch on one thread fewer than the CPUs (the other draws the
    viewer), a training job (leave_core=False) on torch's own count; neither changes the
    count that the main thread and later threads start from."""
    import os

    import torch

    from napari_radiogen.napari import workers

    monkeypatch.delenv("RADIOGEN_VIEWER_THREADS", raising=False)
    default = workers.torch_default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(default)              # the count the jobs must leave as they found
    cpus = len(os.sched_getaffinity(0))
    assert workers.viewer_threads() == max(1, min(default, cpus - 1))
    for leave_core, want in ((True, workers.viewer_threads()), (False, default),
                             (True, workers.viewer_threads())):
        seen = []
        job = workers.start_job(lambda tok: _threads_seen(tok, seen), name="t",
                                progress_bar=False, leave_core=leave_core)
        qtbot.waitUntil(lambda: job.done, timeout=10000)
        assert job.error is None and seen == [want]
    assert torch.get_num_threads() == default
    monkeypatch.setenv("RADIOGEN_VIEWER_THREADS", "3")
    assert workers.viewer_threads() == 3
    seen = []
    job = workers.start_job(lambda tok: _threads_seen(tok, seen), name="t", progress_bar=False)
    qtbot.waitUntil(lambda: job.done, timeout=10000)
    assert seen == [3]
    monkeypatch.setenv("RADIOGEN_VIEWER_THREADS", "many")
    assert workers.viewer_threads() == max(1, min(default, cpus - 1))   # ignored, with a warning
    torch.set_num_threads(before)


def test_closing_the_dock_panel_cancels_its_job(make_napari_viewer, qtbot):
    """napari's panel "x" (Window.remove_dock_widget) takes the widget out of its dock without
    destroying it: its job is cancelled all the same. A widget never docked (a script's) keeps
    its job running, and a job of a closed panel that had ended is left as it was."""
    from qtpy.QtWidgets import QWidget
    from napari_radiogen.napari.workers import start_job

    viewer = make_napari_viewer()
    panel = QWidget()
    viewer.window.add_dock_widget(panel, name="panel")
    finished = []
    job = start_job(lambda tok: _steps(tok, n=2000, dt=0.01), name="panel job", owner=panel,
                    on_finished=finished.append, notify=False)
    qtbot.wait(50)
    assert not job.done
    viewer.window.remove_dock_widget(panel)
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert job.cancelled and finished == [job]

    loose = QWidget()
    results = []
    job2 = start_job(lambda tok: _steps(tok, n=30, dt=0.01), name="loose job", owner=loose,
                     on_result=results.append, notify=False)
    qtbot.waitUntil(lambda: job2.done, timeout=5000)
    assert not job2.cancelled and results == [{"answer": 42}]

    # a job that ended before its panel closed
    panel2 = QWidget()
    viewer.window.add_dock_widget(panel2, name="panel2")
    job3 = start_job(lambda tok: _steps(tok, n=3, dt=0.001), name="short", owner=panel2,
                     notify=False)
    qtbot.waitUntil(lambda: job3.done, timeout=5000)
    viewer.window.remove_dock_widget(panel2)
    assert not job3.cancelled and job3.result == {"answer": 42}


def test_a_job_does_not_load_torch_in_the_main_thread(tmp_path):
    """In a process that has not loaded torch (the Survival widget's), starting a job must not
    load it in the Qt main thread (seconds, the first time): the worker loads it, and a job
    that says it uses no models does not load it at all."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import sys, threading
        class Spy:
            where = None
            def find_spec(self, name, path=None, target=None):
                if name == "torch" and Spy.where is None:
                    Spy.where = threading.current_thread().name
                return None
        sys.meta_path.insert(0, Spy())
        from qtpy.QtWidgets import QApplication
        app = QApplication([])
        from napari_radiogen.napari.workers import start_job
        assert "torch" not in sys.modules, "torch loaded on import"
        def gen(tok):
            yield 41 + 1
        job = start_job(gen, name="t", progress_bar=False, notify=False, uses_torch=False)
        assert job.wait(60) and job.result == 42
        assert "torch" not in sys.modules, "a job without models loaded torch"
        job = start_job(gen, name="t", progress_bar=False, notify=False)
        assert job.wait(60) and job.result == 42
        print("torch loaded in:", Spy.where)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr[-2000:]
    where = r.stdout.strip().splitlines()[-1]
    assert where.startswith("torch loaded in:") and "MainThread" not in where, where


def test_a_gpu_fallback_in_a_result_is_notified_once(qtbot, monkeypatch):
    """A result whose warnings (its own, or those of the result it wraps) report a GPU
    out-of-memory fallback is a napari warning notification, once per job; other warnings
    are not notified."""
    from types import SimpleNamespace
    import napari_radiogen.napari.workers as W
    from napari_radiogen.core.models import oom_note

    told = []
    monkeypatch.setattr(W, "show_warning", told.append)
    note = oom_note("this case was segmented")

    def gen(token):
        yield SimpleNamespace(warnings=["a synthetic input", note])
        yield Progress("work", 1, 2, "more")
        # a stage result wrapping a result, and the same note again
        yield SimpleNamespace(value=SimpleNamespace(warnings=[note]))
        yield SimpleNamespace(result=SimpleNamespace(warnings=[oom_note("t2 was synthesised")]))

    job = W.start_job(gen, name="analyse", progress_bar=False)
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert told == [f"analyse: {note}", f"analyse: {oom_note('t2 was synthesised')}"]
    told.clear()
    job = W.start_job(gen, name="quiet", progress_bar=False, notify=False)
    qtbot.waitUntil(lambda: job.done, timeout=5000)
    assert told == []
