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
init: seg_brats_segresnet         # optional: fine-tune from a model of the same network and
                                  # input (a name or a .safetensors path)
```

Fine-tuning: with ``init`` (``radiogen train --init``, the Training widget's "start from") the
network is the init model's own architecture (from its card) with its weights, checked against
what the task would feed it (:meth:`TrainTask.init_mismatches`) before any training; the card of
the result records where it started (``fine_tuned_from``) and which CV test patients the init
model had already trained on.
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


def freeze_match(name: str, spec: Any) -> bool:
    """A parameter name matched by a ``train.freeze`` entry: a prefix, or a pattern with
    ``*`` wildcards (``members.*.encoders``). Stage numbers are not names (see the task)."""
    from fnmatch import fnmatchcase
    s = str(spec)
    return name.startswith(s) or ("*" in s and fnmatchcase(name, s + "*"))


def _dig(d: Dict[str, Any], dotted: str) -> Any:
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _jsonable(v: Any) -> Any:
    import json
    return json.loads(json.dumps(v, default=str))


def _short(v: Any) -> str:
    t = str(v)
    return t if len(t) <= 100 else t[:97] + "..."


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
    #: what :meth:`evaluate`'s ``"score"`` is (progress items carry it as ``score_name``;
    #: ``evaluate`` may return its own ``"score_name"``)
    score_name: str = "score"
    #: the citations of the methods (networks, libraries) a card keeps whatever data the run
    #: used; the datasets' citations go with the shared datasets only
    method_citations: Tuple[str, ...] = ()
    #: the run's ``CancelToken`` (set by the engine; None = not cancellable): ``evaluate``
    #: calls :meth:`check_cancel` once per batch or case, so a cancel during a validation or
    #: a test fold stops within one batch
    cancel: Any = None

    def __init__(self, cfg: Dict[str, Any]):
        self.cfg = cfg
        #: what the user should know about the data (e.g. rows of the labels table without
        #: images, left out), filled by :meth:`patients`; the engine says each once
        self.notes: List[str] = []

    def check_cancel(self) -> None:
        """Raise ``Cancelled`` when the run's cancel token is set."""
        from ..progress import check
        check(self.cancel)

    # -- data ----------------------------------------------------------------------------------
    @abstractmethod
    def patients(self) -> List[PatientRecord]:
        """All patients available in ``cfg['data']`` (validated: raise ConfigError on bad input)."""

    @abstractmethod
    def make_datasets(self, train_ids: Sequence[str], val_ids: Sequence[str]) -> Tuple[Any, Any]:
        """torch Datasets for the given patient ids (val may be empty)."""

    def use_patients(self, records: List[PatientRecord]) -> None:
        """The patients the run will use (after ``--limit``): a task that caches data may
        restrict its work (and its cache) to them. Default: nothing."""

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

    # -- fine-tuning -----------------------------------------------------------------------------
    #: card fields that must agree between an ``init`` model and this task's own card: they fix
    #: what the network is fed (channel order, grid, intensity normalisation, input kind)
    INIT_KEYS = ("sequences", "spacing_mm", "input_size", "normalisation", "input.kind",
                 "input.window", "input.depth")
    #: of those, the ones some cards give as prose (compared only when structured)
    FREE_TEXT_KEYS = ("input_size", "normalisation")
    #: what a missing key means (a tumour-centred card without ``input.window`` has the fixed
    #: window), so a card that omits it is still compared
    INIT_DEFAULTS = {"input.window": {"mode": "fixed"}}
    #: ``train.freeze`` may name trunk stages by number (the 3D CNN); others refuse numbers
    STAGE_FREEZE = False

    def init_model(self) -> Optional[Tuple[Any, Dict[str, Any]]]:
        """``(path, card)`` of the config's ``init`` model, checked (None without ``init``)."""
        spec = self.cfg.get("init")
        if not spec:
            return None
        if getattr(self, "_init", None) is None:
            from ..errors import ConfigError, ModelFileError
            from ..models import find_model, read_card
            try:
                path = find_model(str(spec))
                card = read_card(path)
            except ModelFileError as e:
                raise ConfigError(f"init: {e}") from None
            if card.get("task") != self.model_task:
                raise ConfigError(
                    f"init: {path.stem} is a {card.get('task')!r} model; task {self.name} "
                    f"trains {self.model_task!r} models")
            bad = self.init_mismatches(card)
            if bad:
                raise ConfigError(
                    f"init: {path.stem} was trained on other inputs than task {self.name} "
                    f"builds ({'; '.join(bad)}); pick a config of the same input kind")
            bad = self.architecture_conflicts(card)
            if bad:
                raise ConfigError(
                    f"init: the config's model section describes another network than "
                    f"{path.stem} ({'; '.join(bad)}); fine-tuning keeps the init model's "
                    "architecture: remove those model keys or make them match")
            self._init = (path, card)
        return self._init

    def architecture_conflicts(self, card: Dict[str, Any]) -> List[str]:
        """Where the config's own architecture contradicts the ``init`` model's (builder, and
        keyword arguments both give): the card would otherwise describe a network that was
        not trained (e.g. a config saying ``clinical: false`` for a network fed age and sex).
        A fold ensemble (``build_x_ensemble``) of the config's network (``build_x``) is the
        same network. Keys the config leaves out are the init model's."""
        try:
            mine = self.architecture()
        except Exception:       # a task that cannot describe its network without data
            return []
        theirs = card.get("architecture") or {}
        b1 = str(mine.get("builder", "")).replace("_ensemble", "")
        b2 = str(theirs.get("builder", "")).replace("_ensemble", "")
        if b1 != b2:
            return [f"builder {theirs.get('builder')} in the model, {mine.get('builder')} here"]
        k1, k2 = mine.get("kwargs") or {}, theirs.get("kwargs") or {}
        return [f"{k}: {_short(k2[k])} in the model, {_short(k1[k])} here"
                for k in sorted(set(k1) & set(k2)) if _jsonable(k1[k]) != _jsonable(k2[k])]

    def init_digest(self) -> Optional[str]:
        """SHA-256 of the ``init`` model file (None without ``init``): what a run started
        from, in its card and in the resume check."""
        init = self.init_model()
        if init is None:
            return None
        from ..models import weights_sha256
        return weights_sha256(init[0])

    def init_mismatches(self, card: Dict[str, Any]) -> List[str]:
        """Differences between ``card`` and this task's own card on :attr:`INIT_KEYS` (keys
        absent from either side are not compared, nor free-text descriptions: two wordings
        of one normalisation are not a mismatch; structured values and versions are)."""
        mine = self.card_fields()
        out = []
        for key in self.INIT_KEYS:
            a, b = _dig(card, key), _dig(mine, key)
            if key in self.INIT_DEFAULTS and _dig(card, "input.kind") == _dig(mine, "input.kind"):
                a = self.INIT_DEFAULTS[key] if a is None else a
                b = self.INIT_DEFAULTS[key] if b is None else b
            if a is None or b is None or (key in self.FREE_TEXT_KEYS and isinstance(a, str)
                                          and isinstance(b, str)):
                continue
            if isinstance(a, dict) and isinstance(b, dict) and "version" in a and "version" in b:
                a, b = a["version"], b["version"]
            if _jsonable(a) != _jsonable(b):
                out.append(f"{key}: {_short(a)} in the model, {_short(b)} here")
        return out

    def model_architecture(self) -> Dict[str, Any]:
        """The architecture trained: the ``init`` model's (from its card), else the task's."""
        init = self.init_model()
        return dict(init[1]["architecture"]) if init else self.architecture()

    def make_model(self):
        """The network to train: :meth:`build_model`, or the ``init`` model with its weights."""
        init = self.init_model()
        if init is None:
            return self.build_model()
        from ..errors import ConfigError, ModelFileError
        from ..models import build_from_card, load_state_dict_file
        path, card = init
        model = build_from_card(card)
        try:
            model.load_state_dict(load_state_dict_file(path), strict=True)
        except (RuntimeError, ModelFileError) as e:
            raise ConfigError(f"init: {path.name}: weights do not fit the architecture in its "
                              f"card ({str(e).splitlines()[0]})") from None
        return model.float()

    def freeze(self, model, spec: Sequence[str]) -> None:
        """Freeze parameters whose names start with any prefix in ``spec``; a prefix may hold
        ``*`` wildcards (``members.*.encoders``: the slice encoders of every ensemble member).
        Override if needed."""
        for n, p in model.named_parameters():
            if any(freeze_match(n, s) for s in spec):
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
        early stopping and checkpoint selection (NaN where it cannot be computed, e.g. an AUC
        on a one-class validation split: the engine then ranks by ``"loss"`` if given, lower
        is better, and never compares a loss with a score), and may include ``"predictions"`` (a list of
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
