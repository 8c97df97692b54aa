"""Small helpers shared by the readers: quiet SimpleITK calls, one-line error text."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Union

_STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def captured_stderr(sink: List[str]) -> Iterator[None]:
    """Capture what C/C++ libraries (ITK, GDCM, MetaIO) print on file descriptor 2.

    The text is appended to ``sink`` (so a reader can keep warnings in ``meta`` and the CLI stays
    one line on errors). Serialised with a lock: fd 2 is process-wide.
    """
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:            # no fd 2 (embedded interpreters): run as is
            yield
            return
        with tempfile.TemporaryFile(mode="w+b") as tmp:
            try:
                try:
                    sys.stderr.flush()
                except Exception:  # pragma: no cover
                    pass
                os.dup2(tmp.fileno(), 2)
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace").strip()
                if text:
                    sink.append(text)


def sitk_message(exc: BaseException) -> str:
    """The informative part of a SimpleITK/ITK exception, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        if ln.startswith("Exception thrown in SimpleITK") or ln.startswith("/"):
            continue
        for prefix in ("sitk::ERROR:", "ITK ERROR:", "itk::ERROR:"):
            if ln.startswith(prefix):
                ln = ln[len(prefix):].strip()
        keep.append(ln)
    msg = "; ".join(keep) if keep else (lines[-1] if lines else type(exc).__name__)
    return msg[:300]


def short(path: Union[str, Path]) -> str:
    """A path as shown in messages (as given, not resolved)."""
    return str(path)


def percent(part: float, whole: float) -> str:
    """``part`` of ``whole`` as a readable percentage: ``100%``, ``64%``, ``5.4%``, ``0.54%``,
    ``<0.01%``; never rounded up to ``100%`` or down to ``0%`` when it is not exactly that."""
    if whole <= 0:
        return "n/a"
    p = 100.0 * float(part) / float(whole)
    if p <= 0.0 or p >= 100.0:
        return f"{max(0.0, min(p, 100.0)):.0f}%"
    if p < 0.01:
        return "<0.01%"
    if p < 1.0:
        text = f"{p:.2g}"
    elif p < 10.0:
        text = f"{p:.1f}".rstrip("0").rstrip(".")
    else:
        text = f"{p:.0f}"
        if text == "100":
            text = f"{p:.1f}" if f"{p:.1f}" != "100.0" else ">99.9"
    return text + "%"
