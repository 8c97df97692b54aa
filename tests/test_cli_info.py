"""``radiogen info``: every shared folder exits 0; bad input exits 2 with one line, no traceback."""
import json
import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from conftest import ROOT, shared_path


def info(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "napari_radiogen", "info", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=120)


def assert_user_error(r, match):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("radiogen: error: ") and "Traceback" not in r.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def vol(path, arr=None, **kw):
    arr = np.ones((6, 8, 10), np.float32) if arr is None else arr
    img = sitk.GetImageFromArray(arr)
    for k, v in kw.items():
        getattr(img, "Set" + k.capitalize())(v)
    sitk.WriteImage(img, str(path))
    return path


# ------------------------------------------------------------------------------------------------


def test_info_brats_case_table_and_json(capfd):
    case = shared_path("brats2021", "BraTS2021_00006")
    r = run_main(capfd, case)              # the table in-process, the JSON through a subprocess
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "case BraTS2021_00006" in out
    for s in ("t1", "t1ce", "t2", "flair"):
        assert f"BraTS2021_00006_{s}.nii.gz" in out
    assert "155x240x240" in out and "values 0, 1, 2, 4" in out and "on one grid: yes" in out
    r = info(case, "--json")
    d = json.loads(r.stdout)
    assert d["case_id"] == "BraTS2021_00006" and d["missing"] == []
    assert d["sequences"]["flair"]["spacing_xyz_mm"] == [1.0, 1.0, 1.0]
    assert d["labels"]["values"] == [0, 1, 2, 4] and d["reference"] == "flair"


def test_info_native_and_sri24():
    r = info(shared_path("tcga-native", "TCGA-FG-6692", "native"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["sequences"]) == {"t1", "t1ce", "t2", "flair"} and not d["on_one_grid"]
    for s, v in d["sequences"].items():
        assert v["orientation"] == "LAS" and abs(v["spacing_xyz_mm"][2] - 5.5) < 1e-3
    # the T1ce is not co-registered with the FLAIR (about 6 mm): said as analyze says it
    said = [w for w in d["meta"]["warnings"] if "looks offset" in w]
    assert len(said) == 1 and said[0].startswith("t1ce looks offset from flair by about "), said
    r = info(shared_path("tcga-native", "TCGA-FG-6692", "sri24"))
    assert r.returncode == 0 and "fused_algorithms_seg.nii.gz" in r.stdout
    assert "looks offset" not in r.stdout                 # registered to the SRI24 atlas


def test_info_pack_and_cohorts():
    r = info(shared_path("tcga-lgg", "TCGA_CS_4941.h5"))
    assert r.returncode == 0, r.stderr
    assert "(slices)" in r.stdout and "nominal" in r.stdout and "FLAIR abnormality" in r.stdout
    r = info(shared_path("tcga-lgg"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_cases"] == len(list(shared_path("tcga-lgg").glob("*.h5")))
    assert all(c["kind"] == "slices" for c in d["cases"])
    r = info(shared_path("brats2021"))
    assert r.returncode == 0 and "cohort" in r.stdout and "(8 case(s))" in r.stdout
    assert r.stdout.count("t1 t1ce t2 flair  + labels") == 8
    r = info(shared_path("tcga-native"))
    assert r.returncode == 0 and "native" in r.stdout and "sri24" in r.stdout


def test_info_4class_is_not_a_case():
    assert_user_error(info(shared_path("brain-tumour-4class")), "no MRI volumes found")


def test_info_bad_inputs_subprocess(tmp_path):
    """A few bad inputs end to end: exit 2, one line on stderr, no traceback."""
    assert_user_error(info(tmp_path / "nope"), "no such file")
    p = vol(tmp_path / "good_flair.nii.gz", np.random.rand(20, 30, 40).astype(np.float32))
    data = p.read_bytes()
    (tmp_path / "cut_flair.nii.gz").write_bytes(data[: len(data) // 2])
    assert_user_error(info(tmp_path / "cut_flair.nii.gz"), "truncated gzip")
    (tmp_path / "trunc.mha").write_bytes(vol(tmp_path / "ok.mha").read_bytes()[:300])
    # MetaIO prints to the C stderr on its own: that must not leak as extra lines
    assert_user_error(info(tmp_path / "trunc.mha", "--sequence", "trunc.mha=t1"), "trunc.mha")
    d = tmp_path / "dicomish"
    d.mkdir()
    (d / "IM1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 64)
    (d / "IM2.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 64)
    assert_user_error(info(d), "no readable DICOM series")


def run_main(capfd, *args):
    from napari_radiogen.cli import main

    rc = main(["info", *map(str, args)])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def test_info_bad_inputs_in_process(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main(capfd, tmp_path / "empty"), "empty folder")
    vol(tmp_path / "flat_t1.nii.gz", np.ones((20, 30), np.float32))
    assert_user_error(run_main(capfd, tmp_path / "flat_t1.nii.gz"), "2D image")
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.ones((10, 8, 6, 3), np.float32), np.eye(4)),
             tmp_path / "four_t1.nii.gz")
    assert_user_error(run_main(capfd, tmp_path / "four_t1.nii.gz"), "4D image with 3 volumes")
    nan = np.ones((6, 8, 10), np.float32)
    nan[0, 0, 0] = np.nan
    vol(tmp_path / "nan_t2.nii.gz", nan)
    assert_user_error(run_main(capfd, tmp_path / "nan_t2.nii.gz"), "1 NaN/Inf voxel")
    u = tmp_path / "unknown"
    u.mkdir()
    # not constant: a blank (constant) sequence is refused at load by name
    rnd = np.random.default_rng(0).random((6, 8, 10)).astype(np.float32)
    vol(u / "scan_a.nii.gz", rnd)
    vol(u / "scan_b.nii.gz", rnd)
    assert_user_error(run_main(capfd, u), "scan_a.nii.gz, scan_b.nii.gz")
    r = run_main(capfd, u, "--sequence", "scan_a.nii.gz=flair", "--sequence", "t2=scan_b.nii.gz")
    assert r.returncode == 0, r.stderr
    assert "flair" in r.stdout and "t2" in r.stdout
    assert_user_error(run_main(capfd, u, "--sequence", "scan_a.nii.gz"), "FILE=SEQ")
    assert_user_error(run_main(capfd, u, "--sequence", "scan_a.nii.gz=pd"), "one side must be")
    assert_user_error(run_main(capfd, u, "--sequence", "scan_a.nii.gz=flair",
                               "--sequence", "scan_b.nii.gz=flair"),
                      "two files claim the sequence 'flair'")
    vol(u / "scan_a.nii.gz", rnd, origin=(900.0, 0.0, 0.0))
    assert_user_error(run_main(capfd, u, "--sequence", "scan_a.nii.gz=flair",
                               "--sequence", "scan_b.nii.gz=t1"), "do not overlap in space")


def test_info_does_not_import_torch():
    code = ("import sys; from napari_radiogen.cli import main; "
            f"rc = main(['info', {str(shared_path('tcga-lgg', 'TCGA_CS_4941.h5'))!r}]); "
            "assert rc == 0; bad = [m for m in ('torch', 'monai', 'napari', 'PyQt6') "
            "if m in sys.modules]; print('IMPORTED', bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_info_table_flags_synthetic_sequences_and_lists_files_left_aside(tmp_path, capfd):
    """The text table says which sequence is synthetic, from what and by which model (as the
    JSON does), which synthetic file was set aside for an acquired one, and which of the
    package's result maps were ignored."""
    from napari_radiogen.core.case import Volume
    from napari_radiogen.core.io import load_volume, write_volume

    d = tmp_path / "P1"
    d.mkdir()
    rng = np.random.default_rng(0)
    for s in ("t1", "t2", "flair"):
        vol(d / f"P1_{s}.nii.gz", rng.random((6, 8, 10)).astype(np.float32))
    g = load_volume(d / "P1_flair.nii.gz").geometry
    syn = Volume(rng.random((6, 8, 10)).astype(np.float32), g, synthetic=True,
                 meta={"sequence": "t1ce", "sources": ["t1", "t2", "flair"],
                       "model": "synth_x"})
    write_volume(syn, d / "P1_t1ce_synth.nii.gz")
    write_volume(syn.array, g, d / "P1_t2_diffmap.nii.gz")
    r = run_main(capfd, d)
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.endswith("float32")}
    assert "(synthetic)" in rows["t1ce"] and "P1_t1ce_synth.nii.gz" in rows["t1ce"]
    assert "synthetic" not in rows["t1"] + rows["t2"]
    assert ("  t1ce is synthetic: generated from t1,t2,flair by synth_x (recognised by its "
            "file header and file name (_synth)), not an acquired scan") in r.stdout
    assert ("  ignored: P1_t2_diffmap.nii.gz (a napari-radiogen differentiation map of t2 "
            "(radiogen rank-sequences), recognised by its name: not a sequence)") in r.stdout
    assert "set aside" not in r.stdout
    # an acquired T1ce beside it: the synthetic file is set aside, and the table says so
    vol(d / "P1_t1ce.nii.gz", rng.random((6, 8, 10)).astype(np.float32))
    r = run_main(capfd, d)
    assert r.returncode == 0, r.stderr
    assert "synthetic" not in [ln for ln in r.stdout.splitlines()
                                if ln.startswith("  t1ce ") and ln.endswith("float32")][0]
    assert "is synthetic" not in r.stdout
    assert ("  set aside: P1_t1ce_synth.nii.gz (synthetic t1ce; the acquired P1_t1ce.nii.gz "
            "is read)") in r.stdout
    # a synthetic file whose name alone says so: what is not recorded is said
    (d / "P1_t1ce.nii.gz").unlink()
    (d / "P1_t1ce_synth.nii.gz").unlink()
    vol(d / "P1_t1ce_synth.nii.gz", rng.random((6, 8, 10)).astype(np.float32))
    r = run_main(capfd, d)
    assert ("  t1ce is synthetic: generated (sources and model not recorded; recognised by its "
            "file name (_synth)), not an acquired scan") in r.stdout
    # the cohort listing flags it too
    (tmp_path / "P2").mkdir()
    for s in ("t1", "flair"):
        vol(tmp_path / "P2" / f"P2_{s}.nii.gz", rng.random((6, 8, 10)).astype(np.float32))
    r = run_main(capfd, tmp_path)
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "(synthetic: t1ce)" in lines["P1"]
    assert "(1 napari-radiogen map(s) ignored)" in lines["P1"]
    assert "synthetic" not in lines["P2"] and "ignored" not in lines["P2"]


def test_info_shows_the_stored_dtype_and_the_in_memory_one(tmp_path, capfd):
    """The dtype column is the file's stored type (uint8 on disk, read as float32): the NIfTI
    header's; the JSON carries both."""
    import nibabel as nib
    case = tmp_path / "C1"
    case.mkdir()
    arr = (np.arange(6 * 8 * 10) % 200).reshape(10, 8, 6).astype(np.uint8)    # x, y, z
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(case / "C1_flair.nii.gz"))
    vol(case / "C1_t1.nrrd", (np.arange(6 * 8 * 10) % 300).reshape(6, 8, 10).astype(np.int16))
    r = run_main(capfd, case)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "C1_flair.nii.gz" in ln)
    assert line.split()[-1] == "uint8"
    line = next(ln for ln in r.stdout.splitlines() if "C1_t1.nrrd" in ln)
    assert line.split()[-1] == "int16"
    assert "read into memory as float32" in r.stdout
    r = run_main(capfd, case, "--json")
    d = json.loads(r.stdout)
    assert d["sequences"]["flair"]["dtype"] == "uint8"
    assert d["sequences"]["t1"]["dtype"] == "int16"
    assert d["sequences"]["flair"]["dtype_in_memory"] == "float32"


def test_info_cohort_counts_the_files_of_an_unrecognised_dicom_folder(tmp_path, capfd):
    """A case folder of 3 DICOM files whose sequence its name does not tell is '3 DICOM
    file(s) in ./', not '1 file(s)'."""
    coh = tmp_path / "cohort"
    dcm = coh / "dcmcase"
    dcm.mkdir(parents=True)
    for i in range(3):
        img = sitk.GetImageFromArray(np.full((8, 8), i, np.int16))
        sitk.WriteImage(img, str(dcm / f"IM{i}.dcm"))
    (coh / "good").mkdir()
    vol(coh / "good" / "good_flair.nii.gz")
    r = run_main(capfd, coh)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "dcmcase" in ln)
    assert "(not recognised: 3 DICOM file(s) in ./)" in line, line


def test_info_of_a_dicom_export_with_a_subfolder_per_series(tmp_path, capfd):
    """A study exported as 001/ 002/ (a series each, one patient and study) is one case: the
    table lists its sequences from the SeriesDescription with the stored dtype (int16, was
    float32); a folder of two such exports is a cohort of two cases whose sequences are
    recognised (was one case per series, none recognised)."""
    from test_io import _export
    coh = tmp_path / "cohort"
    _export(coh / "PA", "PHANTOM1", "1.2.826.0.1.3680043.2.1125.11.1", ["AX FLAIR", "AX T1 SE"])
    _export(coh / "PB", "PHANTOM2", "1.2.826.0.1.3680043.2.1125.11.2", ["AX FLAIR", "AX T2"])
    r = run_main(capfd, coh / "PA")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("case PA  (volume)"), r.stdout
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[2:4]}
    assert set(rows) == {"t1", "flair"} and rows["t1"][-1] == "int16", r.stdout
    assert "series 'AX T1 SE'" in r.stdout and "series 'AX FLAIR'" in r.stdout  # not a folder
    assert "missing: t1ce, t2" in r.stdout
    d = json.loads(run_main(capfd, coh / "PA", "--json").stdout)
    assert d["sequences"]["flair"]["dtype"] == "int16"
    assert d["sequences"]["flair"]["dtype_in_memory"] == "float32"
    r = run_main(capfd, coh)
    assert r.returncode == 0, r.stderr
    assert "(2 case(s))" in r.stdout, r.stdout
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert lines["PA"].split()[1:] == ["volume", "t1", "flair"], r.stdout
    assert lines["PB"].split()[1:] == ["volume", "t2", "flair"], r.stdout


# -- a cohort listing marks the cases the commands could not read -----------------------------
def _small_case(folder, bad_seq="", bad=None):
    """A small BraTS-like phantom case ``<name>/<name>_<seq>.nii.gz`` (+ ``_seg``); ``bad``:
    ``"empty"`` (a 0-byte file), ``"2d"`` (a 2D image) or ``"nan"`` (one NaN voxel) for the
    file of ``bad_seq``."""
    import nibabel as nib

    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom
    case = make_phantom(0, shape=(24, 32, 32), spacing=(4.0, 4.0, 4.0), case_id=folder.name)
    folder.mkdir(parents=True)
    for s, v in list(case.sequences.items()) + [("seg", case.labels)]:
        f = folder / f"{folder.name}_{s}.nii.gz"
        write_volume(v.array, v.geometry, f, labels=s == "seg")
        if s != bad_seq:
            continue
        if bad == "empty":
            f.write_bytes(b"")
        elif bad == "2d":
            nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), str(f))
        elif bad == "nan":
            img = nib.load(str(f))
            a = np.asarray(img.dataobj, dtype=np.float32).copy()
            a[3, 4, 5] = np.nan
            nib.save(nib.Nifti1Image(a, img.affine), str(f))
    return folder


def test_info_cohort_marks_cases_with_unreadable_files(tmp_path, capfd, monkeypatch):
    """A truncated .nii.gz, a 2D file and an empty file make their case 'unreadable: <file>:
    <reason>' in the cohort listing (was listed as complete), with the reason the commands
    give; found from the headers and the gzip trailers: a complete file is not decompressed.
    A NaN voxel needs the voxels: not found there (the listing says what it checked), found
    with --check-voxels."""
    import shutil

    from napari_radiogen.core.io import volume as V

    coh = tmp_path / "cohort"
    sample = ROOT / "napari_radiogen" / "data" / "BraTS2021_00006"
    good = coh / "BraTS2021_00006"
    good.mkdir(parents=True)
    for f in sample.glob("*.nii.gz"):
        shutil.copy(f, good / f.name)
    cut = coh / "BraTS2021_00007"               # a copy whose FLAIR download stopped halfway
    cut.mkdir()
    for f in sample.glob("*.nii.gz"):
        data = f.read_bytes()
        name = f.name.replace("00006", "00007")
        (cut / name).write_bytes(data[: len(data) // 2] if "flair" in name else data)
    _small_case(coh / "FLAT", "t1ce", "2d")
    _small_case(coh / "EMPTY", "t2", "empty")
    _small_case(coh / "NAN", "t1", "nan")

    gunzipped = []
    real_check = V._check_gzip
    monkeypatch.setattr(V, "_check_gzip", lambda p: gunzipped.append(p.name) or real_check(p))
    r = run_main(capfd, coh)
    # as the other commands on a folder with a failed case: exit 1, the cases named on stderr
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == ("radiogen: 3 of 5 case(s) unreadable: BraTS2021_00007, EMPTY, "
                                "FLAT"), r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "(5 case(s), 3 unreadable)" in r.stdout.splitlines()[0], r.stdout
    assert "unreadable: BraTS2021_00007_flair.nii.gz: truncated gzip file" in \
        lines["BraTS2021_00007"], r.stdout
    assert "unreadable: FLAT_t1ce.nii.gz: 2D image (size 32x32)" in lines["FLAT"], r.stdout
    assert "unreadable: EMPTY_t2.nii.gz: empty file (0 bytes)" in lines["EMPTY"], r.stdout
    assert "unreadable" not in lines["BraTS2021_00006"] and "unreadable" not in lines["NAN"]
    assert "checked: file headers and sizes, not the voxels" in r.stdout
    assert gunzipped == ["BraTS2021_00007_flair.nii.gz"]     # the good files: header + trailer
    monkeypatch.setattr(V, "_check_gzip", real_check)

    # the reason is the one `radiogen info CASE` (and every command) stops with
    why = lines["BraTS2021_00007"].split("unreadable: BraTS2021_00007_flair.nii.gz: ")[1]
    err = run_main(capfd, cut)
    assert err.returncode == 2 and why in err.stderr, (why, err.stderr)

    r = run_main(capfd, coh, "--json")
    assert r.returncode == 1 and "3 of 5 case(s) unreadable" in r.stderr, r.stderr
    d = json.loads(r.stdout)
    cases = {c["case_id"]: c for c in d["cases"]}
    assert d["checked"] == "headers"
    assert list(cases["FLAT"]["unreadable"]) == ["FLAT_t1ce.nii.gz"]
    assert "unreadable" not in cases["BraTS2021_00006"] and "unreadable" not in cases["NAN"]

    r = run_main(capfd, coh, "--check-voxels")
    assert r.returncode == 1 and "4 of 5 case(s) unreadable" in r.stderr, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "(5 case(s), 4 unreadable)" in r.stdout.splitlines()[0], r.stdout
    assert "unreadable: NAN_t1.nii.gz: 1 NaN/Inf voxel(s)" in lines["NAN"], r.stdout
    assert "unreadable: BraTS2021_00007_flair.nii.gz: truncated gzip file" in \
        lines["BraTS2021_00007"]
    assert "unreadable" not in lines["BraTS2021_00006"] and "checked:" not in r.stdout
    r = run_main(capfd, coh, "--json", "--check-voxels")
    assert r.returncode == 1 and json.loads(r.stdout)["checked"] == "voxels"
    # the readable cases alone: exit 0, nothing on stderr
    for name in ("BraTS2021_00007", "FLAT", "EMPTY", "NAN"):
        shutil.rmtree(coh / name)
    r = run_main(capfd, coh, "--check-voxels")
    assert r.returncode == 0 and not r.stderr and "unreadable" not in r.stdout, r.stderr
