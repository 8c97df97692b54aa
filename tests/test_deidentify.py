"""What the package writes from identifying inputs (DICOM patient tags, NIfTI header text,
NRRD key/value fields, a face in a scan that is not skull-stripped) holds none of it by default,
and the report says how its slices are oriented."""
import numpy as np
import pytest

from _json_helpers import strict_load

NAME = "DOE^JOHN"
NEEDLES = ("DOE", "JOHN", "19700101", "1970-01-01", "Elsewhere", "HOUSE", "ACC998877")


def _blob_phantom(shape=(12, 20, 24)):
    """A small array with a bright blob in the half of larger x (the patient's left on the
    canonical LPS grid)."""
    a = np.full(shape, 10, np.int16)
    a[4:8, 6:14, 16:21] = 500
    return a


def _no_needle(text, where):
    low = str(text).lower()
    for n in NEEDLES:
        assert n.lower() not in low, f"{n!r} in {where}"


def _headers_of(path):
    """The text a written volume's header holds (NIfTI free-text fields and extensions, or
    the ITK key/value fields of NRRD/MetaImage)."""
    import nibabel as nib
    import SimpleITK as sitk
    if path.name.endswith((".nii", ".nii.gz")):
        h = nib.load(str(path)).header
        return " ".join([*(h[k].tobytes().decode("latin1") for k in
                           ("descrip", "aux_file", "intent_name", "db_name")),
                         *(repr(e.get_content()) for e in h.extensions)])
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return " ".join(f"{k}={r.GetMetaData(k)}" for k in r.GetMetaDataKeys())


def test_results_written_from_identifying_sources_carry_none_of_their_header_text(tmp_path):
    """A DICOM series with the patient's tags, a NIfTI whose free-text fields and extension
    hold a name and a birth date, an NRRD with patient key/value fields: the masks and images
    written for them (.nii.gz, .nrrd, .mha) hold none of it, and keep the source geometry."""
    import nibabel as nib
    import SimpleITK as sitk
    from napari_radiogen.core.io import load_volume, write_volume

    arr = _blob_phantom()
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.9, 0.9, 3.0))
    img.SetOrigin((-10.0, 20.0, 30.0))
    # DICOM: one file per slice, with the tags a hospital's scanner writes
    dcm = tmp_path / "DOE_JOHN_12345" / "T1"
    dcm.mkdir(parents=True)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for i in range(img.GetDepth()):
        sl = img[:, :, i]
        for t, v in {"0010|0010": NAME, "0010|0020": "12345", "0010|0030": "19700101",
                     "0008|0020": "20210315", "0008|0080": "St Elsewhere Hospital",
                     "0008|0090": "HOUSE^GREGORY", "0008|0050": "ACC998877",
                     "0008|0060": "MR", "0008|103e": "T1 AX",
                     "0020|000d": "1.2.3.4", "0020|000e": "1.2.3.4.1",
                     "0020|0037": "1\\0\\0\\0\\1\\0",
                     "0020|0032": "\\".join(map(str, img.TransformIndexToPhysicalPoint(
                         (0, 0, i)))),
                     "0020|0013": str(i + 1)}.items():
            sl.SetMetaData(t, v)
        w.SetFileName(str(dcm / f"IM{i + 1:04d}.dcm"))
        w.Execute(sl)
    # NIfTI with the name in every free-text field and in a comment extension
    nii = tmp_path / "DOE_JANE" / "t1.nii.gz"
    nii.parent.mkdir()
    im = nib.Nifti1Image(arr.T.copy(), np.diag([-0.9, -0.9, 3.0, 1.0]))
    im.header["descrip"] = b"DOE^JOHN 1970-01-01"
    im.header["aux_file"] = b"DOE^JOHN"
    im.header["intent_name"] = b"DOEJOHN"
    im.header["db_name"] = b"DOE^JOHN 19700101"
    im.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=DOE^JOHN"))
    nib.save(im, str(nii))
    # NRRD with patient key/value fields
    nrrd = tmp_path / "SMITH" / "t1.nrrd"
    nrrd.parent.mkdir()
    src = sitk.Image(img)
    for k, v in {"PatientName": NAME, "PatientBirthDate": "19700101",
                 "InstitutionName": "St Elsewhere Hospital", "descrip": NAME}.items():
        src.SetMetaData(k, v)
    sitk.WriteImage(src, str(nrrd), True)

    for source in (dcm, nii, nrrd):
        vol = load_volume(source)
        mask = (vol.array > 100).astype(np.uint8)
        for ext in (".nii.gz", ".nrrd", ".mha"):
            out = tmp_path / "out" / f"{source.parent.name}_{source.name}_seg{ext}"
            write_volume(mask, vol.geometry, out, labels=True)
            _no_needle(_headers_of(out), out.name)
            back = load_volume(out, labels=True)
            assert back.geometry.same_grid(vol.geometry), out.name
            assert np.array_equal(back.array, mask), out.name
        # an image written for it (a synthetic sequence: its own provenance only)
        out = tmp_path / "out" / f"{source.parent.name}_t1ce_synth.nii.gz"
        write_volume(vol.array, vol.geometry, out)
        _no_needle(_headers_of(out), out.name)


# -- the report: orientation ---------------------------------------------------------------------
def test_key_slices_are_radiological_and_say_so(tmp_path):
    """A blob on the patient's right, in a NIfTI stored RAS and in one stored LPS, is drawn on
    the image's left in both, the side the report marks R; the report states the radiological
    convention. A slice pack (no orientation recorded) claims no side."""
    import nibabel as nib
    from napari_radiogen.core.case_report import (orientation_note, sequence_panels,
                                                  view_orientation)
    from napari_radiogen.core.io import load_case

    shape_xyz = (24, 20, 12)
    data = np.full(shape_xyz, 10.0, np.float32)
    data[16:21, 6:14, 4:8] = 500.0            # x index 16..20: +x of the RAS file = right
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = (-12.0, -10.0, -6.0)
    lps_stored = ras @ np.array([[-1, 0, 0, shape_xyz[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                 [0, 0, 0, 1]], float)         # the same world, x flipped
    for name, aff, arr in (("ras", ras, data), ("lps", lps_stored, data[::-1].copy())):
        d = tmp_path / name
        d.mkdir()
        for s in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(arr, aff), str(d / f"P_{s}.nii.gz"))
        case = load_case(d)
        o = view_orientation(case.geometry)
        assert o == {"left": "R", "right": "L", "top": "A", "bottom": "P",
                     "convention": "radiological"}, name
        panel = sequence_panels(case, 5)["flair"]
        cols = np.nonzero(panel.max(axis=0) > 100)[0]
        assert cols.max() < panel.shape[1] / 2, name     # on the image's left: the R side
    note = orientation_note(case.geometry)
    assert "radiological convention" in note and "image left R" in note
    assert view_orientation(None) is None
    assert "left and right on the image are not known" in orientation_note(None)


# -- the report: what it says about the prediction --------------------------------------------
def _result(age=67.0, sex_male=1.0, skull_stripped=True, explained=False):
    from napari_radiogen.core.explain import ExplainResult
    from napari_radiogen.core.phantom import make_phantom
    from napari_radiogen.core.pipeline import AnalysisResult
    from napari_radiogen.core.predict import PredictionResult

    case = make_phantom(2, shape=(24, 32, 28), skull_stripped=skull_stripped)
    pred = PredictionResult(case_id=case.case_id, model="predict_test", card={},
                            tasks={"idh": {"wildtype": 0.3, "mutant": 0.7},
                                   "grade": {"2": 0.2, "3": 0.8}},
                            uncertainty={"idh": {"sd": 0.1}}, attention={}, slice_index=[],
                            risk=0.5,
                            features={"volume_ml": 12.5, "age": age, "sex_male": sex_male},
                            features_source="segmented by seg_test")
    ex = []
    if explained:
        heat = np.zeros(case.geometry.shape, np.float32)
        heat[8:12, 10:20, 10:20] = 1.0
        ex = [ExplainResult(case_id=case.case_id, task="idh", method="gradcam", model="m",
                            target_class="mutant", heatmap=heat, geometry=case.geometry)]
    return AnalysisResult(case_id=case.case_id, case=case, prediction=pred, explanations=ex)


def test_an_unknown_age_or_sex_is_not_said_to_be_used(tmp_path):
    """When the age and sex were not given (the model took its training cohort's values),
    the de-identified report does not say that the prediction used them."""
    from napari_radiogen.core.case_report import write_case_report
    html = open(write_case_report(_result(age=None, sex_male=float("nan")), tmp_path / "u",
                                  render=False)["report_html"]).read()
    assert "De-identified" in html and "the prediction used" not in html
    html = open(write_case_report(_result(age=51.0, sex_male=None), tmp_path / "a",
                                  render=False)["report_html"]).read()
    assert "the prediction used age;" in html


def test_prediction_table_names_the_classes_and_the_risk_its_direction(tmp_path):
    """The grade is 2 or 3 (no grade 4: said), each task lists its classes, and the survival
    risk says which way is worse."""
    from napari_radiogen.core.case_report import write_case_report
    html = open(write_case_report(_result(), tmp_path, render=False)["report_html"]).read()
    assert "<td>grade (2 / 3)</td>" in html and "<td>idh (wildtype / mutant)</td>" in html
    assert "it cannot say grade 4" in html
    assert "a higher score means a higher hazard" in html


# -- the report: no face ------------------------------------------------------------------------
def test_deidentified_report_does_not_render_a_head_that_can_show_the_face(tmp_path,
                                                                          monkeypatch):
    """A scan that is not skull-stripped: its 3D rendering (the head's surface, face
    included) is left out of a de-identified report, and said; an identified report and a
    skull-stripped scan are rendered."""
    import napari_radiogen.core.explain as E
    from napari_radiogen.core.case_report import may_show_face, write_case_report
    calls = []

    def fake(case, result, out_png, out_gif=None, labels=None, n_frames=24):
        calls.append(out_png)
        open(out_png, "wb").close()
        return {"png": str(out_png)}
    monkeypatch.setattr(E, "render_explanation", fake)

    res = _result(skull_stripped=False, explained=True)
    assert may_show_face(res.case)
    paths = write_case_report(res, tmp_path / "deid")
    assert calls == [] and "render_png" not in paths
    assert "3D rendering left out" in open(paths["report_html"]).read()

    paths = write_case_report(res, tmp_path / "ident", deidentify=False)
    assert len(calls) == 1 and "render_png" in paths

    stripped = _result(skull_stripped=True, explained=True)
    assert not may_show_face(stripped.case)
    paths = write_case_report(stripped, tmp_path / "stripped")
    assert len(calls) == 2 and "render_png" in paths


def test_explain_command_leaves_out_the_rendering_of_a_head(tmp_path, monkeypatch):
    """``radiogen explain`` on a scan that is not skull-stripped writes the heatmap and its
    JSON but no 3D rendering unless --identified, and the JSON says so."""
    import napari_radiogen.core.explain as E
    from napari_radiogen.cli import main
    from napari_radiogen.core.io import write_volume
    from napari_radiogen.core.phantom import make_phantom

    case = make_phantom(4, shape=(24, 32, 28), skull_stripped=False, case_id="P7")
    d = tmp_path / "P7"
    for s, v in case.sequences.items():
        write_volume(v, d / f"P7_{s}.nii.gz")
    calls = []

    def fake_explain(case, model=None, **kw):
        heat = np.zeros(case.geometry.shape, np.float32)
        heat[8:12, 10:20, 10:20] = 1.0
        yield E.ExplainResult(case_id=case.case_id, task="idh", method="gradcam", model="m",
                              target_class="mutant", heatmap=heat, geometry=case.geometry)

    def fake_render(case, result, out_png, out_gif=None, labels=None, n_frames=24):
        calls.append(out_png)
        open(out_png, "wb").close()
        return {"png": str(out_png)}
    monkeypatch.setattr(E, "explain", fake_explain)
    monkeypatch.setattr(E, "render_explanation", fake_render)

    assert main(["explain", str(d), "--out", str(tmp_path / "o"), "--frames", "0"]) == 0
    info = strict_load(tmp_path / "o" / "P7_idh_gradcam.json")
    assert calls == [] and "png" not in info and info["deidentified"] is True
    assert any("3D rendering left out" in w for w in info["warnings"])
    assert (tmp_path / "o" / "P7_idh_gradcam.nii.gz").exists()

    assert main(["explain", str(d), "--out", str(tmp_path / "i"), "--frames", "0",
                 "--identified"]) == 0
    info = strict_load(tmp_path / "i" / "P7_idh_gradcam.json")
    assert len(calls) == 1 and info["png"] == "P7_idh_gradcam.png"
    assert info["deidentified"] is False


@pytest.mark.parametrize("deidentify", [True, False])
def test_the_case_id_is_kept_as_chosen(tmp_path, deidentify):
    """The case id (the folder or file name the user gave) names every output, identified or
    not: it is the user's choice of name, kept (the README says to name cases by a code)."""
    from napari_radiogen.core.pipeline import write_outputs
    res = _result()
    paths = write_outputs(res, tmp_path, render=False, deidentify=deidentify)
    assert strict_load(paths["analysis"])["case_id"] == res.case_id
    assert all(res.case_id in p for p in paths.values())
