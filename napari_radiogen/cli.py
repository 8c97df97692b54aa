"""The ``radiogen`` command line.

Developer notes (kept out of ``radiogen --help``, which shows :data:`DESCRIPTION` and
:data:`EPILOG`): subcommands live in ``napari_radiogen/cli_cmds/<name>.py``; each module has
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily so ``radiogen
info`` does not pay for torch.

Errors of the user's input (:class:`~napari_radiogen.core.errors.RadiogenError`) print one line
``radiogen: error: ...`` and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import List, Optional

# name -> (module in cli_cmds, one-line help)
COMMANDS = {
    "info": ("info", "describe a case: sequences, files, shapes, spacing, orientation, labels"),
    "train": ("train", "train or fine-tune a model from a config (torchrun-aware)"),
    "evaluate": ("evaluate", "evaluate a model on data and write a report"),
    "segment": ("segment", "segment the tumour of a case (or a folder of cases)"),
    "predict": ("predict", "predict IDH, 1p/19q and grade for a case (or a folder)"),
    "synthesize": ("synthesize", "synthesise a missing sequence"),
    "rank-sequences": ("rank_sequences", "rank sequences by unique information; maps"),
    "explain": ("explain", "Grad-CAM / attention heatmaps for a prediction"),
    "analyze": ("analyze", "full analysis of a case or folder: the one-click job"),
    "classify-slices": ("classify_slices", "tumour-type triage of 2D slices"),
    "models": ("models", "list installed models and their cards"),
    "bench": ("bench", "time each stage on the sample case and print a table"),
}


DESCRIPTION = ("radiogen: brain tumour MRI analysis from the command line (segmentation, IDH / "
               "1p/19q / grade prediction, sequence synthesis, explanations, training).")
EPILOG = ("`radiogen COMMAND --help` lists a command's options. Exit status: 0 done; 1 some "
          "cases (or stages) of the job failed, the others' results are written; 2 an error in "
          "the input, printed as one line `radiogen: error: ...`.")


def _available():
    out = {}
    for name, (mod, help_) in COMMANDS.items():
        spec = importlib.util.find_spec(f"napari_radiogen.cli_cmds.{mod}")
        if spec is not None:
            out[name] = (mod, help_)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error line: a bad option or value prints one line,
    ``radiogen: error: <command>: <what>`` (and where the options are listed), exit status 2,
    as every other input error (argparse's own prints the usage block first)."""

    def error(self, message: str):  # type: ignore[override]
        words = self.prog.split()
        cmd = " ".join(words[1:])
        where = f"`radiogen {cmd} --help`" if cmd else "`radiogen --help`"
        self.exit(2, f"radiogen: error: {cmd + ': ' if cmd else ''}{message} "
                     f"({where} lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="radiogen", description=DESCRIPTION, epilog=EPILOG)
    from . import __version__
    p.add_argument("--version", action="version", version=f"napari-radiogen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in _available().items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=mod)
        m = importlib.import_module(f"napari_radiogen.cli_cmds.{mod}")
        m.add_arguments(sp)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    import importlib.util  # noqa: F401
    from .core.allocator import tune_allocator
    from .core.errors import RadiogenError
    from .core.progress import clear_interrupt, interrupted

    tune_allocator()                  # freed tensor memory is reused, not faulted in again
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod = importlib.import_module(f"napari_radiogen.cli_cmds.{args._module}")
    restore = _catch_interrupt()
    try:
        code = int(mod.run(args) or 0)
        if interrupted() and code != 130:
            # a Ctrl-C that Python ignored where it landed (a weakref callback) and that no
            # check met before the end: the work is done, but the user asked to stop
            raise KeyboardInterrupt
        return code
    except RadiogenError as e:
        print(f"radiogen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("radiogen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`radiogen models | head`): no traceback, and nothing more is
        # written to the closed pipe (Python flushes stdout again at exit)
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        restore()
        clear_interrupt()


def _catch_interrupt():
    """Ctrl-C raises KeyboardInterrupt, as by default, and also sets the core's interrupt flag
    (``core.progress.interrupt``): where Python ignores the exception (raised inside a weakref
    callback or a ``__del__``), the flag still stops the work at its next check. Returns what
    restores the previous handler (nothing to do outside the main thread)."""
    import signal
    import threading

    from .core.progress import interrupt
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    before = signal.getsignal(signal.SIGINT)
    if before is not signal.default_int_handler:
        return lambda: None                     # the caller chose its own handling

    def on_interrupt(signum, frame):
        interrupt()
        raise KeyboardInterrupt

    hook = sys.unraisablehook

    def quiet_interrupt(unraisable):
        # the ignored Ctrl-C's traceback ("Exception ignored in ...") is not shown: the flag
        # carries the interrupt on, and "radiogen: interrupted" says it
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type,
                                                          KeyboardInterrupt):
            return
        hook(unraisable)

    def restore() -> None:
        signal.signal(signal.SIGINT, before)
        sys.unraisablehook = hook

    signal.signal(signal.SIGINT, on_interrupt)
    sys.unraisablehook = quiet_interrupt
    return restore


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
