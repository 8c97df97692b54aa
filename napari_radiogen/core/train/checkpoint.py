"""Resumable training checkpoints, written atomically, never pickled.

``RUN_DIR/checkpoint.safetensors`` holds the model weights (``model.*``), the optimizer's tensor
state (``optim.<param index>.<key>``) and, in its safetensors metadata, the JSON training state
(epoch, fold, history, optimizer hyper-parameters, scheduler and GradScaler state, RNG seeds).
The one file is written to a temporary name and ``os.replace``d, so a kill mid-write leaves the
previous good checkpoint intact; ``RUN_DIR/state.json`` is a human-readable copy of the state.
Once the run's model, card and report are written the state gets a ``finished`` record (the
model and card file names, :func:`update_state`): a ``--resume`` of that run then does nothing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError
from ..models import _atomic_write_bytes, atomic_write_text

CHECKPOINT = "checkpoint.safetensors"
STATE = "state.json"


def _jsonable(x: Any) -> Any:
    import torch
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    try:
        import numpy as np
        if isinstance(x, np.generic):
            return x.item()
    except Exception:  # pragma: no cover
        pass
    return str(x)


def optimizer_to_flat(optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split an optimizer state_dict into (tensors, JSON part)."""
    import torch
    sd = optimizer.state_dict()
    tensors: Dict[str, Any] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = _jsonable(v)
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def optimizer_from_flat(optimizer, tensors: Dict[str, Any], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for pid, sc in (meta.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: os.PathLike, model, optimizer=None, *, state: Dict[str, Any],
                    scheduler=None, scaler=None) -> Path:
    """Atomically write model + optimizer + JSON state to ``run_dir/checkpoint.safetensors``."""
    run_dir = Path(run_dir)
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    st = dict(state)
    if optimizer is not None:
        ot, om = optimizer_to_flat(optimizer)
        tensors.update(ot)
        st["optimizer"] = om
    if scheduler is not None:
        st["scheduler"] = _jsonable(scheduler.state_dict())
    if scaler is not None and scaler.is_enabled():
        st["scaler"] = _jsonable(scaler.state_dict())
    return _write(run_dir, tensors, st)


def _write(run_dir: Path, tensors: Dict[str, Any], st: Dict[str, Any]) -> Path:
    from safetensors.torch import save

    text = json.dumps(_jsonable(st))
    blob = save(tensors, metadata={"state": text, "format": "napari-radiogen-checkpoint/1"})
    path = run_dir / CHECKPOINT
    _atomic_write_bytes(path, blob)
    # the readable copy is strict JSON (an undefined score, or the -inf a run starts its best
    # score at, reads null); the checkpoint's own copy keeps them for the resume
    from ..outputs import dumps
    atomic_write_text(run_dir / STATE, dumps(json.loads(text), indent=1))
    return path


def update_state(run_dir: os.PathLike, updates: Dict[str, Any]) -> Optional[Path]:
    """Add ``updates`` to the JSON state of the run's checkpoint (tensors unchanged; written
    atomically like :func:`save_checkpoint`), e.g. the engine's ``finished`` record once the
    run's model, card and report are written. None when there is no checkpoint."""
    got = read_checkpoint(run_dir)
    if got is None:
        return None
    tensors, st = got
    st.update(updates)
    return _write(Path(run_dir), tensors, st)


def read_checkpoint(run_dir: os.PathLike) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(tensors, state) of the run's checkpoint, or None when there is none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        state = json.loads(meta["state"])
    except Exception as e:
        raise ConfigError(f"{path}: the checkpoint cannot be read ({e}); start without --resume"
                          ) from None
    return tensors, state


def load_into(tensors: Dict[str, Any], state: Dict[str, Any], model, optimizer=None,
              scheduler=None, scaler=None) -> None:
    msd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(msd, strict=True)
    if optimizer is not None and "optimizer" in state:
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
