"""The contract between the training engine and the models it trains.

The engine (``napari_radiogen.core.train.engine``) owns the loop: devices, DDP under torchrun,
mixed precision, AdamW + OneCycleLR, early stopping, layer freezing, atomic checkpoints, resume,
cancel, progress, cross-validation folds, the model card and the report. A model family plugs in
as a :class:`TrainTask` subclass registered under a name; a YAML config names it:

```yaml
task: segmentation-brats          # a registered TrainTask
data: ../shared/data/brats2021    # relative paths resolve against the config file, then CWD
model: {arch: segresnet, init_filters: 8}
train: {epochs: 50, batch_size: 2, lr: 3e-3, weight_decay: 1e-4, amp: true, patience: 10,
        freeze: [], sampler: weighted, loss: {name: dicece}}
folds: 5                          # K-fold CV (patient level); 0/1 = one train/val split
seed: 0
```
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

TASKS: Dict[str, Type["TrainTask"]] = {}


def register_task(name: str) -> Callable[[Type["TrainTask"]], Type["TrainTask"]]:
    def deco(cls: Type["TrainTask"]) -> Type["TrainTask"]:
        cls.name = name
        TASKS[name] = cls
        return cls
    return deco


@dataclass
class PatientRecord:
    """One patient (the unit of splitting: never split a patient's slices across folds)."""
    patient_id: str
    strata: Optional[str] = None         # label used for stratified splits (None = unstratified)
    group: Optional[str] = None          # duplicates/near-duplicates share a group: same fold
    info: Dict[str, Any] = field(default_factory=dict)


class TrainTask(ABC):
    """A trainable model family. Subclasses are registered with :func:`register_task`."""

    name: str = "abstract"
    #: card "task" value of the models this produces (e.g. "segmentation", "prediction")
    model_task: str = "abstract"

    def __init__(self, cfg: Dict[str, Any]):
        self.cfg = cfg

    # -- data ----------------------------------------------------------------------------------
    @abstractmethod
    def patients(self) -> List[PatientRecord]:
        """All patients available in ``cfg['data']`` (validated: raise ConfigError on bad input)."""

    @abstractmethod
    def make_datasets(self, train_ids: Sequence[str], val_ids: Sequence[str]) -> Tuple[Any, Any]:
        """torch Datasets for the given patient ids (val may be empty)."""

    def sample_weights(self, train_dataset: Any) -> Optional[Sequence[float]]:
        """Per-item weights for a weighted sampler (``train.sampler: weighted``); None = uniform."""
        return None

    def collate_fn(self) -> Optional[Callable]:
        return None

    # -- model ---------------------------------------------------------------------------------
    @abstractmethod
    def architecture(self) -> Dict[str, Any]:
        """``{"builder": "src_models.<mod>:<fn>", "kwargs": {...}}`` for the model card."""

    def build_model(self):
        from ..models import build_from_card
        return build_from_card({"architecture": self.architecture()})

    def freeze(self, model, spec: Sequence[str]) -> None:
        """Freeze parameters whose names start with any prefix in ``spec`` (override if needed)."""
        for n, p in model.named_parameters():
            if any(n.startswith(s) for s in spec):
                p.requires_grad_(False)

    # -- optimisation --------------------------------------------------------------------------
    @abstractmethod
    def training_step(self, model, batch, device) -> Tuple[Any, Dict[str, float]]:
        """Return (loss tensor, logs) for one batch; the engine does backward/step/AMP.

        Under torchrun ``model`` is a ``DistributedDataParallel`` wrapper: call it
        (``model(x)``); for attributes use ``getattr(model, "module", model)``. ``logs`` values
        (floats) are averaged over the epoch and logged as ``train_<key>``."""

    @abstractmethod
    def evaluate(self, model, dataset, device) -> Dict[str, Any]:
        """Validation metrics on a dataset. Must include ``"score"`` (higher is better) used for
        early stopping and checkpoint selection, and may include ``"predictions"`` (a list of
        per-patient dicts) that the report turns into ROC / KM / Dice figures.

        Prediction dicts the report understands (``core/evaluate/report.py``), one per patient
        (and per target for multi-task models):
        classification ``{"patient_id", "target": "idh", "y_true": 1, "y_prob": 0.83,
        "classes": ["wildtype", "mutant"]}`` (binary: ``y_prob`` = P(classes[1]); multi-class:
        a list of probabilities); segmentation ``{"patient_id", "dice": {"WT": .9, ...},
        "hd95": {"WT": 3.2, ...}}``; survival ``{"patient_id", "time", "event", "risk"}``.
        Flat rows work too: ``{"idh": 0.8, "y_idh": 1}`` (one target per ``y_<t>``),
        ``{"dice_WT": .., "hd95_WT": ..}``, ``{"risk", "os_days", "os_event"}``; other numeric
        keys (e.g. ``psnr_db``) are summarised per ``target``."""

    def baseline(self, train_ids: Sequence[str], test_ids: Sequence[str]
                 ) -> Optional[Dict[str, float]]:
        """Optional: metrics of a simple baseline (e.g. logistic regression on age + sex, a
        threshold segmentation) fitted on ``train_ids`` and scored on ``test_ids``, the same
        keys as :meth:`evaluate`. The engine puts it in the card beside the model (same folds)."""
        return None

    # -- card ----------------------------------------------------------------------------------
    def card_fields(self) -> Dict[str, Any]:
        """Task-specific card fields: sequences, spacing_mm, input_size, normalisation, classes."""
        return {}
