"""Benchmark the Analyze widget inside napari: main-thread stalls and napari overhead.

Opens the bundled sample case in a napari viewer, runs the Analyze widget ``--runs`` times (the
first run adds the result layers, the reruns update them in place) with the installed default
models, and samples the Qt event loop with a 10 ms timer. The script waits for each job the way
the application does: in a running Qt event loop (``QEventLoop.exec`` until the job's
``finished`` signal), not by polling. The headless analysis (the same ``Analyzer``, models
loaded, in the viewer's main thread while the viewer waits) is interleaved with the reruns, and
so is the same analysis in a separate plain Python process started beforehand (no napari, no
Qt: what ``radiogen analyze`` runs; models loaded once), so all three see the same machine
load. Reports, per run:

- the worst event-loop gap outside result deliveries (target < 50 ms: the models run on a worker);
- the worst gap overall, and the longest delivery (napari building or updating a layer in the
  main thread);
- the CPU time of each of the process's threads during a rerun (by thread name, from /proc:
  the model job's worker, the Qt main thread, Mesa's render threads);
- the main thread's CPU time during the run, and the wall time; the median rerun against the
  median headless run, in the viewer's process and in the plain process (target: napari <=
  1.1x headless).

With ``--events`` each run also lists the Qt events that filled its worst gap (each event
that took over 4 ms: when, how long, its type and receiver; ``diagnostics.timed_application``).
Every event then goes through Python, which slows the viewer: use it to find what fills a gap,
not for the table's figures.

Speed is measured here, not in the test suite (the suite checks behaviour only). Run it under a
display, e.g. ``xvfb-run -a python scripts/bench_viewer.py [--json] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time


_HEADLESS = """
import os, sys, time
# the answers go to the real stdout; anything a library prints goes to stderr (the parent
# ignores lines that are no answer anyway)
_answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
from napari_radiogen.core.allocator import tune_allocator
tune_allocator()                                       # as the radiogen command does
from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
from napari_radiogen.core.progress import run
from napari_radiogen.core.io import load_case
from napari_radiogen.core.sample import sample_case_path
case = load_case(sample_case_path())
an = Analyzer(AnalysisOptions(device=sys.argv[1]))
run(an.analyze(case))                                  # models loaded, as in the reruns
print("ready", file=_answers, flush=True)
for line in sys.stdin:                                 # one timed analysis per request
    t = time.perf_counter(); run(an.analyze(case))
    print(time.perf_counter() - t, file=_answers, flush=True)
"""
#: how long the plain process may take to load its models, and to answer one analysis
HEADLESS_TIMEOUT_S = 600.0


class HeadlessProcess:
    """The analysis in a plain Python process (no napari, no Qt: what ``radiogen analyze``
    runs, less start-up and file output), models loaded once; :meth:`time_one` runs one
    analysis on request, so that its runs interleave with the viewer's and see the same
    machine load (while it runs, the viewer's process waits, idle).

    Its answers are read by a thread into a queue, with a time limit
    (:data:`HEADLESS_TIMEOUT_S`) for the "ready" line and for each timed run; lines that are no
    answer (a library printing on stdout) are skipped. On a failure or a time-out the process
    is killed and RuntimeError says why, with the end of its stderr."""

    def __init__(self, device: str, env: dict, timeout: float = HEADLESS_TIMEOUT_S):
        import queue
        import subprocess
        import tempfile
        import threading
        self.timeout = float(timeout)
        self.err = tempfile.TemporaryFile("w+")    # a pipe left unread could fill and block it
        self.proc = subprocess.Popen([sys.executable, "-c", _HEADLESS, device], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)
        self.lines: "queue.Queue" = queue.Queue()      # lines, then None at the end
        self.reader = threading.Thread(target=self._read, name="headless-stdout", daemon=True)
        self.reader.start()
        try:
            self._wait_for(lambda line: line == "ready", "loading the models")
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        """Every line of the child's stdout into the queue, then None (end of file)."""
        try:
            for line in self.proc.stdout:
                self.lines.put(line.strip())
        except (OSError, ValueError):        # the pipe closed under us (the child was killed)
            pass
        finally:
            self.lines.put(None)

    def _wait_for(self, accept, what: str) -> str:
        """The first line ``accept`` takes, other lines skipped; RuntimeError when the child
        ends or takes longer than the time limit."""
        import queue
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"headless process took more than {self.timeout:.0f} s "
                                   f"{what}; killed. Its stderr:\n{self._stderr()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                try:
                    status = self.proc.wait(timeout=5)
                except Exception:
                    status = None
                raise RuntimeError(f"headless process ended (status {status}) while {what}:"
                                   f"\n{self._stderr()}")
            if accept(line):
                return line

    @staticmethod
    def _seconds(line: str) -> bool:
        try:
            return float(line) >= 0.0
        except ValueError:
            return False

    def _stderr(self) -> str:
        try:
            self.err.flush()
            self.err.seek(0)
            return self.err.read()[-2000:]
        except (OSError, ValueError):
            return ""

    def time_one(self) -> float:
        try:
            self.proc.stdin.write("run\n")
            self.proc.stdin.flush()
            return float(self._wait_for(self._seconds, "running a timed analysis"))
        except (OSError, ValueError) as e:       # a broken pipe: the child is gone
            self.kill()
            raise RuntimeError(f"headless process failed ({e}):\n{self._stderr()}") from None
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        """Stop the child now (it may hang) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                pass

    def close(self) -> None:
        import subprocess
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self.err.close()


def cpu_by_thread() -> dict:
    """CPU seconds of this process's threads by name from /proc (Linux), numbered names
    grouped (``llvmpipe-0``, ``llvmpipe-1`` -> ``llvmpipe``); {} elsewhere."""
    import re
    out: dict = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            st = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        name = re.sub(r"[-_ ]?\d+$", "", st[st.index("(") + 1:st.rindex(")")])
        f = st[st.rindex(")") + 2:].split()
        out[(tid, name)] = (int(f[11]) + int(f[12])) / tick
    return out


def thread_cpu_delta(before: dict, after: dict) -> dict:
    acc: dict = {}
    for key, v in after.items():
        acc[key[1]] = acc.get(key[1], 0.0) + v - before.get(key, 0.0)
    return {k: round(v, 2) for k, v in sorted(acc.items(), key=lambda kv: -kv[1]) if v > 0.005}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=3,
                    help="napari runs: the first adds the layers, the others rerun in place")
    ap.add_argument("--no-process-baseline", action="store_true",
                    help="skip the headless analysis in a separate, plain Python process")
    ap.add_argument("--events", action="store_true",
                    help="list the Qt events that filled each run's worst gap (slower)")
    args = ap.parse_args(argv)
    env = dict(os.environ)            # before napari_radiogen.napari sets OMP_WAIT_POLICY
    try:
        plain = None if args.no_process_baseline else HeadlessProcess(args.device, env)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    process_headless: list = []

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_radiogen.core.progress import run
    from napari_radiogen.core.sample import sample_case_path
    from napari_radiogen.napari.analyze_widget import AnalyzeWidget
    from napari_radiogen.napari.diagnostics import (EventLoopMeter, events_between,
                                                    timed_application)
    app = timed_application(sys.argv[:1]) if args.events else None

    def idle(seconds: float) -> None:
        """Let the event loop run (draws, deferred work) for a while."""
        loop = QEventLoop()
        QTimer.singleShot(int(1000 * seconds), loop.quit)
        loop.exec()

    viewer = napari.Viewer(show=True)
    viewer.open(str(sample_case_path()), plugin="napari-radiogen")
    w = AnalyzeWidget(viewer)
    w.device.setCurrentText(args.device)
    viewer.window.add_dock_widget(w, name="Analyze")
    idle(1.0)

    spans = []
    orig = w._stage_done

    def timed(item):
        t = time.perf_counter()
        orig(item)
        spans.append((t, time.perf_counter() + 0.1))   # the repaint follows in the next ticks

    w._stage_done = timed

    def napari_run(label: str) -> dict:
        spans.clear()
        idle(0.3)
        if app is not None:
            app.records.clear()
        meter = EventLoopMeter().start()
        threads0 = cpu_by_thread()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.thread_time(), time.perf_counter()
        w.run()
        if not w.job.done:
            loop = QEventLoop()
            w.job.worker.finished.connect(loop.quit)
            loop.exec()
        elapsed = time.perf_counter() - t0
        main_cpu = time.thread_time() - c0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        thread_cpu = thread_cpu_delta(threads0, cpu_by_thread())
        worst = meter.stop()
        if w.job.error is not None:
            raise RuntimeError(f"analysis failed: {w.job.error}")
        events = []
        if app is not None and meter.gaps:
            g, a, b = max(meter.gaps)
            events = events_between(app.records, a, b)
            app.records.clear()
        return {"run": label, "worst_gap_events": events,
                "worst_gap_outside_delivery_ms": 1000 * meter.worst_outside(spans),
                "worst_gap_ms": 1000 * worst,
                "longest_delivery_ms": 1000 * max((e - 0.1 - s for s, e in spans),
                                                  default=0.0),
                "main_thread_cpu_s": main_cpu, "seconds": elapsed, "page_faults": faults,
                "cpu_s_by_thread": thread_cpu}

    def headless_run() -> float:
        idle(0.3)
        t = time.perf_counter()
        run(w.analyzer.analyze(w.case_combo.case()))
        return time.perf_counter() - t

    rows, headless = [], []
    try:
        rows.append(napari_run("new layers"))
        for _ in range(args.runs - 1):
            headless.append(headless_run())
            if plain is not None:
                idle(0.3)
                process_headless.append(plain.time_one())
            rows.append(napari_run("in-place rerun"))
        if not headless:
            headless.append(headless_run())
        if plain is not None and not process_headless:
            process_headless.append(plain.time_one())
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        load = os.getloadavg()
        viewer.close()
        if plain is not None:
            plain.close()
    reruns = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
    import torch
    out = {"device": args.device, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average_1_5_15": [round(x, 2) for x in load],
           "runs": rows, "headless_seconds": headless,
           "napari_over_headless": statistics.median(reruns) / statistics.median(headless),
           "headless_process_seconds": process_headless,
           "napari_over_headless_process": (statistics.median(reruns)
                                            / statistics.median(process_headless)
                                            if process_headless else None)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{'run':16s} {'gap outside ms':>14s} {'worst gap ms':>12s} "
              f"{'delivery ms':>11s} {'main CPU s':>10s} {'seconds':>8s} {'faults':>7s}")
        for r in rows:
            print(f"{r['run']:16s} {r['worst_gap_outside_delivery_ms']:14.0f} "
                  f"{r['worst_gap_ms']:12.0f} {r['longest_delivery_ms']:11.0f} "
                  f"{r['main_thread_cpu_s']:10.2f} {r['seconds']:8.2f} {r['page_faults']:7d}")
            for line in r["worst_gap_events"]:
                print(f"    {line}")
        print(f"headless {', '.join(f'{h:.2f}' for h in headless)} s; median rerun / median "
              f"headless = {out['napari_over_headless']:.2f} "
              f"({out['cpus']} CPUs, torch {out['torch_threads']} threads, load average "
              f"{load[0]:.2f} before the viewer closed)")
        reruns_cpu = [r["cpu_s_by_thread"] for r in rows[1:]] or [rows[0]["cpu_s_by_thread"]]
        names = sorted({k for d in reruns_cpu for k in d},
                       key=lambda k: -statistics.median(d.get(k, 0.0) for d in reruns_cpu))
        if names:
            print("CPU seconds by thread in a rerun (median): " + ", ".join(
                f"{k} {statistics.median(d.get(k, 0.0) for d in reruns_cpu):.2f}"
                for k in names))
        if process_headless:
            print(f"headless in a plain Python process "
                  f"{', '.join(f'{h:.2f}' for h in process_headless)} s; median rerun / median "
                  f"= {out['napari_over_headless_process']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
