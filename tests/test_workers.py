"""The worker bridge: results, progress, cancel, errors, and a main thread that keeps running."""
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
