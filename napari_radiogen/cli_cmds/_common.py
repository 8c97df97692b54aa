"""Helpers shared by the commands: output folders, and progress
on stderr (one line rewritten in place on a terminal, plain lines in a log)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _error(msg: str):
    from ..core.errors import RadiogenError
    return RadiogenError(msg)


# -- output folders ----------------------------------------------------------------------------
def check_out_dir(path: PathLike) -> Path:
    """Check, without creating anything, that ``path`` can be (or is) an output folder.

    Raises a :class:`~napari_radiogen.core.errors.RadiogenError` (the CLI prints one line and
    exits with status 2) when ``path`` is an existing file, when a folder on the way to it is a
    file, or when the folder that would hold it is not writable. Commands call this before
    any long computation, and create the folder (:func:`ensure_out_dir`) only when there is
    something to write.
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise _error(f"{p}: cannot create the output folder (a broken link of that name exists)")
    if p.exists():
        if not p.is_dir():
            raise _error(f"{p}: cannot create the output folder (a file of that name exists)")
        q = p
    else:
        q = p
        while not q.exists() and q.parent != q:
            q = q.parent
        if q.exists() and not q.is_dir():
            raise _error(f"{p}: cannot create the output folder ({q} is a file)")
    if q.exists() and not os.access(q, os.W_OK | os.X_OK):
        raise _error(f"{p}: cannot write there (permission denied on {q})")
    return p


def ensure_out_dir(path: PathLike) -> Path:
    """Create the output folder ``path`` (and its parents); a clear one-line
    :class:`~napari_radiogen.core.errors.RadiogenError` instead of a traceback when it cannot be
    made (a file of that name, a file on the way, no permission)."""
    p = check_out_dir(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _error(f"{p}: cannot create the output folder ({e.strerror or e})") from None
    return p


# -- progress ----------------------------------------------------------------------------------
def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class ProgressLine:
    """Show :class:`~napari_radiogen.core.progress.Progress` items on stderr.

    On a terminal, one line rewritten in place (``\\r``). Otherwise (a log, a pipe) a plain
    newline-terminated line when the stage changes (``key(progress)``, default its ``stage``),
    nothing for the steps in between. Use it as
    a context manager (or call :meth:`end`) so that whatever follows, an error message
    included, starts on its own line. ``reset()`` ends the line and shows the next item even
    when its stage is the same (one line per case of a batch).
    """

    def __init__(self, stream: Any = None, width: int = 110, enabled: bool = True,
                 key: Optional[Callable[[Any], Any]] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.key = key
        self.tty = _isatty(self.stream)
        self.width = width
        self.enabled = enabled
        self._open = False          # an unterminated \r line is on the terminal
        self._last: Optional[str] = None

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        text = str(p)
        try:
            if self.tty:
                self.stream.write("\r" + text[: self.width].ljust(self.width))
                self._open = True
            else:
                key = str(self.key(p) if self.key else getattr(p, "stage", text))
                if key == self._last:
                    return
                self._last = key
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def end(self) -> None:
        """Terminate the in-place line, if one is open."""
        if self._open:
            self._open = False
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def reset(self) -> None:
        self.end()
        self._last = None

    def __enter__(self) -> "ProgressLine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()
