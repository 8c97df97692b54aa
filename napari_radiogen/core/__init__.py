"""Headless core of napari-radiogen. Must never import Qt, napari or magicgui."""
from .case import Case, Geometry, Volume, SEQUENCES, LABEL_NAMES, REGIONS  # noqa: F401
from .errors import RadiogenError  # noqa: F401
from .progress import CancelToken, Progress  # noqa: F401
