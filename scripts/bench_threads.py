"""Time the sample case's analysis under the OpenMP settings a viewer job can run with.

Each setting runs in a fresh plain Python process (libgomp reads its settings once, at load):
the analysis with the default models, loaded first, then timed ``--runs`` times. Settings:

- ``default``: torch's threads, busy-waiting (what ``radiogen analyze`` runs with);
- ``default, malloc defaults``: the same without the allocator settings of
  ``core/allocator.py`` (``RADIOGEN_MALLOC_TUNING=0``);
- ``passive``: torch's threads, ``OMP_WAIT_POLICY=PASSIVE`` (set by the plugin inside napari);
- ``passive-1``: passive, one thread (a viewer job on 2 CPUs: one core left to the viewer).

``--busy`` keeps one busy-looping process beside the timed one (a loaded machine). The README's
thread figures come from here:

    python scripts/bench_threads.py [--runs 4] [--busy]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_TIMED = """
import resource, sys, time, threading, torch
from napari_radiogen.core.allocator import allocator_state, tune_allocator
tune_allocator()                        # as the radiogen command and the plugin do
from napari_radiogen.core.pipeline import AnalysisOptions, Analyzer
from napari_radiogen.core.progress import run
from napari_radiogen.core.io import load_case
from napari_radiogen.core.sample import sample_case_path
case = load_case(sample_case_path())
an = Analyzer(AnalysisOptions(device="cpu"))
times, faults = [], []
def job():                              # in a worker thread, as in the viewer
    if int(sys.argv[2]):
        torch.set_num_threads(int(sys.argv[2]))
    run(an.analyze(case))
    for _ in range(int(sys.argv[1])):
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter(); run(an.analyze(case)); times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
th = threading.Thread(target=job); th.start(); th.join()
print(" ".join(f"{t:.3f}" for t in times))
print(" ".join(str(f) for f in faults))
print(allocator_state())
"""
SETTINGS = {"default": ({}, 0),
            "default, malloc defaults": ({"RADIOGEN_MALLOC_TUNING": "0"}, 0),
            "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
            "passive-1": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--busy", action="store_true", help="one busy process beside")
    a = ap.parse_args(argv)
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RADIOGEN_MALLOC_TUNING")}
    busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None)
    try:
        for name, (env, threads) in SETTINGS.items():
            out = subprocess.run([sys.executable, "-c", _TIMED, str(a.runs), str(threads)],
                                 env={**base, **env}, capture_output=True, text=True,
                                 timeout=900)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                return 1
            lines = out.stdout.strip().splitlines()
            ts = [float(x) for x in lines[-3].split()]
            faults = [int(x) for x in lines[-2].split()]
            print(f"{name:26s} median {statistics.median(ts):.2f} s, "
                  f"{statistics.median(faults):.0f} page faults per run  "
                  f"({', '.join(f'{t:.2f}' for t in ts)})" + ("  [busy process beside]"
                                                              if busy else "")
                  + f"  [allocator {lines[-1]}]", flush=True)
    finally:
        if busy is not None:
            busy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
