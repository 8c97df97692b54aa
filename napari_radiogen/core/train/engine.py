"""The training engine: one loop for every model family (see :mod:`.base` for the contract).

``train(cfg, out_dir, ...)`` is a core generator: it yields :class:`TrainProgress` (a
:class:`~napari_radiogen.core.progress.Progress` with fold/epoch/step, loss, metrics, time left
and the best validation score so far) and finally a :class:`TrainResult`.

Protocol
--------
* Patients are split at patient level (stratified by ``PatientRecord.strata``, grouped by
  ``.group``, seeded). With ``folds: K >= 2`` each fold trains a model on K-1 parts and is
  tested on the held-out part; with ``folds`` 0/1 one ``test_fraction`` of the patients is held
  out. Inside every training part a validation split (``train.val_fraction``) is carved for
  early stopping and best-epoch selection. **The held-out (test) part is used for nothing but
  the reported metrics.**
* The CV table = the task's metrics on each held-out fold, with mean, SD and a 95% t-interval
  over folds (and pooled-prediction bootstrap CIs in the report).
* Shipped model (``final``): ``best_fold`` (default) = the fold model with the best *inner
  validation* score; ``retrain`` = a model retrained on all patients for the median of the folds'
  best epochs (chosen by inner validation). Neither looks at test folds.
* AdamW + OneCycleLR (``train.scheduler: onecycle|none``), gradient clipping, layer freezing,
  weighted sampler, mixed precision on CUDA (bf16 autocast where supported, else fp16 autocast +
  GradScaler), early stopping (``train.patience``), a wall-clock budget (``train.max_minutes``).
* Checkpoint after every epoch (atomic, see :mod:`.checkpoint`); ``resume=True`` continues from
  ``out_dir/checkpoint.safetensors`` (same config and splits); a cancel (``CancelToken``) or a
  kill keeps the last good checkpoint.
* Under ``torchrun`` (``WORLD_SIZE > 1``) it runs DDP (see :mod:`.ddp`); only rank 0 writes files.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .. import progress as _progress
from ..errors import ConfigError
from ..outputs import check_out_dir, dumps
from ..progress import CancelToken, Progress
from . import checkpoint as ckpt
from . import ddp
from . import splits as sp
from .base import TASKS, PatientRecord, TrainTask
from .config import load_config


@dataclass
class TrainProgress(Progress):
    """Progress of a training run (``done/total`` = optimisation steps over the whole run).

    ``stage`` is ``prepare``, ``train`` (one item per step), ``epoch`` (one item closing each
    epoch, with ``epoch_end=True`` and the epoch's metrics), ``test`` or ``report``: a change of
    stage always gets through the widgets' progress throttling."""
    phase: str = "train"                  # train | validate | test | final | report
    fold: int = 0                         # 0-based; == n_folds for the final retrain
    n_folds: int = 1
    epoch: int = 0                        # 1-based epoch within the fold (0 = before)
    epochs: int = 0
    step: int = 0                         # step within the epoch
    steps: int = 0
    loss: Optional[float] = None          # running mean training loss of the epoch
    metrics: Dict[str, Any] = field(default_factory=dict)   # latest epoch metrics (val_*)
    eta_s: Optional[float] = None         # estimated seconds left
    best: Optional[float] = None          # best validation score so far (this fold)
    epoch_end: bool = False               # True on the one progress item that closes an epoch
    score_name: Optional[str] = None      # what ``best`` / ``val_score`` is ("auc", "dice", ...)


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Optional[Path]
    card_path: Optional[Path]
    report_path: Optional[Path]
    report_json: Optional[Path]
    fold_metrics: List[Dict[str, Any]]
    cv_summary: Dict[str, Any]
    final: str
    installed_path: Optional[Path] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    samples_per_epoch: List[int] = field(default_factory=list)
    card: Dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    #: the earlier installed model of the same name this run replaced ("name (date ...)")
    replaced: Optional[str] = None
    #: a ``resume`` of a run that had already finished: nothing was trained, written or
    #: installed; the paths are those of the run's model, card and report
    already_finished: bool = False


# ---------------------------------------------------------------------------------------------
def _batch_len(batch: Any) -> int:
    import torch
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for v in batch.values():
            n = _batch_len(v)
            if n:
                return n
        return 0
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0]) if not isinstance(batch[0], (int, float, str)) else len(batch)
    return 0


def _scalars(d: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            out[k] = float(v.item())
    return out


def seed_everything(seed: int, *objs: Any) -> None:
    """Seed torch, numpy's and Python's global generators and every MONAI random transform
    reachable from ``objs`` (a dataset's ``transform``/``transforms`` attributes, a Compose's
    members): MONAI transforms carry their own generator, which ``torch.manual_seed`` does not
    reach, so a run with a fixed seed would otherwise augment differently every time."""
    import random

    import numpy as np
    import torch
    seed = int(seed) % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    seen: set = set()

    def visit(o: Any, depth: int = 0) -> None:
        if o is None or id(o) in seen or depth > 4 or isinstance(o, (str, bytes, int, float)):
            return
        seen.add(id(o))
        if callable(getattr(o, "set_random_state", None)):
            try:
                o.set_random_state(seed=seed)       # a Compose passes it to its members
            except TypeError:
                pass
            return
        if isinstance(o, (list, tuple)):
            for v in o[:64]:
                visit(v, depth + 1)
            return
        for name in ("transform", "transforms", "augment", "aug", "dataset"):
            v = getattr(o, name, None)
            if v is not None and not isinstance(v, (bool, int, float, str)):
                visit(v, depth + 1)
    for o in objs:
        visit(o)


def _score_key(best: Dict[str, Any]) -> tuple:
    """Sort key of an epoch's (or a fold's) validation result: the task's score where it is
    defined, else minus the validation loss, ranked below any defined score, so a score (e.g.
    an AUC) is never compared with a loss."""
    if best.get("key") is not None:
        return tuple(best["key"])
    sc = best.get("score")
    if sc is not None and math.isfinite(float(sc)):
        return (1, float(sc))
    return (-1, 0.0)


def _epoch_result(vm: Dict[str, Any], epoch: int) -> Dict[str, Any]:
    def fin(v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None
    score, loss = fin(vm.get("score")), fin(vm.get("loss"))
    key = (1, score) if score is not None else ((0, -loss) if loss is not None else (-1, 0.0))
    return {"score": score, "epoch": epoch, "key": list(key), "val_loss": loss}


def _amp_setup(cfg_amp: Any, device: str):
    """(autocast dtype or None, GradScaler)."""
    import torch
    use = bool(cfg_amp) and device.startswith("cuda")
    dtype = None
    if use:
        if cfg_amp == "fp16":
            dtype = torch.float16
        elif cfg_amp == "bf16" or torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == torch.float16))
    return dtype, scaler


def shown_path(path: Union[str, Path]) -> str:
    """A path for a message: relative to the working folder when it is under it (the way a
    user usually gives it), else as it is."""
    import os
    text = str(path)
    if not os.path.isabs(text):
        return text
    try:
        cwd = Path.cwd()
        p = Path(text)
        for base in (cwd, cwd.resolve()):
            try:
                rel = p.relative_to(base)
            except ValueError:
                continue
            return str(rel) if str(rel) != "." else "."
    except OSError:                     # the working folder was removed
        pass
    return text


def _shown_value(v: Any) -> str:
    """A config value for the resume error: absolute paths shown by :func:`shown_path`,
    strings without quotes, on one line."""
    import os
    if isinstance(v, str):
        text = shown_path(v) if os.path.isabs(v) else v
        text = " ".join(text.split()) or "''"
    elif isinstance(v, list):
        text = "[" + ", ".join(_shown_value(x) for x in v) + "]"
    else:
        text = json.dumps(v, default=str, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


#: internal config keys, as the resume error names them
_SHOWN_KEYS = {"_source": "config file"}


def config_changes(saved: Path, cfg: Dict[str, Any]) -> List[str]:
    """The dotted keys whose values differ between the run's saved ``config.json`` and
    ``cfg`` (for the resume error), e.g. ``["train.epochs: 30 -> 40"]``; paths are shown
    relative to the working folder when they are under it (:func:`shown_path`), ``-`` is a
    key one side lacks."""
    try:
        old = json.loads(Path(saved).read_text())
    except (OSError, ValueError):
        return []

    def flat(d: Any, prefix: str = "") -> Dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    def same(x: Any, y: Any) -> bool:
        return json.dumps(x, default=str, sort_keys=True) == json.dumps(y, default=str,
                                                                         sort_keys=True)
    a, b = flat(old), flat(json.loads(json.dumps(cfg, default=str)))
    missing = object()
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, missing), b.get(k, missing)
        if x is not missing and y is not missing and same(x, y):
            continue
        out.append(f"{_SHOWN_KEYS.get(k, k)}: {'-' if x is missing else _shown_value(x)} -> "
                   f"{'-' if y is missing else _shown_value(y)}")
    return out


def _plan_hash(plan: List[Dict[str, Any]], cfg: Dict[str, Any]) -> str:
    key = json.dumps({"plan": [{k: p[k] for k in ("train", "val", "test")} for p in plan],
                      "task": cfg["task"], "model": cfg.get("model"),
                      "batch": cfg["train"]["batch_size"], "epochs": cfg["train"]["epochs"],
                      "final": cfg.get("final")}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def make_plan(task: TrainTask, records: List[PatientRecord], cfg: Dict[str, Any],
              lenient: bool = False) -> List[Dict[str, Any]]:
    """The folds: ``[{"fold", "train", "val", "test"}]`` of patient ids (validated)."""
    seed = int(cfg.get("seed", 0))
    k = int(cfg.get("folds") or 0)
    vf = float(cfg["train"].get("val_fraction", 0.2))
    sp.check_unique(records)
    if not records:
        raise ConfigError("no patients to split")
    strata = {r.strata for r in records}
    if all(s is not None for s in strata) and len(strata) < 2:
        raise ConfigError(f"all {len(records)} patients have the same label "
                          f"({next(iter(strata))!r}); a classifier needs two classes at least")
    if k >= 2:
        outer = sp.kfold(records, k, seed)
    else:
        outer = [sp.holdout(records, float(cfg.get("test_fraction", 0.2)), seed)]
    plan = []
    for i, (tr, te) in enumerate(outer):
        sub = sp.subset(records, tr)
        if vf > 0:
            tr2, va = sp.holdout(sub, vf, seed + 1 + i)
        else:
            tr2, va = list(tr), []
        sp.check_split(f"training (fold {i + 1})", records, tr2, need_classes=not lenient)
        if k >= 2:
            sp.check_split(f"test (fold {i + 1})", records, te, need_classes=False)
        plan.append({"fold": i, "train": tr2, "val": va, "test": te})
    return plan


class _Run:
    """State shared by the stages of one ``train`` call."""

    def __init__(self, cfg, task, out_dir, device, dist, cancel):
        self.cfg, self.task, self.out, self.device, self.dist = cfg, task, out_dir, device, dist
        self.cancel = cancel
        self.t0 = time.monotonic()
        self.steps_done = 0
        self.steps_total = 1
        self.step_time = None            # seconds per step for the ETA (see epoch_rate)
        # once an epoch has ended, the ETA's rate is its wall time per step (validation and
        # checkpointing included) and the steps in between leave it alone: a rate taken from
        # the steps alone made the estimate drop during each epoch and jump at its end
        self.epoch_rate = False
        self.history: List[Dict[str, Any]] = []
        self.samples_per_epoch: List[int] = []
        self.origin: Optional[Dict[str, Any]] = None     # fine_tuned_from (with ``init``)
        self.log_path = out_dir / "train.log"

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            with open(self.log_path, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    items_per_patient: float = 1.0
    stages: List[Dict[str, Any]] = []
    stage_index: int = 0

    def rest_steps(self) -> int:
        """Estimated steps of the stages after the current one."""
        bs = int(self.cfg["train"]["batch_size"])
        ep = int(self.cfg["train"]["epochs"])
        tot = 0
        for s in self.stages[self.stage_index + 1:]:
            n = len(s["train"]) * self.items_per_patient / self.dist.world_size
            tot += int(math.ceil(n / bs)) * int(s.get("epochs") or ep)
        return tot

    test_s_per_patient: Optional[float] = None   # measured on the first test fold
    tested_through: int = -1                      # the last stage whose test fold has run

    def rest_test_s(self) -> float:
        """Estimated seconds of the test folds still to run (0 until one has been timed)."""
        if self.test_s_per_patient is None:
            return 0.0
        n = sum(len(s.get("test") or []) for s in self.stages[self.tested_through + 1:])
        return n * self.test_s_per_patient

    def eta(self) -> Optional[float]:
        if self.step_time is None:
            return None
        return max(0.0, (self.steps_total - self.steps_done) * self.step_time
                   + self.rest_test_s())


def _seed_worker(worker_id: int) -> None:
    """A loader worker's copy of the random transforms gets its own seed (derived from the
    seeded main process), not the same stream as every other worker."""
    import torch
    info = torch.utils.data.get_worker_info()
    seed_everything(torch.initial_seed(), info.dataset if info is not None else None)


def _make_loader(run: _Run, ds, shuffle: bool, epoch_seed: int, weights=None):
    import torch
    tcfg = run.cfg["train"]
    sampler = ddp.ShardSampler(len(ds), rank=run.dist.rank, world_size=run.dist.world_size,
                               shuffle=shuffle, weights=weights, seed=epoch_seed)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=int(tcfg["batch_size"]), sampler=sampler,
        num_workers=int(tcfg.get("num_workers") or 0), collate_fn=run.task.collate_fn(),
        worker_init_fn=_seed_worker,
        pin_memory=run.device.startswith("cuda"), drop_last=False)
    return loader, sampler


def _train_stage(run: _Run, stage: Dict[str, Any], n_folds: int, resume_state=None
                 ) -> Iterator[TrainProgress]:
    """Train one model on ``stage['train']`` with early stopping on ``stage['val']``.
    Returns (via StopIteration) ``(model, info)`` with the best (or last) weights loaded."""
    import torch

    cfg, task, dist = run.cfg, run.task, run.dist
    tcfg = cfg["train"]
    fold = stage["fold"]
    epochs = int(stage.get("epochs") or tcfg["epochs"])
    seed = int(cfg.get("seed", 0)) + 1000 * fold
    seed_everything(seed)
    try:
        train_ds, val_ds = task.make_datasets(stage["train"], stage["val"])
    except (OSError, KeyError) as e:
        # a case file the task's own checks let through (truncated, not HDF5, a missing
        # dataset inside it): one line, not a traceback
        raise ConfigError(f"reading the training data failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else e!r}); check the files in "
                          f"{_data_names(cfg)}") from None
    seed_everything(seed)
    if len(train_ds) == 0:
        raise ConfigError(f"fold {fold + 1}: the training dataset is empty")
    weights = task.sample_weights(train_ds) if tcfg.get("sampler") == "weighted" else None
    loader, sampler = _make_loader(run, train_ds, True, seed, weights)
    from src_models.freeze import train_mode
    model = task.make_model()
    if tcfg.get("freeze"):
        task.freeze(model, list(tcfg["freeze"]))
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("train.freeze froze every parameter; nothing left to train")
    model.to(run.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(tcfg["lr"]),
                            weight_decay=float(tcfg.get("weight_decay", 0.0)))
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / dist.world_size)
                                / int(tcfg["batch_size"]))
    # now the items per patient are known: refine the run's step total (progress bar, ETA)
    run.items_per_patient = len(train_ds) / max(1, len(stage["train"]))
    run.steps_total = max(run.steps_done + 1, run.steps_done + steps_per_epoch * max(
        0, epochs - (int(resume_state[1]["epoch"]) if resume_state else 0)) + run.rest_steps())
    sched = None
    if tcfg.get("scheduler", "onecycle") == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=float(tcfg["lr"]), total_steps=max(1, epochs * steps_per_epoch + 1),
            pct_start=float(tcfg.get("pct_start", 0.3)))
    amp_dtype, scaler = _amp_setup(tcfg.get("amp", True), run.device)
    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[torch.device(run.device).index]
                  if run.device.startswith("cuda") else None,
                  find_unused_parameters=bool(tcfg.get("find_unused_parameters", False)))

    start_epoch = 1
    best: Dict[str, Any] = {"score": None, "epoch": 0}
    score_name = str(getattr(task, "score_name", None) or "score")
    stopped_by: Optional[str] = None
    # progress label: the final retrain on all patients is not one of the CV folds
    where = ("final model (all patients)" if stage.get("final")
             else f"fold {fold + 1}/{n_folds}")
    bad = 0
    best_path = run.out / "folds" / f"fold{fold + 1}_best.safetensors"
    if resume_state is not None:
        tensors, state = resume_state
        ckpt.load_into(tensors, state, model, opt, sched, scaler)
        start_epoch = int(state["epoch"]) + 1
        best = state.get("best") or best
        bad = int(state.get("bad_epochs", 0))
    has_val = len(val_ds) > 0 if val_ds is not None else False
    patience = int(tcfg.get("patience") or 0)
    budget_s = (float(tcfg["max_minutes"]) * 60.0 / max(1, n_folds)
                if tcfg.get("max_minutes") else None)
    t_stage = time.monotonic()
    clip = tcfg.get("grad_clip")
    last_epoch = (min(epochs, int(resume_state[1].get("epoch_done") or resume_state[1]["epoch"]))
                  if resume_state is not None else 0)

    for epoch in range(start_epoch, epochs + 1):
        # every epoch starts from a seed of its own (model init used ``seed`` above): the same
        # config and seed give the same run, a resumed one included
        seed_everything(seed * 1009 + epoch, train_ds)
        sampler.set_epoch(epoch)
        if callable(getattr(train_ds, "set_epoch", None)):
            train_ds.set_epoch(epoch)       # datasets drawing random samples per epoch
        train_mode(net)          # frozen BatchNorm layers keep their statistics
        tot_loss, n_seen, n_steps = 0.0, 0, 0
        logs_acc: Dict[str, float] = {}
        join = net.join() if dist.enabled else _nullctx()
        t_epoch = time.monotonic()
        with join:
            for step, batch in enumerate(loader, 1):
                _progress.check(run.cancel)
                ts = time.monotonic()
                opt.zero_grad(set_to_none=True)
                if amp_dtype is not None:
                    with torch.autocast("cuda", dtype=amp_dtype):
                        loss, logs = task.training_step(net, batch, run.device)
                else:
                    loss, logs = task.training_step(net, batch, run.device)
                if not torch.isfinite(loss):
                    raise ConfigError(f"the loss became {loss.item()} at fold {fold + 1} epoch "
                                      f"{epoch} step {step}; lower train.lr")
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, float(clip))
                scaler.step(opt)
                scaler.update()
                if sched is not None:
                    sched.step()
                bs = _batch_len(batch)
                n_seen += bs
                n_steps += 1
                tot_loss += float(loss.detach().item()) * bs
                for k, v in _scalars(logs).items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + v * bs
                dt = time.monotonic() - ts
                if not run.epoch_rate:            # until an epoch has ended: the steps' EMA
                    run.step_time = dt if run.step_time is None \
                        else 0.9 * run.step_time + 0.1 * dt
                run.steps_done += 1
                yield TrainProgress(stage="train", done=run.steps_done, total=run.steps_total,
                                    message=f"{where} epoch {epoch}/{epochs} "
                                            f"step {step}/{steps_per_epoch}",
                                    phase="train", fold=fold, n_folds=n_folds, epoch=epoch,
                                    epochs=epochs, step=step, steps=steps_per_epoch,
                                    loss=tot_loss / max(1, n_seen), eta_s=run.eta(),
                                    best=best["score"], score_name=score_name)
        # sum over ranks: the samples seen this epoch by the whole job
        total_seen = int(round(ddp.all_sum(n_seen, dist)))
        sum_loss = ddp.all_sum(tot_loss, dist)
        epoch_loss = sum_loss / max(1, total_seen)
        _progress.check(run.cancel)
        # validation on rank 0, decisions broadcast
        decision = None
        if dist.is_main:
            rec = {"fold": fold + 1, "epoch": epoch, "train_loss": epoch_loss,
                   "samples": total_seen, "lr": opt.param_groups[0]["lr"],
                   "time_s": round(time.monotonic() - run.t0, 2)}
            rec.update({f"train_{k}": v / max(1, n_seen) for k, v in logs_acc.items()})
            improved = False
            if has_val:
                model.eval()
                with torch.no_grad():
                    vm = task.evaluate(model, val_ds, run.device)
                if "score" not in vm:
                    raise ConfigError(f"task {task.name}: evaluate() returned no 'score'")
                if vm.get("score_name"):
                    score_name = str(vm["score_name"])
                rec.update({f"val_{k}": v for k, v in _scalars(vm).items()})
                cur = _epoch_result(vm, epoch)
                if best.get("epoch", 0) == 0 or _score_key(cur) > _score_key(best):
                    best = cur
                    improved = True
            else:
                best = {"score": None, "epoch": epoch}
                improved = True
            if improved:
                _save_fold_model(run, model, best_path, stage, best)
            bad = 0 if improved else bad + 1
            stop = bool(patience and has_val and bad >= patience)
            over = bool(budget_s and time.monotonic() - t_stage > budget_s and epoch < epochs)
            rec["best_score"] = best["score"]
            if stop or over:
                rec["stopped"] = ("time budget (--max-minutes)" if over and not stop
                                  else f"early stopping (no improvement in {patience} epochs)")
            run.history.append(rec)
            run.samples_per_epoch.append(total_seen)
            state = {"fold": fold, "epoch": epoch, "best": best, "bad_epochs": bad,
                     "stopped": stop or over, "stopped_by": rec.get("stopped")}
            run.save_state(model, opt, sched, scaler, state)
            run.log(dumps(rec, indent=None))
            decision = {"best": best, "bad": bad, "stop": stop or over, "rec": rec,
                        "samples": total_seen}
        decision = ddp.broadcast_object(decision, dist)
        best, bad = decision["best"], decision["bad"]
        if not dist.is_main:
            run.samples_per_epoch.append(decision["samples"])
            run.history.append(decision["rec"])
        rec = decision["rec"]
        last_epoch = epoch
        stopped_by = rec.get("stopped")
        # seconds per step including validation and checkpointing, for the ETA (averaged
        # with the previous epochs': one slow epoch moves it by half)
        rate = (time.monotonic() - t_epoch) / max(1, n_steps)
        run.step_time = rate if not run.epoch_rate or run.step_time is None \
            else 0.5 * run.step_time + 0.5 * rate
        run.epoch_rate = True
        note = ""
        if stopped_by:
            note = (f"; stopped after epoch {epoch} of {epochs}: " + (
                f"the time budget of {float(tcfg['max_minutes']):g} min ("
                + (f"{budget_s:.0f} s" if budget_s < 120 else f"{budget_s / 60:.1f} min")
                + " per fold) is used up" if stopped_by.startswith("time") else stopped_by))
        yield TrainProgress(stage="epoch", done=run.steps_done, total=run.steps_total,
                            message=f"{where} epoch {epoch}/{epochs} "
                                    f"loss {epoch_loss:.4f}"
                                    + (f" best {score_name} {best['score']:.4f}"
                                       if best["score"] is not None else "") + note,
                            score_name=score_name,
                            phase="validate", fold=fold, n_folds=n_folds, epoch=epoch,
                            epochs=epochs, step=steps_per_epoch, steps=steps_per_epoch,
                            loss=epoch_loss,
                            metrics={k: v for k, v in rec.items()
                                     if k.startswith(("val_", "train_")) and
                                     isinstance(v, (int, float))},
                            eta_s=run.eta(), best=best["score"], epoch_end=True)
        if decision["stop"]:
            run.steps_done += (epochs - epoch) * steps_per_epoch   # skipped work
            break
    # reload the best weights (early-stopping selection on the validation split only)
    ddp.barrier(dist)
    if best_path.exists():
        from ..models import load_state_dict_file
        model.load_state_dict(load_state_dict_file(best_path))
    del opt, sched, net
    if resume_state is not None and stopped_by is None:
        stopped_by = resume_state[1].get("stopped_by")
    return model, {"best_score": best["score"], "best_epoch": best["epoch"],
                   "best_key": list(_score_key(best)), "best_val_loss": best.get("val_loss"),
                   "score_name": score_name, "epochs_trained": last_epoch,
                   "epochs_planned": epochs, "stopped": stopped_by,
                   "best_path": str(best_path), "n_train": len(stage["train"]),
                   "n_val": len(stage["val"])}


def _check_freeze_patterns(task: TrainTask, spec) -> None:
    """Every ``train.freeze`` prefix / pattern must name some parameter of the network to be
    trained, and a stage number needs a task that freezes stages: a typo, or a single network
    given an ensemble's pattern, would otherwise train what the config says is frozen."""
    from .base import freeze_match
    names = [n for n, _ in task.make_model().named_parameters()]
    for s in spec:
        if isinstance(s, int) or str(s).isdigit():
            if not task.STAGE_FREEZE:
                raise ConfigError(f"train.freeze: {s!r} is a stage number, which task "
                                  f"{task.name} does not use; give parameter-name prefixes")
            continue
        if not any(freeze_match(n, s) for n in names):
            tops = sorted({".".join(n.split(".")[:2]) for n in names})[:8]
            raise ConfigError(f"train.freeze: {s!r} names no parameter of this network "
                              f"(its parameters start with e.g. {', '.join(tops)})")


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _save_fold_model(run: _Run, model, path: Path, stage, best) -> None:
    from ..models import new_card, save_model
    fields = data_card_fields(run.task, run.cfg, len(stage["train"]) + len(stage["val"]),
                              "trained this fold model")
    card = new_card(f"{run.cfg.get('name') or run.task.name}-fold{stage['fold'] + 1}",
                    run.task.model_task, run.task.model_architecture(), **fields,
                    # what `radiogen evaluate` needs: the training task and its config
                    train_task=run.task.name, config=card_config(run.cfg),
                    # the patients whose data trained or selected these weights (an init
                    # model's included): what a later fine-tune checks its test parts against
                    training_data={"patients": trained_on(run.task, list(stage["train"])
                                                          + list(stage["val"])),
                                   "validation": list(stage["val"])},
                    fold=stage["fold"] + 1, best=best,
                    **({"fine_tuned_from": run.origin} if run.origin else {}))
    save_model(path, model.state_dict(), card)


def _evaluate_test(run: _Run, model, ids: List[str]) -> Dict[str, Any]:
    import torch
    if not ids:
        return {}
    _, ds = run.task.make_datasets([], ids)
    model.eval()
    with torch.no_grad():
        return run.task.evaluate(model, ds, run.device)


def train(cfg: Union[str, Path, Dict[str, Any]], out_dir: Union[str, Path], *,
          device: str = "auto", epochs: Optional[int] = None, limit: Optional[int] = None,
          resume: bool = False, folds: Optional[int] = None,
          cancel: Optional[CancelToken] = None, install: bool = False,
          max_minutes: Optional[float] = None, install_finished: bool = False
          ) -> Iterator[Union[TrainProgress, TrainResult]]:
    """Train (with CV) the task named by ``cfg``; yield progress, then a :class:`TrainResult`.

    ``install=True`` copies the final model into the user models folder (then it appears in
    ``core.models.list_models()`` and the widgets' model lists).
    A ``resume`` of a run that has already finished trains, writes and installs nothing
    (``TrainResult.already_finished``), unless ``install`` and ``install_finished`` are both
    given (an explicit request, e.g. ``radiogen train --resume --install``): then the run's
    model is installed as at the end of a run, under its own name (see
    :func:`_check_finished_install_name`); the run folder is left as it is.
    """
    from ..models import resolve_device

    from .config import check_keys
    for what, v in (("--limit", limit), ("--epochs", epochs), ("--max-minutes", max_minutes)):
        if v is not None and (isinstance(v, bool) or not v > 0):
            raise ConfigError(f"{what} must be a positive number (got {v!r})")
    if limit is not None and int(limit) != limit:
        raise ConfigError(f"--limit must be a whole number of patients (got {limit!r})")
    if folds is not None and (isinstance(folds, bool) or int(folds) != folds or folds < 0):
        raise ConfigError(f"--folds must be an integer >= 0 (got {folds!r})")
    overrides = {"train.epochs": epochs, "folds": folds, "train.max_minutes": max_minutes}
    cfg = load_config(cfg, **overrides)
    check_keys(cfg)
    if limit is not None:
        cfg["_limit"] = int(limit)
    out = Path(out_dir)
    check_out_dir(out, shown=shown_path)    # before any data is read or a device is set up
    dev = resolve_device(device)
    dist = ddp.setup(dev)
    dev = ddp.device_for(dev, dist)
    yield TrainProgress(stage="prepare", message=f"preparing {cfg['task']} on {dev}"
                        + (f" (DDP {dist.world_size} processes)" if dist.enabled else ""),
                        phase="prepare")
    task: TrainTask = TASKS[cfg["task"]](cfg)
    task.cancel = cancel             # the task's evaluate loops check it once per batch
    task.init_model()                # a bad init or freeze is refused before any data is read
    if cfg["train"].get("freeze"):
        _check_freeze_patterns(task, list(cfg["train"]["freeze"]))
    if install:
        _check_install_name(task, cfg)
    records = task.patients()
    if not records:
        raise ConfigError(f"task {cfg['task']}: no patients found in {cfg.get('data')}")
    notes = list(getattr(task, "notes", None) or [])
    for n in notes:                  # e.g. rows of the labels table without images
        yield TrainProgress(stage="prepare", phase="prepare", message=f"note: {n}")
    all_records = records
    records = sp.limit_records(records, limit, int(cfg.get("seed", 0)))
    if limit and int(cfg.get("folds") or 0) > max(2, len(records) // 2):
        # a smoke run on a handful of patients: fewer folds rather than an error
        k_new = max(2, len(records) // 2)
        yield TrainProgress(stage="prepare", phase="prepare",
                            message=f"--limit {limit}: {cfg['folds']}-fold CV reduced to "
                                    f"{k_new} folds")
        cfg["folds"] = k_new
    try:
        plan = make_plan(task, records, cfg, lenient=bool(limit))
    except ConfigError as e:
        if not limit:
            raise
        need = _patients_needed(task, all_records, cfg, int(limit))
        raise ConfigError(f"--limit {limit} leaves too few patients to split ({e})"
                          + (f"; this config needs --limit {need} or more" if need else
                             f"; the data hold {len(all_records)} patients")) from None
    task.use_patients(records)
    origin = fine_tune_origin(task, [i for p in plan for i in p["test"]])
    if origin:
        seen = origin["test_patients_seen"]
        yield TrainProgress(stage="prepare", phase="prepare", message=(
            f"fine-tuning from {origin['name']}" + (
                f"; warning: it had trained on {len(seen)} of the test patients, so the CV "
                "metrics will not be held-out estimates" if seen else "")))
    phash = _plan_hash(plan, cfg)
    state_prev = None
    shown = shown_path(out)
    if out.exists() and (out / ckpt.CHECKPOINT).exists() and not resume:
        held = ckpt.read_checkpoint(out)
        n_stages = len(plan) + (1 if cfg.get("final", "best_fold") == "retrain" else 0)
        done = finished_run(out, held[1], n_stages) if held is not None else None
        if done is not None:         # --resume would do nothing: do not suggest it
            raise ConfigError(f"{shown} already holds a finished run (its model is "
                              f"{shown_path(done.model_path)}); choose another --out folder "
                              "to train again")
        raise ConfigError(f"{shown} already holds a run; use --resume to continue it or choose "
                          "another --out folder")
    if resume:
        state_prev = ckpt.read_checkpoint(out)
        if state_prev is None:
            raise ConfigError(f"nothing to resume in {shown} (no {ckpt.CHECKPOINT})")
        if state_prev[1].get("init_sha256") != task.init_digest():
            raise ConfigError(f"{shown}: the run started from another init model file (its "
                              "SHA-256 differs: another file, or the same file changed); "
                              "resume with the same --init file or start a new run")
        if state_prev[1].get("plan_hash") != phash:
            changed = config_changes(out / "config.json", cfg)
            more = f", and {len(changed) - 6} more" if len(changed) > 6 else ""
            what = f" (changed: {', '.join(changed[:6])}{more})" if changed else ""
            raise ConfigError(f"{shown}: the checkpoint was made with another config, data or "
                              f"--limit/--folds{what}; resume with the same options (the "
                              "number of epochs included: it fixes the learning-rate "
                              "schedule) or start a new run")
        n_stages = len(plan) + (1 if cfg.get("final", "best_fold") == "retrain" else 0)
        done = finished_run(out, state_prev[1], n_stages)
        if done is None:
            _check_resume_name(out, cfg, task, shown)
        if done is not None:
            # nothing to train or write (nor install, unless asked): say so and give the
            # run's files
            ddp.teardown(dist)
            head = (f"the run in {shown} has already finished: its model is "
                    f"{shown_path(done.model_path)} (card {done.card_path.name}); ")
            if install and install_finished:
                _check_finished_install_name(done, cfg, task, shown)
                if dist.is_main:
                    done.installed_path, done.replaced = _install_model(done.model_path,
                                                                        done.card_path)
                msg = (head + "nothing was trained or written; its model was installed as "
                       f"{done.model_path.stem}")
            else:
                msg = (head + "nothing was trained, written or installed (start a new run in "
                       "another folder to train again)")
            yield TrainProgress(stage="report", phase="report", message=msg)
            done.rank = dist.rank
            yield done
            return
    fresh = not resume and not (out.exists() and any(out.iterdir()))
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "folds").mkdir(exist_ok=True)
        from ..models import atomic_write_text
        atomic_write_text(out / "config.json", dumps(cfg))
        atomic_write_text(out / "splits.json", dumps(plan, indent=1))
    ddp.barrier(dist)

    run = _Run(cfg, task, out, dev, dist, cancel)
    run.origin = origin
    for n in notes:
        run.log(f"note: {n}")
    if origin and dist.is_main:
        run.log(f"fine-tuning from {origin['name']} (sha256 {origin['sha256'][:12]}); it had "
                f"trained on {len(origin['test_patients_seen'])} of the test patients"
                + (": the CV metrics are not held-out estimates"
                   if origin["test_patients_seen"] else ""))
    n_folds = len(plan)
    ep = int(cfg["train"]["epochs"])
    bs = int(cfg["train"]["batch_size"])
    # estimated total steps (training patients -> items is task specific: use the first fold)
    completed: List[Dict[str, Any]] = []
    start_fold, resume_tensors = 0, None
    if state_prev is not None:
        tensors, st = state_prev
        completed = st.get("completed", [])
        run.history = st.get("history", [])
        run.samples_per_epoch = st.get("samples_per_epoch", [])
        # the run's clock goes on from its last epoch record (time_s counts the whole run,
        # not this process; the unfinished epoch's time is lost with its work)
        last_t = [h.get("time_s") for h in run.history if isinstance(h.get("time_s"), (int, float))]
        if last_t:
            run.t0 -= float(last_t[-1])
        start_fold = int(st["fold"])
        if st.get("stage_done"):
            start_fold += 1
        elif int(st.get("epoch", 0)) >= 1 and not st.get("stopped"):
            resume_tensors = (tensors, st)
        elif st.get("stopped"):
            resume_tensors = (tensors, dict(st, epoch=10 ** 9,      # stage finished training
                                            epoch_done=int(st.get("epoch", 0))))
    stages = list(plan)
    final_mode = cfg.get("final", "best_fold")
    if final_mode == "retrain" and n_folds >= 1:
        stages.append({"fold": n_folds, "train": [r.patient_id for r in records], "val": [],
                       "test": [], "final": True})

    def save_state(model, opt, sched, scaler, stage_state):
        if not dist.is_main:
            return
        st = {"plan_hash": phash, "init_sha256": task.init_digest(),
              "completed": completed, "history": run.history,
              "samples_per_epoch": run.samples_per_epoch, "task": cfg["task"],
              "n_folds": n_folds}
        st.update(stage_state)
        ckpt.save_checkpoint(out, model, opt, state=st, scheduler=sched, scaler=scaler)
    run.save_state = save_state

    model = None
    try:
        for si, stage in enumerate(stages):
            if si < start_fold:
                continue
            _progress.check(cancel)
            if stage.get("final"):
                best_epochs = [c["best_epoch"] for c in completed if c.get("best_epoch")]
                stage["epochs"] = max(1, int(statistics.median(best_epochs))) if best_epochs else ep
            # rough total steps for the progress bar / ETA (refined once the data are built)
            run.stages, run.stage_index = stages, si
            run.steps_total = max(run.steps_done + 1, _estimate_steps(run, stages, si, bs, ep))
            rs = resume_tensors if si == start_fold else None
            if rs is not None and int(rs[1].get("epoch", 0)) >= int(stage.get("epochs") or ep):
                rs = (rs[0], dict(rs[1], epoch=int(stage.get("epochs") or ep)))
            model, info = yield from _train_stage(run, stage, n_folds, rs)
            _progress.check(cancel)
            rec: Dict[str, Any] = {"fold": stage["fold"] + 1, **info,
                                   "final": bool(stage.get("final"))}
            if dist.is_main and stage["test"]:
                yield TrainProgress(stage="test", done=run.steps_done, total=run.steps_total,
                                    message=f"testing fold {stage['fold'] + 1} on "
                                            f"{len(stage['test'])} held-out patients",
                                    phase="test", fold=stage["fold"], n_folds=n_folds,
                                    eta_s=run.eta())
                t_test = time.monotonic()
                tm = _evaluate_test(run, model, stage["test"])
                rate = (time.monotonic() - t_test) / len(stage["test"])
                run.test_s_per_patient = rate if run.test_s_per_patient is None \
                    else 0.5 * (run.test_s_per_patient + rate)
                run.tested_through = si
                rec["test"] = {k: v for k, v in _scalars(tm).items()}
                preds = tm.get("predictions") or []
                for p in preds:
                    p.setdefault("fold", stage["fold"] + 1)
                rec["predictions"] = preds
                rec["n_test"] = len(stage["test"])
                base = task.baseline(stage["train"] + stage["val"], stage["test"]) \
                    if hasattr(task, "baseline") else None
                if base:
                    rec["baseline"] = _scalars(base)
            completed.append(rec)
            save_state(model, None, None, None, {"fold": si, "epoch": 0, "stage_done": True})
            ddp.barrier(dist)
            if si < len(stages) - 1:
                del model
                model = None
                _release(dev)
        yield TrainProgress(stage="report", done=run.steps_done, total=run.steps_done,
                            message="writing the model, card and report", phase="report")
        result = _finish(run, records, plan, completed, model, install)
        result.rank = dist.rank
        if dist.is_main:
            # the run is complete: a later --resume says so instead of finishing it again
            ckpt.update_state(out, {"finished": {
                "model": result.model_path.name, "card": result.card_path.name,
                "installed": result.installed_path.stem if result.installed_path else None,
                "date": (result.card or {}).get("date")}})
        yield result
    except ConfigError:
        # an input error before the first checkpoint of a new run: leave no half-made run
        # folder behind (a later run with the same --out would be refused or confused)
        if fresh and dist.is_main and not (out / ckpt.CHECKPOINT).exists():
            _remove_run_files(out)
        raise
    finally:
        model = None
        _release(dev)
        ddp.teardown(dist)


def _check_resume_name(out: Path, cfg: Dict[str, Any], task: TrainTask, shown: str) -> None:
    """A run resumed mid-way keeps the model name it started with (its fold models and cards
    already carry it): another name is refused, naming the change as the other resume
    refusals do."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict):
        return
    old = str(saved.get("name") or task.name)
    new = str(cfg.get("name") or task.name)
    if old == new:
        return
    raise ConfigError(f"{shown}: the run was started with another model name (changed: "
                      f"name: {_shown_value(old)} -> {_shown_value(new)}); its fold models are "
                      f"named after it: resume with the same options (--name {old}) or start "
                      "a new run")


def finished_run(out: Path, state: Dict[str, Any], n_stages: int) -> Optional[TrainResult]:
    """The result of the run in ``out`` when it has finished (None otherwise), from its files:
    the checkpoint state's ``finished`` record (written once the model, card and report are
    written), or, for a run finished before that record existed, every stage done and the
    ``finished: MODEL`` line of its train.log. A finished run whose model file is gone is not
    finished (a resume writes the model, card and report again)."""
    fin = state.get("finished") if isinstance(state.get("finished"), dict) else None
    if fin is None:
        if not (state.get("stage_done") and int(state.get("fold", -1)) + 1 >= n_stages):
            return None
        try:
            lines = (out / "train.log").read_text(errors="replace").splitlines()
        except OSError:
            return None
        ends = [ln.split(" finished: ", 1)[1] for ln in lines if " finished: " in ln]
        if not ends:
            return None
        model = Path(ends[-1].split("; cv ")[0]).name
        fin = {"model": model, "card": str(Path(model).with_suffix(".card.json"))}
    model_path = out / str(fin.get("model") or "")
    if not fin.get("model") or not model_path.is_file():
        return None
    card_path = out / str(fin.get("card") or model_path.with_suffix(".card.json").name)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        card = {}
    metrics = card.get("metrics") or {}
    report_html, report_json = out / "report" / "report.html", out / "report" / "report.json"
    return TrainResult(
        run_dir=out, model_path=model_path, card_path=card_path if card_path.exists() else None,
        report_path=report_html if report_html.exists() else None,
        report_json=report_json if report_json.exists() else None,
        fold_metrics=[c for c in state.get("completed") or [] if not c.get("final")],
        cv_summary=metrics.get("cv") or {}, final=str((card.get("config") or {}).get(
            "final", "best_fold")),
        history=list(state.get("history") or []),
        samples_per_epoch=list(state.get("samples_per_epoch") or []), card=card,
        already_finished=True)


def _remove_run_files(out: Path) -> None:
    """Remove what a run wrote into a folder that it created (nothing else)."""
    for name in ("config.json", "splits.json", "train.log", ckpt.STATE):
        try:
            (out / name).unlink()
        except OSError:
            pass
    for d in (out / "folds", out):
        try:
            for f in d.glob("fold*_best.*"):
                f.unlink()
            d.rmdir()                  # only when empty
        except OSError:
            pass


def _patients_needed(task: TrainTask, records: List[PatientRecord], cfg: Dict[str, Any],
                     limit: int) -> Optional[int]:
    """The smallest ``--limit`` above ``limit`` whose patients split (None: none does)."""
    import copy
    for n in range(limit + 1, min(len(records), limit + 64) + 1):
        c = copy.deepcopy(cfg)
        recs = sp.limit_records(records, n, int(c.get("seed", 0)))
        if int(c.get("folds") or 0) > max(2, len(recs) // 2):
            c["folds"] = max(2, len(recs) // 2)
        try:
            make_plan(task, recs, c, lenient=True)
            return n
        except ConfigError:
            continue
    return None


def _release(device: str) -> None:
    """Give GPU memory back. (No gc.collect() on CPU: a full collection in a worker thread holds
    the GIL for a long time inside a GUI process and would freeze its event loop.)"""
    if str(device).startswith("cuda"):
        import torch
        gc.collect()
        torch.cuda.empty_cache()


def _estimate_steps(run: _Run, stages, si: int, bs: int, ep: int) -> int:
    # items per patient: what the task says, else what the last stage measured
    per = float(getattr(run.task, "items_per_patient", 0) or run.items_per_patient or 1)
    tot = run.steps_done
    for s in stages[si:]:
        n = len(s["train"]) * per / run.dist.world_size
        tot += int(math.ceil(n / bs)) * int(s.get("epochs") or ep)
    return tot


def _data_list(cfg: Dict[str, Any]) -> List[str]:
    d = cfg.get("data")
    return [str(x) for x in (d if isinstance(d, (list, tuple)) else [d]) if x is not None]


def _data_names(cfg: Dict[str, Any]) -> str:
    """The data folder name(s) (never the full local path: cards are shared)."""
    return ", ".join(repr(Path(x).name) for x in _data_list(cfg)) or "(none)"


def _default_data_dirs(task_name: str) -> List[Path]:
    """The data folders the shipped configs of ``task_name`` use (the shared datasets that the
    tasks' ``datasets``/citation texts describe)."""
    from .config import CONFIG_DIR, list_configs, resolve_path
    out = []
    for c in list_configs():
        if c.get("task") != task_name:
            continue
        d = c.get("data")
        for x in (d if isinstance(d, list) else [d]):
            if isinstance(x, str) and x not in ("phantom", "synthetic"):
                p = Path(resolve_path(x, CONFIG_DIR))
                if p.exists():
                    out.append(p.resolve())
    return out


def uses_default_data(task: TrainTask, cfg: Dict[str, Any]) -> bool:
    """True when the run's data (and labels) are the shared dataset its task's card text
    describes; a synthetic task (``data: phantom``) counts as default."""
    data = _data_list(cfg)
    if not data or all(x in ("phantom", "synthetic") for x in data):
        return True
    defaults = _default_data_dirs(task.name)
    if not defaults:
        return False
    from .config import resolve_path
    # a relative path is the config's (a list of folders is not resolved by load_config):
    # relative to the config's folder, else $RADIOGEN_SHARED_DATA, not to the working folder
    base = Path(cfg["_source"]).parent if cfg.get("_source") else None

    def inside(p: Path) -> bool:
        try:
            rp = Path(resolve_path(str(p), base)).resolve()
        except OSError:
            return False
        return any(rp == d or d in rp.parents for d in defaults)
    if not all(inside(Path(x)) for x in data):
        return False
    labels = cfg.get("labels")
    return labels is None or inside(Path(str(labels)))


def dataset_description(task: TrainTask, cfg: Dict[str, Any], n_patients: int,
                        what: str = "used by this run") -> str:
    """The card's ``datasets``: the task's text (citation) when the run used the default
    dataset, else the user's folder name(s) and labels file name; with the patient count."""
    text = task.card_fields().get("datasets")
    if isinstance(text, (list, tuple)):
        text = "; ".join(map(str, text))
    if text and uses_default_data(task, cfg):
        return f"{text}; {n_patients} patients {what}"
    labels = cfg.get("labels")
    return (f"user data: folder {_data_names(cfg)}"
            + (f", labels {Path(str(labels)).name!r}" if labels else "")
            + f"; {n_patients} patients {what}")


def data_card_fields(task: TrainTask, cfg: Dict[str, Any], n_patients: int,
                     what: str = "used by this run") -> Dict[str, Any]:
    """The task's card fields with ``datasets`` describing the data a run used; the shipped
    dataset's ``citations`` only when the run used that dataset (a user's data is not those
    papers' data), the methods' (``TrainTask.method_citations``) always."""
    fields = dict(task.card_fields())
    fields["datasets"] = dataset_description(task, cfg, n_patients, what)
    if "citations" in fields and not uses_default_data(task, cfg):
        # the methods' papers still apply; the shared datasets' do not
        fields["citations"] = [c for c in fields["citations"]
                               if c in tuple(getattr(task, "method_citations", ()))]
    return fields


def card_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The config as a card records it: no internal keys, local paths reduced to names."""
    out = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    if out.get("data") is not None and not all(x in ("phantom", "synthetic")
                                               for x in _data_list(out)):
        names = [Path(x).name for x in _data_list(out)]
        out["data"] = names if isinstance(cfg.get("data"), (list, tuple)) else names[0]
    for k in ("labels", "cache_dir"):
        if isinstance(out.get(k), str):
            out[k] = Path(out[k]).name
    if isinstance(out.get("init"), str) and out["init"].endswith(".safetensors"):
        out["init"] = Path(out["init"]).name
    return out


def fine_tune_origin(task: TrainTask, test_ids: List[str]) -> Optional[Dict[str, Any]]:
    """The card's ``fine_tuned_from``: the ``init`` model and the CV test patients it had
    trained on (their metrics are then not held-out estimates). None without ``init``."""
    init = task.init_model()
    if init is None:
        return None
    path, card = init
    seen = set(init_patients(task))
    return {"name": card.get("name", path.stem), "file": Path(path).name,
            "sha256": task.init_digest(), "code_version": card.get("code_version"),
            "date": card.get("date"), "n_patients_trained": len(seen),
            "test_patients_seen": sorted(seen & set(test_ids))}


def _check_install_name(task: TrainTask, cfg: Dict[str, Any]) -> None:
    """A model is installed under the run's name: it may not hide a shipped model of the same
    name, nor (fine-tuning) replace the model it starts from."""
    from ..models import SHIPPED_DIR
    name = str(cfg.get("name") or task.name)
    init = task.init_model()
    what = None
    if init is not None and name in (init[0].stem, init[1].get("name")):
        what = f"would replace the model it starts from ({init[0].stem})"
    elif (SHIPPED_DIR / f"{name}.safetensors").exists():
        what = f"would hide the shipped model {name}"
    if what:
        raise ConfigError(f"installing the model as {name!r} {what}: give the run "
                          "its own name (`name:` in the config, `radiogen train --name`, or "
                          "the Training widget's model name), or do not install it")


def default_install_name(cfg: Dict[str, Any], out_dir: Union[str, Path], *,
                         resume: bool = False) -> Tuple[str, Optional[str]]:
    """The name a run installs its model under when the user gave none, and a note saying why
    when it is not the config's: a resumed run keeps the name it started with (the run
    folder's ``config.json``); a shipped config's name (which would hide the shipped model)
    becomes ``<name>-user``, so both stay available. One rule for the CLI and the Training
    widget; a name the user gives is theirs (:func:`_check_install_name` refuses a colliding
    one)."""
    from ..models import SHIPPED_DIR
    from .base import TASKS
    name = str(cfg.get("name") or TASKS[cfg["task"]].name)
    if resume:
        try:
            saved = json.loads((Path(out_dir) / "config.json").read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved:
            return str(saved), None
    if (SHIPPED_DIR / f"{name}.safetensors").exists():
        user = f"{name}-user"
        return user, (f"{name} is a shipped model; this run's model is named {user} so that "
                      "both stay available")
    return name, None


def trained_on(task: TrainTask, ids: List[str]) -> List[str]:
    """``ids`` and, when fine-tuning, the patients the ``init`` model's weights carry."""
    return list(ids) + [i for i in init_patients(task) if i not in set(ids)]


def init_patients(task: TrainTask) -> List[str]:
    """The patients whose data trained (or selected) the ``init`` model's weights, from its
    card (a fine-tuned card already includes those of its own init)."""
    init = task.init_model()
    if init is None:
        return []
    return list((init[1].get("training_data") or {}).get("patients") or [])


def _finish(run: _Run, records, plan, completed, model, install: bool) -> TrainResult:
    from ..evaluate.metrics import cv_summary
    from ..models import load_state_dict_file, new_card, save_model

    cfg, task, out = run.cfg, run.task, run.out
    fold_recs = [c for c in completed if not c.get("final")]
    summary = cv_summary([c.get("test", {}) for c in fold_recs if c.get("test")])
    base_summary = cv_summary([c["baseline"] for c in fold_recs if c.get("baseline")])
    final_mode = cfg.get("final", "best_fold")
    if final_mode == "retrain" and any(c.get("final") for c in completed):
        src = next(c for c in completed if c.get("final"))
        had_val = any(c.get("n_val") for c in fold_recs)
        cut = sum(1 for c in fold_recs if c.get("stopped"))
        chosen = {"mode": "retrain", "epochs": src["best_epoch"],
                  "note": ("retrained on all patients for the median best epoch of the folds "
                           "(chosen by inner validation)" if had_val else
                           "retrained on all patients for the median of the epochs the folds "
                           "trained (no inner validation, nothing selected"
                           + (f"; a time budget stopped {cut} of {len(fold_recs)} folds before "
                              "their last epoch, so their learning-rate schedules did not "
                              "finish, while the retrain's schedule spans its epochs"
                              if cut else "") + ")")}
    else:
        src, metric, why = _pick_fold(fold_recs)
        chosen = {"mode": "best_fold", "fold": src["fold"], "metric": metric,
                  "note": "the fold model with the best inner-validation " + metric
                          + (f" ({why})" if why else "")
                          + " (test folds are never used for selection)"}
    if chosen["mode"] == "retrain":
        trained_ids = [r.patient_id for r in records]
    else:
        st = next((p for p in plan if p["fold"] + 1 == src["fold"]), None)
        trained_ids = list(st["train"]) + list(st["val"]) if st else \
            [r.patient_id for r in records]
    if not run.dist.is_main:
        return TrainResult(run_dir=out, model_path=None, card_path=None, report_path=None,
                           report_json=None, fold_metrics=fold_recs, cv_summary=summary,
                           final=final_mode, history=run.history,
                           samples_per_epoch=run.samples_per_epoch)
    state = load_state_dict_file(src["best_path"])
    name = str(cfg.get("name") or task.name)
    k = int(cfg.get("folds") or 0)
    protocol = (f"patient-level {k}-fold cross-validation (stratified, grouped, seed "
                f"{cfg.get('seed', 0)}), metrics on each held-out fold; mean, SD and 95% "
                f"t-interval over folds" if k >= 2 else
                f"one patient-level held-out split ({cfg.get('test_fraction')} of patients, "
                f"seed {cfg.get('seed', 0)})")
    if cfg.get("_limit"):
        protocol += f"; smoke run limited to {cfg['_limit']} patients"
    cut = [c for c in completed if c.get("stopped")]
    if cut:
        protocol += "; " + "; ".join(
            f"{'final model' if c.get('final') else 'fold ' + str(c['fold'])} stopped after "
            f"{c.get('epochs_trained')} of {c.get('epochs_planned')} epochs by "
            f"{c['stopped']}" for c in cut)
    tested = [i for p in plan for i in p["test"]]
    origin = run.origin
    # the weights carry what the init model learnt: its patients count as trained on
    all_trained = trained_on(task, trained_ids)
    if origin and origin["test_patients_seen"]:
        protocol += (f"; fine-tuned from {origin['name']}, which had trained on "
                     f"{len(origin['test_patients_seen'])} of the {len(set(tested))} test "
                     "patients: these metrics are not held-out estimates")
    cfg_clean = card_config(cfg)
    fields = data_card_fields(task, cfg, len(records))
    card = new_card(
        name, task.model_task, task.model_architecture(), **fields,
        training_data={"datasets": fields["datasets"],
                       # the patients whose data trained (or selected) the shipped weights
                       "patients": all_trained,
                       "n_patients": len(all_trained),
                       **({"fine_tuning_patients": trained_ids,
                           "init_patients": "the patients of the init model's card "
                                            "(fine_tuned_from) are included in 'patients'"}
                          if origin else {}),
                       # every patient of the run (the CV cohort)
                       "cohort": [r.patient_id for r in records],
                       "n_cohort": len(records)},
        config=cfg_clean,
        metrics={"cv": summary, "protocol": protocol,
                 "per_fold": [{"fold": c["fold"], **c.get("test", {}),
                               "best_epoch": c.get("best_epoch"),
                               "val_score": c.get("best_score"),
                               "val_score_name": c.get("score_name"),
                               "val_loss": c.get("best_val_loss"),
                               "epochs_trained": c.get("epochs_trained"),
                               "epochs_planned": c.get("epochs_planned"),
                               "stopped": c.get("stopped"), "n_test": c.get("n_test")}
                              for c in fold_recs]},
        baseline=base_summary or None, final_model=chosen, train_task=task.name,
        run=out.name,
        **({"fine_tuned_from": origin} if origin else {}))
    model_path = save_model(out / f"{name}.safetensors", state, card)
    card_path = model_path.with_suffix(".card.json")
    report_html = report_json = None
    try:
        from ..evaluate.report import write_report
        report_html, report_json = write_report(
            out / "report", title=f"{name} ({task.name})", history=run.history,
            folds=fold_recs, summary=summary, baseline=base_summary, card=card)
    except ImportError:  # pragma: no cover
        pass
    installed = replaced = None
    if install:
        installed, replaced = _install_model(model_path, card_path)
    run.log(f"finished: {model_path}; cv {dumps(summary, indent=None)}")
    return TrainResult(run_dir=out, model_path=model_path, card_path=card_path,
                       report_path=report_html, report_json=report_json, fold_metrics=fold_recs,
                       cv_summary=summary, final=final_mode, installed_path=installed,
                       history=run.history, samples_per_epoch=run.samples_per_epoch, card=card,
                       replaced=replaced)


def _install_model(model_path: Path, card_path: Optional[Path]
                   ) -> Tuple[Path, Optional[str]]:
    """Copy a run's model (and card) into the user models folder under the model's file name;
    return the installed path and, when it replaced an earlier installed model of that name,
    that model (:func:`_describe_installed`). The same file installed already (a finished run
    installed again) is left as it is and replaces nothing."""
    import filecmp
    import os
    from ..models import user_models_dir
    d = user_models_dir()
    d.mkdir(parents=True, exist_ok=True)
    installed = d / model_path.name
    card_to = d / model_path.with_suffix(".card.json").name
    if (installed.exists() and filecmp.cmp(model_path, installed, shallow=False)
            and (card_path is None or (card_to.exists()
                                        and filecmp.cmp(card_path, card_to, shallow=False)))):
        return installed, None
    replaced = _describe_installed(installed) if installed.exists() else None
    shutil.copy2(model_path, installed.with_suffix(".safetensors.tmp"))
    os.replace(installed.with_suffix(".safetensors.tmp"), installed)
    if card_path is not None:
        shutil.copy2(card_path, card_to)
    return installed, replaced


def _check_finished_install_name(done: TrainResult, cfg: Dict[str, Any], task: TrainTask,
                                 shown: str) -> None:
    """A finished run's model installs under its own name (the one in its card and file):
    another name asked for (``--name``, or the ``-user`` name a shipped config's run gets) is
    refused with what to do instead, as is a name that would hide a shipped model."""
    from ..models import SHIPPED_DIR
    have = done.model_path.stem
    name = str(cfg.get("name") or task.name)
    shipped = (SHIPPED_DIR / f"{have}.safetensors").exists()
    if name == have and not shipped:
        return
    why = (f"installing it would hide the shipped model {have}" if shipped else
           f"it cannot be installed as {name!r}")
    how = ("start a new run in another folder with --name NAME to train and install it "
           "under another name" if shipped else
           f"resume with --install and --name {have} to install it as {have}, or start a new "
           f"run in another folder with --name {name}")
    raise ConfigError(f"the run in {shown} has already finished and its model is named "
                      f"{have!r} (the name is in the model file and its card, so it is not "
                      f"renamed without training again): {why}; {how}")


def _describe_installed(path: Path) -> str:
    """``name (trained <date>, run <folder>)`` of an installed model, from its card."""
    try:
        card = json.loads(path.with_suffix(".card.json").read_text())
    except (OSError, ValueError):
        card = {}
    bits = []
    if card.get("date"):
        bits.append(f"trained {card['date']}")
    if card.get("run"):
        bits.append(f"run {card['run']}")
    return path.stem + (f" ({', '.join(bits)})" if bits else "")


def _pick_fold(fold_recs: List[Dict[str, Any]]):
    """(fold record, metric name, reason) of the fold whose model is shipped (``best_fold``).
    Every fold is ranked by one metric: the task's validation score when every fold has it;
    else the validation loss when every fold has that (a fold whose score is undefined, e.g. an
    AUC on a one-class validation split, is never compared with another fold's score); else
    the first fold."""
    if not fold_recs:
        raise ConfigError("no fold finished training")
    names = {c.get("score_name") or "score" for c in fold_recs}
    name = names.pop() if len(names) == 1 else "score"

    def fin(v):
        return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))
    if all(fin(c.get("best_score")) for c in fold_recs):
        return max(fold_recs, key=lambda c: float(c["best_score"])), f"{name}", None
    undefined = [str(c["fold"]) for c in fold_recs if not fin(c.get("best_score"))]
    if all(fin(c.get("best_val_loss")) for c in fold_recs):
        return (min(fold_recs, key=lambda c: float(c["best_val_loss"])), "loss",
                f"lower is better; the {name} is undefined in fold(s) {', '.join(undefined)}, "
                "so every fold is ranked by its validation loss")
    return (fold_recs[0], "score (undefined: the first fold is taken)",
            f"the {name} is undefined in fold(s) {', '.join(undefined)} and no validation loss "
            "is reported")


def warm_up() -> None:
    """Import the heavy modules a training run needs (torch's optimizer machinery, MONAI
    transforms, sklearn, scipy, safetensors, matplotlib). Call it once in a GUI's main thread
    before starting a run: imports in the worker thread hold the GIL through C-extension
    initialisation and would freeze the event loop for a second or more."""
    import importlib
    for m in ("torch", "torch._dynamo", "torch.utils.data", "safetensors.torch", "h5py",
              "monai.transforms", "monai.losses", "sklearn.model_selection", "sklearn.metrics",
              "scipy.stats", "pandas", "yaml", "matplotlib.figure",
              "matplotlib.backends.backend_agg", "lifelines"):
        try:
            importlib.import_module(m)
        except Exception:  # optional pieces; a real problem shows up in the run itself
            pass


@dataclass
class EvalResult:
    """What ``radiogen evaluate`` (``core.evaluate.run.evaluate_model``) gives back."""
    out_dir: Path
    report_path: Path
    report_json: Path
    metrics: Dict[str, Any]
    n_patients: int
    model: str
