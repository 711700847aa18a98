"""Loading MVDream / ImageDream components from a hub-layout folder, without executing any Python
file of the folder (``unet/mv_unet.py`` and ``pipeline_mvdream.py`` are never imported).

Layout (``model_index.json`` + one sub-folder per component)::

    unet/config.json + diffusion_pytorch_model[.fp16].safetensors   -> MultiViewUNet (ours)
    vae/config.json  + diffusion_pytorch_model[.fp16].safetensors   -> diffusers AutoencoderKL
    text_encoder/config.json + model[.fp16].safetensors             -> transformers CLIPTextModel
    tokenizer/ (vocab.json, merges.txt, ...)                         -> transformers CLIPTokenizer
    scheduler/scheduler_config.json                                  -> the diffusers scheduler it names
    image_encoder/, feature_extractor/ (ImageDream only)             -> CLIPVisionModel, preprocessing

Weights: safetensors only; plain, ``.fp16`` variant, or sharded (``*.safetensors.index.json``).
CLIP weights are accepted with the transformers-4 (``text_model.``/``vision_model.`` prefixed) and
the transformers-5 (unprefixed) key naming. Every load is strict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .. import hub
from ..paths import UnsafePathError, contained_path
from ..weights import load_safetensors as load_file

__all__ = ["resolve_source", "read_model_index", "load_component_state_dict", "load_unet",
           "load_vae", "load_clip_text", "load_clip_vision", "load_tokenizer", "load_scheduler",
           "load_feature_extractor", "HUB_REPOS", "HUB_LAYOUT_FILES", "ComponentError"]

HUB_REPOS = {key: hub.OFFICIAL[key].repo_id for key in ("mvdream", "imagedream")}
"""The official multi-view models (from the registry in :mod:`lgm_core.hub`)."""
HUB_LAYOUT_FILES = list(hub.DIFFUSERS_LAYOUT)
"""What a hub-layout model folder holds (the *.json, *.txt and *.safetensors files of these folders)."""


class ComponentError(FileNotFoundError):
    """A required component or weight file is missing or malformed in a model folder."""


def resolve_source(source: Union[str, os.PathLike], *, local_files_only: Optional[bool] = None) -> Path:
    """Local folder -> itself; hub repo id (``owner/name``) -> local snapshot through
    :func:`lgm_core.hub.fetch_snapshot` (only json/txt/safetensors files, never Python files; offline:
    the hub cache or a one-line :class:`lgm_core.hub.HubUnavailable`)."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        return path
    if hub.is_repo_id(source):
        return hub.fetch_snapshot(str(source), what=hub.MVDREAM.what, files=hub.snapshot_files(str(source)),
                                  local_files_only=local_files_only)
    raise ComponentError(f"model source {str(source)!r} is neither a folder nor a hub repo id")


def read_model_index(folder: Path) -> Dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ComponentError(f"{folder} has no model_index.json (expected a diffusers hub-layout folder)")
    with open(index, "r", encoding="utf-8") as f:
        return json.load(f)


def _read_json(path: Path) -> Dict:
    if not path.is_file():
        raise ComponentError(f"missing {path.parent.name}/{path.name} in {path.parent.parent}")
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def load_component_state_dict(folder: Path, stem: str) -> Dict[str, torch.Tensor]:
    """Read ``{stem}.safetensors`` (or its ``.fp16`` variant, or a sharded index) from ``folder``."""
    for variant in ("", ".fp16"):
        single = folder / f"{stem}{variant}.safetensors"
        if single.is_file():
            return load_file(str(single))
        index = folder / f"{stem}{variant}.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ComponentError(f"{index}: 'weight_map' must map tensor names to shard file names")
            state: Dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                try:  # shard names come from the folder's json: never leave the folder
                    shard_path = contained_path(folder, shard, must_exist=True)
                except UnsafePathError as exc:
                    raise ComponentError(f"{index}: {exc}") from None
                state.update(load_file(shard_path))
            return state
    others = sorted(p.name for p in folder.glob(f"{stem}*")) if folder.is_dir() else []
    hint = f" (found {others}; only .safetensors weights are loaded)" if others else ""
    raise ComponentError(f"no {stem}.safetensors weights in {folder}{hint}")


def _finish(module: torch.nn.Module, dtype: Optional[torch.dtype], device) -> torch.nn.Module:
    module.eval().requires_grad_(False)
    first = next(module.parameters())
    if dtype is not None and first.dtype != dtype:
        module.to(dtype=dtype)
    if device is not None and first.device != torch.device(device):
        module.to(device=device)
    return module


def load_unet(folder: Path, dtype=None, device=None):
    """Build :class:`MultiViewUNet` from ``unet/config.json`` and load its weights strictly."""
    from .unet import MultiViewUNet

    cfg = _read_json(folder / "unet" / "config.json")
    with torch.device("meta"):
        unet = MultiViewUNet(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    state = load_component_state_dict(folder / "unet", "diffusion_pytorch_model")
    unet.load_state_dict(state, strict=True, assign=True)
    return _finish(unet, dtype, device)


def load_vae(folder: Path, dtype=None, device=None):
    from diffusers import AutoencoderKL

    cfg = _read_json(folder / "vae" / "config.json")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(cfg)
    state = load_component_state_dict(folder / "vae", "diffusion_pytorch_model")
    vae.load_state_dict(state, strict=True, assign=True)
    _check_no_meta(vae, "vae")
    return _finish(vae, dtype, device)


def _check_no_meta(module: torch.nn.Module, name: str) -> None:
    for key, buf in module.named_buffers():
        if buf.is_meta:
            if key.endswith("position_ids"):
                parent = module.get_submodule(key.rsplit(".", 1)[0]) if "." in key else module
                parent.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape),
                                       persistent=False)
            else:
                raise ComponentError(f"{name}: buffer {key} was not initialised")
    for key, p in module.named_parameters():
        if p.is_meta:
            raise ComponentError(f"{name}: parameter {key} missing from the checkpoint")


def _load_clip(model, state: Dict[str, torch.Tensor], prefix: str, name: str):
    """Strict load accepting both the prefixed (transformers 4) and unprefixed (5) key naming."""
    expected = set(model.state_dict().keys())
    fixed: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer in old checkpoints, non-persistent in current transformers
        cand = key
        if cand not in expected and cand.startswith(prefix) and cand[len(prefix):] in expected:
            cand = cand[len(prefix):]
        elif cand not in expected and prefix + cand in expected:
            cand = prefix + cand
        fixed[cand] = value
    missing = sorted(expected - set(fixed) - {k for k in expected if k.endswith("position_ids")})
    unexpected = sorted(set(fixed) - expected)
    if missing or unexpected:
        raise ComponentError(f"{name}: checkpoint keys do not match the config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict(fixed, strict=False, assign=True)
    _check_no_meta(model, name)
    return model


def load_clip_text(folder: Path, dtype=None, device=None):
    from transformers import CLIPTextConfig, CLIPTextModel

    sub = folder / "text_encoder"
    config = CLIPTextConfig.from_dict(_read_json(sub / "config.json"))
    with torch.device("meta"):
        model = CLIPTextModel(config)
    _load_clip(model, load_component_state_dict(sub, "model"), "text_model.", "text_encoder")
    return _finish(model, dtype, device)


def load_clip_vision(folder: Path, dtype=None, device=None):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sub = folder / "image_encoder"
    config = CLIPVisionConfig.from_dict(_read_json(sub / "config.json"))
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    _load_clip(model, load_component_state_dict(sub, "model"), "vision_model.", "image_encoder")
    return _finish(model, dtype, device)


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    sub = folder / "tokenizer"
    if not ((sub / "vocab.json").is_file() and (sub / "merges.txt").is_file()) and not (sub / "tokenizer.json").is_file():
        raise ComponentError(f"missing tokenizer files (vocab.json + merges.txt or tokenizer.json) in {sub}")
    return CLIPTokenizer.from_pretrained(str(sub))


def load_scheduler(folder: Path):
    """The diffusers scheduler class named in ``scheduler/scheduler_config.json`` (DDIM by default)."""
    import diffusers

    cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    cls = getattr(diffusers, str(cfg.get("_class_name", "DDIMScheduler")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDIMScheduler
    return cls.from_config(cfg)


def load_feature_extractor(folder: Path) -> Optional[Dict]:
    """CLIP preprocessing parameters (the ``preprocessor_config.json`` dict), or None if absent."""
    path = folder / "feature_extractor" / "preprocessor_config.json"
    return _read_json(path) if path.is_file() else None
