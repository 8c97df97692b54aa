"""A script that leaves Python while a job runs (``sys.exit``, an uncaught exception), without
closing the viewer, exits cleanly: the running jobs are cancelled and their threads waited for
before the interpreter shuts down. Run in a fresh process (the test session's QApplication
and jobs must not be involved)."""
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import sys, time
from qtpy.QtWidgets import QApplication
app = QApplication(["t"])
from napari_radiogen.core.progress import Progress
from napari_radiogen.napari.workers import start_job

def job(tok):
    try:
        i = 0
        while True:
            time.sleep(0.01)
            i += 1
            yield Progress("work", i, 0, "")
    finally:
        # the job's clean-up loads h5py (as a reader or writer may, the first time): h5py's
        # own exit handler is then registered while the interpreter is already exiting, and
        # HDF5 must not be left with its Python callbacks once the interpreter is gone
        import h5py
        import numpy as np
        with h5py.File("mem.h5", "w", driver="core", backing_store=False) as f:
            f.create_dataset("s", data=np.array(["text"], dtype=object),
                             dtype=h5py.string_dtype())
            f["s"][...].tolist()

started = []
j = start_job(job, name="job", progress_bar=False, notify=False, uses_torch=False,
              on_progress=lambda p: started.append(p))
t = time.monotonic()
while time.monotonic() - t < 20 and len(started) < 5:
    app.processEvents()
    time.sleep(0.01)
print("running" if started and not j.done else "not running", flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("a script error")
sys.exit(0)
"""


@pytest.mark.parametrize("how, code", [("exit", 0), ("raise", 1)])
def test_leaving_python_while_a_job_runs_exits_cleanly(how, code):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, how], capture_output=True,
                         text=True, env=env, timeout=180)
    assert out.stdout.strip().splitlines()[-1] == "running", out.stdout + out.stderr[-2000:]
    # 134 (abort: a worker signalling deleted Qt objects) or 139 (segfault) before the fix
    assert out.returncode == code, out.stderr[-3000:]
    assert "has been deleted" not in out.stderr, out.stderr[-3000:]
    if how == "exit":
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
