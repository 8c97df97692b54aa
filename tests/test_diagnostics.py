"""The responsiveness diagnostics of scripts/bench_viewer.py: the Qt application that records
slow events (run in a fresh process: a test session's QApplication exists already)."""
import json
import os
import subprocess
import sys

_SCRIPT = r"""
import json, sys, time
from napari_radiogen.napari.diagnostics import EventLoopMeter, events_between, timed_application
from qtpy.QtCore import QEventLoop, QTimer
app = timed_application(["t"], threshold_s=0.01)
meter = EventLoopMeter(10).start()
QTimer.singleShot(50, lambda: time.sleep(0.06))      # a slot that holds the loop for 60 ms
loop = QEventLoop()
QTimer.singleShot(300, loop.quit)
loop.exec()
meter.stop()
g, a, b = max(meter.gaps)
print(json.dumps({"gap": g, "records": [list(r) for r in app.records],
                  "lines": events_between(app.records, a, b)}))
"""


def test_the_timed_application_names_the_event_that_filled_a_gap():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["gap"] >= 0.055
    slow = [r for r in res["records"] if r[1] >= 0.055]
    assert len(slow) == 1 and slow[0][3] == "Timer" and slow[0][2] == 0, res["records"]
    # the gap's events: the slow timer event, with its duration in ms
    assert len(res["lines"]) == 1 and "Timer" in res["lines"][0], res["lines"]
    assert float(res["lines"][0].split("ms")[1]) >= 55.0
