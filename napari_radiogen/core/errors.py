"""Errors the core raises for bad input.

Every user-facing failure is a :class:`RadiogenError` with a one-line message; the CLI prints
the message and exits with status 2, the widgets show it as a notification.
"""


class RadiogenError(Exception):
    """Base class: a problem with the user's input or request, not a bug."""


class CaseLoadError(RadiogenError):
    """A file or folder could not be read as a case (corrupt, empty, wrong dimensionality, ...)."""


class GeometryError(RadiogenError):
    """Sequences of one case cannot be put on one grid, or an array does not fit a geometry."""


class MissingSequenceError(RadiogenError):
    """A model needs a sequence that the case does not have."""

    def __init__(self, missing, needed, present=None):
        self.missing = list(missing)
        self.needed = list(needed)
        self.present = list(present or [])
        msg = (
            f"missing sequence(s): {', '.join(self.missing)}; the model needs "
            f"{', '.join(self.needed)}"
        )
        if present is not None:
            msg += f" and the case has {', '.join(self.present) or 'none'}"
        msg += " (synthesise the missing one first, or choose another model)"
        super().__init__(msg)


class ModelFileError(RadiogenError):
    """A model file is unsafe, corrupt, or its card does not match the requested task."""


class ConfigError(RadiogenError):
    """A training/evaluation configuration or data table is invalid."""


class Cancelled(RadiogenError):
    """The user cancelled a running job."""


def error_text(e: BaseException) -> str:
    """One line for a case that failed in a batch: the message of a RadiogenError (a problem
    with the input, worded for the user), ``<ExceptionType>: <message>`` for anything else."""
    msg = " ".join(str(e).split())
    if isinstance(e, RadiogenError):
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
