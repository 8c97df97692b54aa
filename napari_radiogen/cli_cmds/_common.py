"""Helpers shared by the commands: the options several commands have (``--device``,
``--sequence FILE=SEQ``, ``--threads``, whole-number counts), output folders, and progress on
stderr (one line rewritten in place on a terminal, plain lines in a log)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _error(msg: str):
    from ..core.errors import RadiogenError
    return RadiogenError(msg)


# -- --device ---------------------------------------------------------------------------------
class _DeviceChoices:
    """The ``--device`` values every command accepts: ``auto``, ``cpu``, ``cuda`` and
    ``cuda:N`` (a GPU by number, N digits). Used as argparse ``choices``."""

    names = ("auto", "cpu", "cuda")

    def __contains__(self, value: object) -> bool:
        v = str(value)
        return v in self.names or (v.startswith("cuda:") and v[5:].isdigit())

    def __iter__(self) -> Iterator[str]:          # what argparse lists in its error
        return iter(self.names + ("cuda:N",))


DEVICE_CHOICES = _DeviceChoices()


def add_device_argument(parser: Any, default: str = "auto", note: str = "") -> None:
    """``--device auto|cpu|cuda[:N]``, the same for every command. What a
    command does with ``cuda`` where there is no GPU is the same everywhere too: it stops
    before any work with one line, ``CUDA was requested but no GPU is available; use --device
    cpu`` (exit 2; see :func:`check_device`)."""
    parser.add_argument("--device", default=default, choices=DEVICE_CHOICES,
                        metavar="auto|cpu|cuda[:N]",
                        help="where to run the networks: auto (CUDA when there is a GPU, else "
                             f"the CPU), cpu, cuda or cuda:N (default {default})"
                             + (f"; {note}" if note else ""))


def check_device(device: str) -> str:
    """The device a command runs on (``core.models.resolve_device``): called before any work,
    so that ``--device cuda`` without a GPU stops at once (exit 2) in every command."""
    from ..core.models import resolve_device
    return resolve_device(device)


# -- whole-number options ----------------------------------------------------------------------
def _whole_number(text: str, least: int) -> int:
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more (got {v})")
    return v


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be 1 or more (``--limit``, ``--threads``): any
    other value is refused by argparse with one line (exit 2) before any work."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type`` of a count that may be 0 (``--frames 0``: none, ``--folds``)."""
    return _whole_number(text, 0)


def add_threads_argument(parser: Any) -> None:
    """``--threads N`` (N >= 1), the same for every command that has it."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (N >= 1; default: torch's own choice)")


def set_threads(args: Any) -> None:
    """Apply the command's ``--threads`` (checked by :func:`positive_int`), if given."""
    n = getattr(args, "threads", None)
    if n is not None:
        import torch
        torch.set_num_threads(int(n))


# -- --sequence FILE=SEQ -----------------------------------------------------------------------
SEQUENCE_HELP = ("name a file's sequence when the file name does not tell (t1, t1ce, t2, flair, "
                 "labels, ignore), e.g. --sequence scan3.nii.gz=flair; repeatable; PATH is "
                 "then read as one case")


def add_sequence_argument(parser: Any, help: str = SEQUENCE_HELP) -> None:
    """``--sequence FILE=SEQ`` (repeatable), as ``radiogen info`` has it, for every command
    that reads a case. With it, PATH is read as one case (the overrides name its files)."""
    parser.add_argument("--sequence", action="append", default=[], metavar="FILE=SEQ",
                        help=help)


def parse_overrides(items: Optional[List[str]]) -> Dict[str, str]:
    """``["a.nii.gz=flair", ...]`` -> dict; a malformed item is a user error."""
    from ..core.errors import RadiogenError

    out: Dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise RadiogenError(f"--sequence expects FILE=SEQ, got '{it}'")
        k, v = it.rsplit("=", 1)
        if not k.strip() or not v.strip():
            raise RadiogenError(f"--sequence expects FILE=SEQ, got '{it}'")
        out[k.strip()] = v.strip()
    return out


def sequence_overrides(args: Any) -> Optional[Dict[str, str]]:
    """The ``--sequence`` overrides of ``args`` as ``load_case(overrides=...)`` takes them
    (``None`` when there are none)."""
    return parse_overrides(getattr(args, "sequence", None)) or None


def load_case_arg(path: PathLike, args: Any):
    """``load_case(path)`` with the command's ``--sequence`` overrides."""
    from ..core.io import load_case
    return load_case(path, overrides=sequence_overrides(args))


# -- output folders ----------------------------------------------------------------------------
def check_out_dir(path: PathLike) -> Path:
    """Check, without creating anything, that ``path`` can be (or is) an output folder
    (``core.outputs.check_out_dir``: a file of that name, a file on the way, no permission
    are one line and exit status 2). Commands call this before any long computation, and
    create the folder (:func:`ensure_out_dir`) only when there is something to write."""
    from ..core.outputs import check_out_dir as check
    return check(path)


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


def progress_text(p: Any) -> str:
    """``str(p)``, except that a :class:`~napari_radiogen.core.progress.Progress` with no
    count (``total`` 0) shows its stage and message only (``[synthesize] loading model``, not
    ``(0/0) loading model``)."""
    from ..core.progress import Progress

    if isinstance(p, Progress) and type(p).__str__ is Progress.__str__ and not p.total:
        return f"[{p.stage}]" + (f" {p.message}" if p.message else "")
    return str(p)


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
        text = progress_text(p)
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


#: the --register option of the commands that read the sequences together
REGISTER_HELP = ("first shift each acquired sequence onto the reference where they are not "
                 "co-registered (SimpleITK mutual information, a translation; each shift is "
                 "said)")


def registered(case, args):
    """``(case, notes)``: with ``--register``, ``case`` with each acquired sequence shifted onto
    its reference (``core.register``) and what was done to each; else ``case`` as it is."""
    if not getattr(args, "register", False):
        return case, []
    from ..core.progress import run as drive
    from ..core.register import register_case
    return drive(register_case(case))
