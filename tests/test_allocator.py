"""The allocator settings (core/allocator.py): freed memory is reused instead of being faulted
in again, in the main thread and in a worker thread; the user's own settings are left alone.

Each case runs in a fresh interpreter: glibc's settings are process-wide and made once."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings apply to glibc on Linux only")

_CHURN = r"""
import json, resource, threading
import numpy as np
from napari_radiogen.core.allocator import allocator_state, tune_allocator
{call}
def churn():                  # four 24 MiB blocks freed together, twenty times
    for _ in range(20):
        blocks = [np.ones(3 << 20) for _ in range(4)]
        del blocks
def faults(who):
    churn()                   # first round: the memory is new either way
    f = resource.getrusage(who).ru_minflt
    churn()
    return resource.getrusage(who).ru_minflt - f
out = {{"main": faults(resource.RUSAGE_SELF)}}
def worker():
    out["thread"] = faults(resource.RUSAGE_THREAD)
th = threading.Thread(target=worker); th.start(); th.join()
out["state"] = allocator_state()
print(json.dumps(out))
"""


def _churn(call: str = "tune_allocator()", **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")
             and k not in ("RADIOGEN_MALLOC_TUNING", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _CHURN.format(call=call)], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_in_main_and_worker_threads():
    tuned, untouched = _churn(), _churn(RADIOGEN_MALLOC_TUNING="0")
    assert tuned["state"].startswith("tuned, glibc")
    assert untouched["state"] == "default, RADIOGEN_MALLOC_TUNING=0"
    # 20 x 96 MiB churned: without the settings the blocks are faulted in again every round
    # (tens of thousands of 4 KiB pages); with them the second round reuses the first's memory
    assert untouched["main"] > 10000 and untouched["thread"] > 10000
    assert tuned["main"] < untouched["main"] / 10
    assert tuned["thread"] < untouched["thread"] / 10


def test_the_users_malloc_settings_win():
    out = _churn(MALLOC_ARENA_MAX="2")
    assert out["state"] == "default, the user's MALLOC_ARENA_MAX is left to rule"
    assert out["main"] > 10000                   # glibc's own behaviour, not ours


def test_the_radiogen_command_sets_it_before_any_command():
    # the CLI entry point tunes the allocator itself, before parsing (here: no command at all)
    call = ("import contextlib, io\n"
            "from napari_radiogen.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main([])\n")
    out = _churn(call=call)
    assert out["state"].startswith("tuned, glibc") and out["main"] < 1000
    # an unrelated glibc tunable does not stop it; a malloc one does
    assert _churn(GLIBC_TUNABLES="glibc.pthread.rseq=0")["state"].startswith("tuned")
    assert _churn(GLIBC_TUNABLES="glibc.malloc.arena_max=2")["state"] == \
        "default, the user's GLIBC_TUNABLES is left to rule"
