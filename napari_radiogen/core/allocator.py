"""Memory allocator settings for model jobs (glibc on Linux).

torch's CPU tensors come from ``malloc``. glibc hands a freed block of more than its *mmap
threshold* back to the operating system, and trims the heap's free top above its *trim
threshold*; both start low (128 KiB) and only creep up as blocks are freed. A model run
allocates and frees hundreds of MB of activations, so with the defaults every run pays for
the same memory again in page faults (the kernel zeroes each fresh 4 KiB page): about 140 000
minor faults per analysis of the sample case in a worker thread, about 10 000 with the settings
below (``scripts/bench_threads.py`` prints both). Raising the thresholds lets freed memory be
reused instead. The peak memory barely moves (a BraTS case's ``radiogen analyze``: 0.99 ->
1.06 GB), but after a job each malloc arena that served it (the main thread's, a worker
thread's) may keep up to ``TRIM_THRESHOLD`` of freed memory for the next one.

:func:`tune_allocator` is called by the ``radiogen`` command and by the napari plugin (once per
process; in napari it applies to the whole viewer process). It leaves the allocator alone where
the user set a ``MALLOC_*`` variable or a malloc tunable in ``GLIBC_TUNABLES``, where
``RADIOGEN_MALLOC_TUNING=0``, and off glibc.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from typing import Dict, Optional

log = logging.getLogger(__name__)

MIB = 1 << 20
#: blocks up to this size come from the heap (glibc's largest allowed value on 64-bit)
MMAP_THRESHOLD = 32 * MIB
#: free memory kept at the heap's top before it is returned to the system
TRIM_THRESHOLD = 512 * MIB
#: extra memory requested whenever the heap grows
TOP_PAD = 64 * MIB

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: ``reason``: why the allocator was left alone, None once the settings are in force
_STATE: Dict[str, object] = {"done": False, "reason": "not called"}


def _skip_reason() -> Optional[str]:
    if os.environ.get("RADIOGEN_MALLOC_TUNING", "").strip().lower() in ("0", "false", "no",
                                                                          "off"):
        return "RADIOGEN_MALLOC_TUNING=0"
    user = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        user.insert(0, "GLIBC_TUNABLES")
    if user:
        return f"the user's {user[0]} is left to rule"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    return None


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they are set.
    Never raises: an allocator setting is an optimisation only."""
    if _STATE["done"]:
        return _STATE["reason"] is None
    _STATE["done"] = True
    reason = _skip_reason()
    if reason is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # each one tried (a refusal of one leaves the others in force, and says so)
            refused = [name for name, p, v in (("mmap", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                               ("trim", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                               ("top pad", _M_TOP_PAD, TOP_PAD))
                       if mallopt(p, v) != 1]
            reason = f"mallopt refused the {', '.join(refused)} setting" if refused else None
        except (OSError, AttributeError) as e:  # pragma: no cover - no mallopt
            reason = f"mallopt unavailable ({e})"
    _STATE["reason"] = reason
    if reason:
        log.debug("allocator left as it is: %s", reason)
    return reason is None


def allocator_state() -> str:
    """One line for reports and benchmarks: the settings in force, or why there are none."""
    if _STATE["reason"] is None:
        return (f"tuned, glibc: mmap threshold {MMAP_THRESHOLD // MIB} MiB, "
                f"trim threshold {TRIM_THRESHOLD // MIB} MiB")
    return f"default, {_STATE['reason']}"
