"""The card of a prediction training run names the shared TCGA-LGG dataset, with the patients
count and its citations (those of the shipped prediction models' cards), when the run used the
shared slice packs; a user's own folder of packs stays "user data", with the methods' papers
only. The card fields are built as the engine builds them, without training."""
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["prediction_mil", "prediction_mil_roi", "prediction_cnn3d", "prediction_cnn3d_roi",
           "prediction_mil_roi_finetune"]
DATA_PAPERS = ("Buda M", "Ceccarelli M", "Liu J")


def _shipped_citations():
    card = json.loads((ROOT / "napari_radiogen" / "weights" / "predict_mil_roi.card.json")
                      .read_text())
    return card["citations"]


def _fields(name, n=8, **overrides):
    from napari_radiogen.core.train import engine
    from napari_radiogen.core.train.base import TASKS
    from napari_radiogen.core.train.config import load_config
    import napari_radiogen.core.train.tasks  # noqa: F401  (registers the tasks)
    cfg = load_config(name, **overrides)
    task = TASKS[cfg["task"]](cfg)
    return task, engine.data_card_fields(task, cfg, n)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_run_on_the_shared_packs_names_and_cites_the_dataset(name, shared_data):
    task, f = _fields(name, limit=8)
    assert f["datasets"].startswith("TCGA-LGG"), f["datasets"]
    assert "user data" not in f["datasets"]
    assert "8 patients used by this run" in f["datasets"]
    shipped = _shipped_citations()
    cites = f["citations"]
    for paper in DATA_PAPERS:
        assert any(c.startswith(paper) for c in cites), (paper, cites)
    # the very entries of the shipped models' cards, none invented
    assert all(c in shipped for c in cites), [c for c in cites if c not in shipped]
    assert any("MONAI" in c for c in cites)
    assert any("Ilse" in c for c in cites) == (task.kind.startswith("mil"))


@pytest.mark.parametrize("name", ["prediction_mil", "prediction_cnn3d_roi"])
def test_a_user_folder_stays_user_data_with_the_methods_papers_only(name, tmp_path,
                                                                    shared_data):
    import pandas as pd
    src = shared_data / "tcga-lgg"
    own = tmp_path / "mycohort"
    own.mkdir()
    tab = pd.read_csv(src / "clinical.csv", dtype={"patient_id": str})
    ids = [i for i in tab.patient_id if (src / f"{i}.h5").exists()][:3]
    for i in ids:
        shutil.copy(src / f"{i}.h5", own / f"{i}.h5")
    tab[tab.patient_id.isin(ids)].to_csv(own / "clinical.csv", index=False)
    _, f = _fields(name, n=3, data=str(own))
    assert f["datasets"].startswith("user data: folder 'mycohort'"), f["datasets"]
    assert "3 patients used by this run" in f["datasets"]
    assert "TCGA-LGG (" not in f["datasets"] and str(tmp_path) not in f["datasets"]
    cites = f["citations"]
    assert cites and any("MONAI" in c for c in cites)
    assert not any(c.startswith(p) for c in cites for p in DATA_PAPERS), cites
