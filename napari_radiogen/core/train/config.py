"""Training configs: YAML files (or dicts), defaults, path resolution and validation.

A config (see ``napari_radiogen/configs/*.yaml``; ``radiogen train --list`` shows them)::

    name: my-idh-model          # name of the produced model file (default: the task name)
    description: one line shown by --list
    task: prediction-mil        # a registered TrainTask (see core/train/tasks/)
    data: ../shared/data/tcga-lgg   # relative paths resolve against the config file, then CWD
    labels: labels.csv          # optional user-cohort table (see below)
    model: {...}                # task-specific
    train:
      epochs: 20
      batch_size: 16
      lr: 1.0e-3                # max LR of OneCycleLR (scheduler: onecycle | none)
      weight_decay: 1.0e-4      # AdamW
      amp: true                 # autocast on CUDA (bf16 where supported, else fp16 + GradScaler)
      patience: 5               # early stopping on the validation score (0 = off)
      val_fraction: 0.2         # validation patients carved from each training part
      freeze: []                # parameter-name prefixes to freeze (fine-tuning; * = any)
      grad_clip: 1.0            # max gradient norm (null = off)
      sampler: null             # "weighted" = WeightedRandomSampler from task.sample_weights
      loss: {name: ce}          # task-specific: ce | focal (gamma, class_weights) | dicece | cox
      augment: true             # the task builds its MONAI transforms when true
      num_workers: 0
    folds: 5                    # K-fold patient-level CV; 0 or 1 = one held-out test split
    test_fraction: 0.2          # with folds <= 1: share of patients held out for the report
    final: best_fold            # shipped model: best_fold (by inner validation) | retrain
    seed: 0
    init: null                  # fine-tune: start from this model (name or .safetensors path)

User cohorts (CSV convention): a table with a ``patient_id`` column, one column per label the
task needs (e.g. ``idh`` with values ``mutant``/``wildtype``), and optionally a ``path`` column
pointing at each patient's case folder (relative paths resolve against the CSV's folder).
Rows naming patients that the data folder lacks are left out (a note says how many; a table
none of whose patients has images is refused); missing labels (unless the config says
``missing_labels: drop``) and label columns with a single class are refused before training.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..case import SEQUENCES
from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"

TRAIN_DEFAULTS: Dict[str, Any] = {
    "epochs": 10, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "amp": True,
    "patience": 0, "val_fraction": 0.2, "freeze": [], "grad_clip": None, "sampler": None,
    "loss": {"name": "ce"}, "augment": True, "num_workers": 0, "scheduler": "onecycle",
    "max_minutes": None,
}
TOP_DEFAULTS: Dict[str, Any] = {"folds": 0, "test_fraction": 0.2, "final": "best_fold", "seed": 0,
                                "model": {}}
PATH_KEYS = ("data", "labels")
#: the keys a config may hold (``model:`` is task specific and not checked); a typo such as
#: ``epoch: 1`` is refused by :func:`check_keys` instead of silently training the default
TOP_KEYS = ("name", "description", "task", "data", "labels", "model", "train", "folds",
            "test_fraction", "final", "seed", "init", "sequences", "target", "positive",
            "missing_labels", "phantom", "synthesis", "cache_dir", "limit")
TRAIN_KEYS = tuple(TRAIN_DEFAULTS) + ("pct_start", "find_unused_parameters")
#: a model name: letters, digits, '.', '_' and '-', starting with a letter, digit or '_' (it
#: names files; a leading '-' would read as an option on the command line)
NAME_RE = r"[A-Za-z0-9_][A-Za-z0-9._-]*"


def check_name(name: Any) -> str:
    """``name`` if it is a valid model name, else ConfigError (it names the model file, the
    installed model and the card: no path separators, no leading '.', no spaces)."""
    import re
    if not isinstance(name, str) or not re.fullmatch(NAME_RE, name) or len(name) > 120:
        raise ConfigError(f"model name {name!r} is not allowed: use letters, digits, '.', '_' "
                          "and '-' only (no spaces or path separators, not starting with '.' or '-')")
    return name


def _did_you_mean(key: str, known) -> str:
    import difflib
    m = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def check_keys(cfg: Dict[str, Any]) -> None:
    """ConfigError for a key the config's top level or ``train:`` section does not know."""
    for k in cfg:
        if not str(k).startswith("_") and k not in TOP_KEYS:
            raise ConfigError(f"unknown config key {k!r}{_did_you_mean(str(k), TOP_KEYS)}; "
                              f"known keys: {', '.join(TOP_KEYS)}")
    for k in cfg.get("train") or {}:
        if k not in TRAIN_KEYS:
            raise ConfigError(f"unknown key train.{k}{_did_you_mean(str(k), TRAIN_KEYS)}; "
                              f"known train keys: {', '.join(TRAIN_KEYS)}")


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_path(value: str, base: Optional[Path]) -> str:
    p = Path(os.path.expanduser(str(value)))
    if p.is_absolute():
        return str(p)
    if base is not None and (base / p).exists():
        return str((base / p).resolve())
    if p.exists():
        return str(p.resolve())
    # the package's configs name ../shared/data (beside the repository); $RADIOGEN_SHARED_DATA
    # says where that folder is when the repository is elsewhere (CI, an installed package)
    shared = os.environ.get("RADIOGEN_SHARED_DATA")
    parts = p.parts
    if shared and "shared" in parts:
        i = parts.index("shared")
        if i + 1 < len(parts) and parts[i + 1] == "data":
            cand = Path(shared).joinpath(*parts[i + 2:])
            if cand.exists():
                return str(cand.resolve())
    root = CONFIG_DIR.parent.parent
    if (root / p).exists():
        return str((root / p).resolve())
    return str((base / p) if base is not None else p)


def missing_data_message(given: str, resolved: str) -> str:
    """Why a run has no data, and the two ways to give it: a config's shared-data path (the
    package's configs name ``../shared/data/...`` beside the repository, which an installed
    package does not have) or a folder of the user's."""
    parts = Path(str(given)).parts
    if "shared" in parts and parts[parts.index("shared") + 1:parts.index("shared") + 2] \
            == ("data",):
        sub = "/".join(parts[parts.index("shared") + 2:]) or "."
        where = ("; RADIOGEN_SHARED_DATA is set, but it has no " + repr(sub)
                 if os.environ.get("RADIOGEN_SHARED_DATA") else "")
        return (f"data folder not found: the config's {given!r} (the shared data beside the "
                f"repository){where}. Give your data with --data FOLDER, or set "
                f"RADIOGEN_SHARED_DATA to the folder that holds {sub!r}")
    return f"data folder not found: {resolved!r}; give an existing folder with --data FOLDER"


def find_config(name_or_path: Union[str, os.PathLike]) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / f"{name_or_path}", CONFIG_DIR / f"{name_or_path}.yaml"):
        if cand.exists():
            return cand
    known = ", ".join(c["name"] for c in list_configs()) or "none"
    raise ConfigError(f"config {str(name_or_path)!r} not found (shipped configs: {known})")


def load_config(src: Union[str, os.PathLike, Dict[str, Any]], **overrides: Any) -> Dict[str, Any]:
    """Read a YAML file (or take a dict), apply defaults and ``overrides`` (dotted keys allowed,
    e.g. ``{"train.epochs": 2}``), resolve paths and validate the generic parts."""
    import yaml

    base: Optional[Path] = None
    if isinstance(src, dict):
        raw = copy.deepcopy(src)
        base = Path(raw.pop("_base_dir")) if raw.get("_base_dir") else None
    else:
        path = find_config(src)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a mapping of keys to values")
        base = path.resolve().parent
        raw.setdefault("_source", str(path.resolve()))
    cfg = _merge(TOP_DEFAULTS, raw)
    cfg["train"] = _merge(TRAIN_DEFAULTS, raw.get("train") or {})
    for k, v in overrides.items():
        if v is None:
            continue
        d = cfg
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    for k in PATH_KEYS:
        if isinstance(cfg.get(k), str) and cfg[k] not in ("phantom", "synthetic"):
            given = cfg[k]
            cfg[k] = resolve_path(given, base)
            if k == "data" and not Path(cfg[k]).exists():
                raise ConfigError(missing_data_message(given, cfg[k]))
    init = cfg.get("init")
    if init is not None and (not isinstance(init, str) or not init.strip()):
        raise ConfigError(f"init must name a model or a .safetensors file (got {init!r})")
    if isinstance(init, str) and init.endswith(".safetensors"):
        cfg["init"] = resolve_path(init, base)
    validate(cfg)
    return cfg


def validate(cfg: Dict[str, Any]) -> None:
    from . import tasks as _tasks  # noqa: F401  (registers the task families)
    from .base import TASKS

    task = cfg.get("task")
    if not task:
        raise ConfigError("the config names no task (e.g. `task: phantom-demo`)")
    if task not in TASKS:
        broken = "; ".join(f"tasks/{m}.py failed to import: {e}"
                           for m, e in _tasks.IMPORT_ERRORS.items())
        raise ConfigError(f"unknown task {task!r} (registered: {', '.join(sorted(TASKS)) or 'none'})"
                          + (f" [{broken}]" if broken else ""))
    if cfg.get("name") is not None:
        check_name(cfg["name"])
    t = cfg["train"]
    if not isinstance(t, dict):
        raise ConfigError("train must be a mapping of keys to values (e.g. `train: {epochs: 2}`)")
    for key in ("epochs", "batch_size"):
        if not _is_int(t.get(key)) or t[key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer (got {t.get(key)!r})")
    if not _is_int(cfg.get("folds")) or cfg["folds"] < 0:
        raise ConfigError(f"folds must be an integer >= 0 (got {cfg.get('folds')!r})")
    if not _is_int(cfg.get("seed")):
        raise ConfigError(f"seed must be an integer (got {cfg.get('seed')!r})")
    _number(t, "lr", "train.lr", low=0.0)
    _number(t, "weight_decay", "train.weight_decay", low=0.0)
    _number(t, "grad_clip", "train.grad_clip", low=0.0, optional=True)   # 0 or null = off
    _number(t, "max_minutes", "train.max_minutes", low=0.0, low_open=True, optional=True)
    _number(t, "val_fraction", "train.val_fraction", low=0.0, high=1.0)
    _number(cfg, "test_fraction", "test_fraction", low=0.0, high=1.0)
    if "pct_start" in t:
        _number(t, "pct_start", "train.pct_start", low=0.0, high=1.0, low_open=True)
    for key in ("patience", "num_workers"):
        if not _is_int(t.get(key) or 0) or (t.get(key) or 0) < 0:
            raise ConfigError(f"train.{key} must be an integer >= 0 (got {t.get(key)!r})")
    if t.get("scheduler", "onecycle") not in ("onecycle", "none", None):
        raise ConfigError(f"train.scheduler must be onecycle or none (got {t.get('scheduler')!r})")
    if t.get("amp", True) not in (True, False, "fp16", "bf16", None):
        raise ConfigError(f"train.amp must be true, false, fp16 or bf16 (got {t.get('amp')!r})")
    if cfg.get("final") not in ("best_fold", "retrain"):
        raise ConfigError(f"final must be best_fold or retrain (got {cfg.get('final')!r})")
    seqs = cfg.get("sequences") or (cfg.get("model") or {}).get("sequences")
    if seqs is not None:
        if isinstance(seqs, str):
            seqs = [seqs]
        bad = [s for s in seqs if s not in SEQUENCES]
        if bad:
            raise ConfigError(f"unknown sequence(s) {', '.join(map(str, bad))} in the config "
                              f"(known: {', '.join(SEQUENCES)})")
    if t.get("sampler") not in (None, "weighted", "uniform", "none"):
        raise ConfigError(f"train.sampler must be weighted or null (got {t.get('sampler')!r})")
    if not isinstance(t.get("freeze") or [], list):
        raise ConfigError("train.freeze must be a list of parameter-name prefixes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(d: Dict[str, Any], key: str, label: str, *, low: Optional[float] = None,
            high: Optional[float] = None, low_open: bool = False, optional: bool = False) -> None:
    """ConfigError unless ``d[key]`` is a number (YAML may give ``1e-3`` as a string) in range
    (``[low, high)``, or ``(low, high)`` with ``low_open``); ``optional``: null is allowed."""
    v = d.get(key)
    if v is None and optional:
        return
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be a number (got {v!r})") from None
    import math
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high
    if not ok:
        rng = ("(" if low_open else "[") + f"{low:g}, " + (f"{high:g})" if high is not None
                                                          else "inf)")
        raise ConfigError(f"{label} must be in {rng} (got {v!r})")


def list_configs() -> List[Dict[str, Any]]:
    """The example configs shipped in ``napari_radiogen/configs/``."""
    import yaml

    out = []
    for f in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            raw = yaml.safe_load(f.read_text()) or {}
        except Exception:
            raw = {}
        out.append({"name": f.stem, "path": str(f), "task": raw.get("task"),
                    "description": raw.get("description", ""), "data": raw.get("data")})
    return out
