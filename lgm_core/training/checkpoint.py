"""Training checkpoints: ``RUN/checkpoints/step_N/``, written atomically, no pickle.

A checkpoint folder holds

* ``model.safetensors`` — the weights in the official key layout (float32; loadable by
  :func:`lgm_core.load_lgm`, config in the metadata);
* ``optimizer.safetensors`` — every tensor of the optimiser state (keys ``<param index>.<name>``);
* ``state.json`` — optimiser hyper-parameters and non-tensor state, scheduler state, the step, the
  Python RNG state and the run config; written last;
* ``rng.safetensors`` — torch CPU (and CUDA) generator states.

The folder is assembled under a temporary name and renamed into place, so a run killed while saving
leaves the previous checkpoint untouched and no half-written ``step_N``. Older checkpoints beyond
``keep`` are removed after a successful save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from ..fileio import atomic_write_bytes

CHECKPOINTS_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


def _optimizer_to_flat(state: dict) -> tuple:
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, dict] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: Dict[str, torch.Tensor], meta: dict) -> dict:
    state: Dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple:
    """(tensors, json-able) snapshot of the torch, CUDA, Python and NumPy generators."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in meta:
        v, s, g = meta["python"]
        random.setstate((v, tuple(s), g))
    if "numpy" in meta:
        n = meta["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def list_checkpoints(run_dir: Union[str, os.PathLike]) -> Dict[int, Path]:
    """{step: folder} of the complete checkpoints of a run (those with ``state.json``)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    out = {}
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / "state.json").is_file():
                out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def latest_checkpoint(run_dir: Union[str, os.PathLike]) -> Optional[Path]:
    ckpts = list_checkpoints(run_dir)
    return ckpts[max(ckpts)] if ckpts else None


def save_checkpoint(run_dir: Union[str, os.PathLike], step: int, model, optimizer, scheduler,
                    extra: Optional[dict] = None, keep: int = 2) -> Path:
    """Write ``RUN/checkpoints/step_<step>/`` atomically (see the module docstring); returns it."""
    from safetensors.torch import save as st_save

    from ..weights import save_lgm

    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(step)}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{int(step)}.", suffix=".tmp", dir=root))
    try:
        save_lgm(model, tmp / "model.safetensors", dtype=torch.float32)
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer.state_dict())
        atomic_write_bytes(tmp / "optimizer.safetensors", st_save(opt_tensors))
        rng_tensors, rng_meta = rng_state()
        atomic_write_bytes(tmp / "rng.safetensors", st_save({k: v.contiguous() for k, v in rng_tensors.items()}))
        state = {"step": int(step), "optimizer": opt_meta, "scheduler": scheduler.state_dict() if scheduler else None,
                 "rng": rng_meta, "extra": extra or {}}
        atomic_write_bytes(tmp / "state.json", json.dumps(state).encode())
        if final.exists():  # saving the same step again (e.g. a final save right after a periodic one)
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in sorted(list_checkpoints(run_dir))[:-max(1, int(keep))]:
        shutil.rmtree(root / f"step_{stale}", ignore_errors=True)
    for leftover in root.glob(".step_*.tmp"):  # from runs killed mid-save
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def load_checkpoint(path: Union[str, os.PathLike], model, optimizer=None, scheduler=None,
                    restore_rng: bool = True) -> dict:
    """Restore a checkpoint folder into ``model`` (strictly), ``optimizer`` and ``scheduler``;
    returns the saved state (``step``, ``extra`` ...)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a complete training checkpoint ({exc})") from None
    weights = load_file(str(path / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        opt = _optimizer_from_flat(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        optimizer.load_state_dict(opt)
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(load_file(str(path / "rng.safetensors")), state.get("rng", {}))
    return state
