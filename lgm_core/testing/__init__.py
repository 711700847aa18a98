"""Tiny random stand-in models under the real file and folder names, for tests and CI.

This package is for tests, benchmarks and smoke runs only: nothing in the library imports it.

Pretrained weights cannot be downloaded in tests, so the real loading code (``load_lgm``, the
multi-view pipeline loader, ComfyUI's model folders) is exercised on small random models that are
laid out exactly like the official downloads::

    <models_dir>/lgm/model_fp16_fixrot.safetensors           (ashawkey/LGM)
    <models_dir>/diffusers/mvdream-sd2.1-diffusers/...        (ashawkey/mvdream-sd2.1-diffusers)
    <models_dir>/diffusers/imagedream-ipmv-diffusers/...      (ashawkey/imagedream-ipmv-diffusers)

``<models_dir>`` plays the role of ComfyUI's ``models/`` folder, so shipped workflows run unchanged.
Outputs of these models are meaningless (random weights); shapes, dtypes and plumbing are real.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

import torch

from .pipelines import TINY_UNET_CONFIG, TOKENIZER_DIR, make_tiny_pipeline_folder

LGM_FILENAME = "model_fp16_fixrot.safetensors"
MVDREAM_FOLDER = "mvdream-sd2.1-diffusers"
IMAGEDREAM_FOLDER = "imagedream-ipmv-diffusers"


def tiny_lgm_config():
    """A ~1 M-parameter LGM architecture (same blocks as ``big``; the loader infers it from shapes).

    Output: 4 views x 64 x 64 splat pixels = 16,384 Gaussians per object.
    """
    from ..models.lgm import LGMConfig

    return LGMConfig(
        down_channels=(32, 32, 32, 32, 32),
        down_attention=(False, False, False, False, True),
        mid_attention=True,
        up_channels=(32, 32, 32),
        up_attention=(True, False, False),
        splat_size=64,
    )


def make_standin_lgm(path: Union[str, os.PathLike], seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write a tiny random LGM checkpoint (fp16 like the official file) to ``path``."""
    from ..models.lgm import LGM
    from ..weights import save_lgm

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LGM(tiny_lgm_config(), rotation_mode="per_gaussian")
    finally:
        torch.random.set_rng_state(gen_state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_lgm(model, path, dtype=dtype)


def make_standin_models(models_dir: Union[str, os.PathLike], overwrite: bool = False) -> Dict[str, Path]:
    """Write every stand-in model under ``models_dir`` (ComfyUI's ``models/`` layout).

    Existing files/folders are kept unless ``overwrite``. Returns {"lgm", "mvdream", "imagedream"}
    -> path. Takes a few seconds on a CPU.
    """
    models_dir = Path(models_dir)
    out = {
        "lgm": models_dir / "lgm" / LGM_FILENAME,
        "mvdream": models_dir / "diffusers" / MVDREAM_FOLDER,
        "imagedream": models_dir / "diffusers" / IMAGEDREAM_FOLDER,
    }
    if overwrite or not out["lgm"].is_file():
        make_standin_lgm(out["lgm"])
    for kind in ("mvdream", "imagedream"):
        folder = out[kind]
        if overwrite or not (folder / "model_index.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            make_tiny_pipeline_folder(folder, kind)
    return out


__all__ = ["make_standin_models", "make_standin_lgm", "tiny_lgm_config", "make_tiny_pipeline_folder",
           "TINY_UNET_CONFIG", "TOKENIZER_DIR", "LGM_FILENAME", "MVDREAM_FOLDER", "IMAGEDREAM_FOLDER"]
