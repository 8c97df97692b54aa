"""The headless core must never pull in Qt, napari or magicgui (the CLI, the benchmark and
training run without a display)."""
import json
import subprocess
import sys
import textwrap

FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")

SCRIPT = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import napari_radiogen.core as core
    failed = {}
    names = [core.__name__]
    for info in pkgutil.walk_packages(core.__path__, prefix=core.__name__ + "."):
        names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # report every module that does not import
            failed[name] = f"{type(e).__name__}: {e}"
    forbidden = %r
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
    print(json.dumps({"modules": names, "failed": failed, "loaded": loaded}))
""") % (FORBIDDEN,)


def _run():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_and_all_submodules_import_without_gui_libraries():
    res = _run()
    # the walk found the package's modules (a broken walk must not pass silently)
    assert "napari_radiogen.core.case" in res["modules"]
    assert "napari_radiogen.core.io" in res["modules"]
    assert "napari_radiogen.core.sample" in res["modules"]
    assert not res["failed"], f"core modules that fail to import: {res['failed']}"
    assert not res["loaded"], (f"importing napari_radiogen.core loaded GUI modules "
                               f"{res['loaded']}")


def test_cli_parser_imports_without_gui_libraries():
    script = ("import sys, json; from napari_radiogen import cli; cli.build_parser(); "
              f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
              f"{FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
