"""Packaging: the napari manifest, its entry points, the bundled sample case, the README's
install/test commands, and (in CI) that tests run against the installed package."""
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The lead flips this to True once every widget module exists: then a missing widget module
#: fails instead of skipping.
STRICT_WIDGETS = True

npe2 = pytest.importorskip("npe2")


def _manifest():
    from importlib.resources import files

    path = files("napari_radiogen") / "napari.yaml"
    assert path.is_file(), "napari.yaml is not shipped inside the napari_radiogen package"
    return npe2.PluginManifest.from_file(str(path))


def test_manifest_validates_and_is_discoverable():
    mf = _manifest()
    assert mf.name == "napari-radiogen"
    # through the installed distribution's entry point, as napari finds it
    dist_mf = npe2.PluginManifest.from_distribution("napari-radiogen")
    assert dist_mf.name == "napari-radiogen"
    assert {c.id for c in dist_mf.contributions.commands} == {c.id for c in mf.contributions.commands}


def test_npe2_validate_cli():
    exe = Path(sys.executable).with_name("npe2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    # npe2 prints a check mark: decode as UTF-8 whatever the locale (CI may run under C/POSIX)
    out = subprocess.run(cmd + ["validate", "napari-radiogen"], capture_output=True,
                         encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _commands():
    """(id, python_name) from the YAML itself, so a manifest that does not validate still
    collects (and fails in the validation tests)."""
    import yaml

    from importlib.resources import files

    data = yaml.safe_load((files("napari_radiogen") / "napari.yaml").read_text())
    return [(c["id"], c["python_name"]) for c in data["contributions"]["commands"]]


@pytest.mark.parametrize("cmd_id,python_name", _commands(), ids=[c[0] for c in _commands()])
def test_every_python_name_resolves_to_a_callable(cmd_id, python_name):
    module, _, attr = python_name.partition(":")
    is_widget = cmd_id.endswith("_widget")
    if is_widget and not STRICT_WIDGETS and importlib.util.find_spec(module) is None:
        pytest.skip(f"widget module {module} not written yet (STRICT_WIDGETS=False)")
    mod = importlib.import_module(module)
    obj = getattr(mod, attr, None)
    assert obj is not None, f"{python_name}: {module} has no attribute {attr}"
    assert callable(obj), f"{python_name} is not callable"


def test_manifest_reader_accepts_nifti_and_folders():
    readers = _manifest().contributions.readers
    assert readers and readers[0].accepts_directories
    pats = set(readers[0].filename_patterns)
    assert {"*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.h5"} <= pats


def test_bundled_sample_case_is_shipped_small_and_attributed():
    from napari_radiogen.core.sample import SAMPLE_CASE_ID, sample_case_path

    folder = sample_case_path()
    files = sorted(folder.glob("*.nii.gz"))
    assert [f.name for f in files] == sorted(f"{SAMPLE_CASE_ID}_{p}.nii.gz"
                                             for p in ("t1", "t1ce", "t2", "flair", "seg"))
    total = sum(f.stat().st_size for f in files)
    assert total < 6e6, f"sample case is {total / 1e6:.1f} MB"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for must in ("UCSF-PDGM", "CC BY 4.0", "TCIA", "2107.02314"):
        assert must in readme


def _readme_block(text, name):
    m = re.search(r"<!-- ci:%s -->\s*```bash\n(.*?)```" % name, text, re.S)
    assert m, f"README.md has no ci:{name} block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]


def test_readme_quick_start_matches_the_install_and_test_blocks():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not beside the tests")
    text = readme.read_text(encoding="utf-8")
    install = _readme_block(text, "install")
    test = _readme_block(text, "test")
    apt = _readme_block(text, "apt")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [ln.strip() for ln in quick.splitlines()]
    # quick start 2 = the install block + the test block, chained
    assert " && ".join(install + test) in lines
    # quick start 1 = the same install (napari extra) + analyze on the bundled sample
    q1 = " && ".join(install).replace('".[testing]"', '".[napari]"')
    assert any(ln.startswith(q1 + " && radiogen analyze napari_radiogen/data/BraTS2021_00006")
               for ln in lines)
    assert apt[0] in lines
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def test_tests_run_against_the_installed_package():
    if os.environ.get("RADIOGEN_EXPECT_INSTALLED") != "1":
        pytest.skip("only checked in CI (.ci/run sets RADIOGEN_EXPECT_INSTALLED=1)")
    import napari_radiogen

    path = Path(napari_radiogen.__file__).resolve()
    assert "site-packages" in path.parts, f"napari_radiogen imported from {path}"
    assert not path.is_relative_to(ROOT / "napari_radiogen"), (
        f"napari_radiogen imported from the source tree {path}")
