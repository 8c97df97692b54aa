"""Shared fixtures. Tests that need the real data in ../shared/data skip with a reason when it is
absent (a fresh clone); CI has it."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RADIOGEN_SHARED_DATA", ROOT.parent / "shared" / "data"))

# napari/matplotlib write settings and caches under HOME: keep tests hermetic.
_tmp = tempfile.mkdtemp(prefix="radiogen-test-home-")
atexit.register(shutil.rmtree, _tmp, True)
for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
    os.environ.setdefault(var, os.path.join(_tmp, var.lower()))
os.environ.setdefault("RADIOGEN_MODELS_DIR", os.path.join(_tmp, "user-models"))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED} (clone ../shared beside the repo, or set "
                    "RADIOGEN_SHARED_DATA)")
    return SHARED


def shared_path(*parts: str) -> Path:
    """Path inside the shared data, skipping the calling test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p}")
    return p


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The small random test models of a module: ``{"mil": path, ...}``
    (``_models.write_random_models``)."""
    from _models import write_random_models
    return write_random_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def sample():
    """The bundled sample case, read once per module."""
    from napari_radiogen.core.io import load_case
    from napari_radiogen.core.sample import sample_case_path
    return load_case(sample_case_path())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The small random test models (``_models.write_random_models``) of a widget test module."""
    from _models import write_random_models
    d = tmp_path_factory.mktemp("widget-models")
    write_random_models(d)
    return d


@pytest.fixture
def test_models(models_dir, monkeypatch):
    """The test models installed as the user's models (``RADIOGEN_MODELS_DIR``)."""
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(models_dir))
    return models_dir


@pytest.fixture
def sample_path():
    """The bundled sample case's folder."""
    from napari_radiogen.core.sample import sample_case_path
    return sample_case_path()
