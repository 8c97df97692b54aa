"""What the package writes: strict JSON (no NaN), de-identified predictions, and the in-sample
check of a case against a model card's training patients (core.outputs, core.insample)."""
import json
from pathlib import Path

import numpy as np
import pytest

from _json_helpers import strict_loads

from napari_radiogen.core import insample
from napari_radiogen.core.notes import IN_SAMPLE, warning_key
from napari_radiogen.core.outputs import (deidentified_prediction, dumps, json_safe,
                                          write_json)

WEIGHTS = Path(__file__).resolve().parent.parent / "napari_radiogen" / "weights"


def test_json_safe_writes_null_for_non_finite_numbers(tmp_path):
    from napari_radiogen.core.notes import Note
    data = {"hd95_mm": float("nan"), "inf": float("inf"), "f32": np.float32(0.5),
            "nan32": np.float32("nan"), "i": np.int64(3), "b": np.bool_(True),
            "arr": np.array([1.0, np.nan]), "t": (1, float("-inf")), "p": Path("/x"),
            "note": Note("a warning", "kind"), np.int64(4): "numpy key"}
    with pytest.raises(ValueError):
        json.dumps(data, allow_nan=False, default=float)       # what the writers did
    text = dumps(data)
    back = strict_loads(text)
    assert back == {"hd95_mm": None, "inf": None, "f32": 0.5, "nan32": None, "i": 3, "b": True,
                    "arr": [1.0, None], "t": [1, None], "p": "/x", "note": "a warning",
                    "4": "numpy key"}
    safe = json_safe(data)
    assert warning_key(safe["note"]) == "kind"                  # a Note stays a Note in memory
    p = write_json(tmp_path / "x.json", [float("nan")])
    assert strict_loads(p.read_text()) == [None]


def test_deidentified_prediction_leaves_out_clinical_features_only():
    pred = {"model": "predict_radiomics", "tasks": {"idh": {"mutant": 0.7}},
            "features": {"volume_ml": 12.0, "age": 67.0, "sex_male": 1.0}}
    out, removed = deidentified_prediction(pred)
    assert out["features"] == {"volume_ml": 12.0} and out["tasks"] == pred["tasks"]
    assert removed == ["features.age", "features.sex_male"]
    assert pred["features"]["age"] == 67.0                       # the input is not changed
    assert deidentified_prediction({"model": "m"}) == ({"model": "m"}, [])


def _card(name):
    p = WEIGHTS / f"{name}.card.json"
    if not p.exists():
        pytest.skip(f"{name} not shipped")
    return json.loads(p.read_text())


def test_training_patients_are_those_of_the_shipped_weights():
    """A segmentation card's ``patients`` is its CV cohort; ``shipped_model_trained_on`` the
    patients of the weights shipped (a fold model may be). The synthesis model's test fold holds
    the bundled sample case: not in-sample there."""
    card = _card("seg_brats_attunet")
    td = card["training_data"]
    held = sorted(set(td["patients"]) - set(td["shipped_model_trained_on"]))
    assert held                                                  # e.g. BraTS2021_01478
    assert not insample.in_training_data(held[0], card)
    assert insample.in_training_data("BraTS2021_00006", card)
    synth = _card("synth_seq2seq2d")
    assert synth["sample_case"]["held_out"] is True
    assert not insample.in_training_data("BraTS2021_00006", synth)
    assert insample.in_training_data(synth["training_data"]["patients"][0], synth)
    pred = _card("predict_ensemble")
    assert insample.in_training_data("TCGA_CS_4941", pred)
    assert insample.in_training_data("tcga-cs-4941", pred)       # barcodes written both ways
    assert not insample.in_training_data("PHANTOM_0001", pred)
    assert not insample.in_training_data("TCGA_CS_4941", {"name": "no list"})


def test_in_sample_note_names_the_case_and_the_model():
    card = {"training_data": {"patients": ["BraTS2021_01476"]}}
    n = insample.in_sample_note("BraTS2021_01476", "seg_x", card, insample.DICE)
    assert n == ("BraTS2021_01476 was in seg_x's training data: its Dice here is in-sample, "
                 "not a validation")
    assert warning_key(n) == IN_SAMPLE
    assert insample.in_sample_note("BraTS2021_09999", "seg_x", card, insample.DICE) is None


def test_model_cards_and_the_model_listing_are_strict_json(tmp_path, capsys):
    """A card holding an undefined metric (NaN) is written with null, in the .card.json and
    inside the safetensors file, and ``radiogen models --json`` prints strict JSON although a
    shipped card file holds a NaN."""
    import torch
    from safetensors import safe_open
    from napari_radiogen.cli import main
    from napari_radiogen.core.models import save_model
    card = {"name": "m", "task": "segmentation", "architecture": {"builder": "x"},
            "metrics": {"hd95_mm": {"ET": float("nan")}, "dice": np.float32(0.5)}}
    p = save_model(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, card)
    side = strict_loads((tmp_path / "m.card.json").read_text())
    assert side["metrics"] == {"hd95_mm": {"ET": None}, "dice": 0.5}
    with safe_open(str(p), framework="pt") as f:
        assert strict_loads(f.metadata()["card"])["metrics"]["hd95_mm"]["ET"] is None
    assert main(["models", "--json"]) == 0
    listing = strict_loads(capsys.readouterr().out)
    assert listing and all("card" in m for m in listing)


def test_clinical_feature_keys_follow_the_radiomics_models_clinical_features():
    """The de-identification's clinical keys come from ``core.radiomics.CLINICAL_FEATURES``
    (one source): a clinical feature added there is left out of written files too."""
    import subprocess
    import sys
    from napari_radiogen.core.outputs import CLINICAL_FEATURE_KEYS
    from napari_radiogen.core.radiomics import CLINICAL_FEATURES
    assert set(CLINICAL_FEATURES) <= set(CLINICAL_FEATURE_KEYS)
    assert {"sex", "gender", "age_at_initial_pathologic"} <= set(CLINICAL_FEATURE_KEYS)
    script = ("import napari_radiogen.core.radiomics as r; r.CLINICAL_FEATURES.append('kps'); "
              "from napari_radiogen.core.outputs import CLINICAL_FEATURE_KEYS as K, "
              "deidentified_prediction as d; "
              "print('kps' in K, d({'features': {'kps': 90, 'volume_ml': 1}})[1])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "['features.kps']"]
