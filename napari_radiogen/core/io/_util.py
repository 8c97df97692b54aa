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
