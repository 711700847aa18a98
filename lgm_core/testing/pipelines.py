"""Tiny stand-in MVDream / ImageDream models in the hub layout, for tests and smoke runs.

:func:`make_tiny_pipeline_folder` writes a complete folder (model_index.json, unet, vae, text_encoder,
tokenizer, scheduler and, for ImageDream, image_encoder + feature_extractor) with random weights.
It loads with :meth:`MultiViewPipeline.from_pretrained` like the real repos and produces noise-like
views in a fraction of a second on a CPU. The tokenizer files are the real SD2.1 CLIP tokenizer files,
vendored in ``lgm_core/testing/clip_tokenizer`` (with their licence), so an installed wheel can build
stand-ins too.

The folder deliberately exercises the loader's compatibility paths: the text encoder is saved as an
``.fp16`` variant with transformers-4 style ``text_model.``-prefixed keys, the image encoder with the
unprefixed transformers-5 naming.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

__all__ = ["make_tiny_pipeline_folder", "TINY_UNET_CONFIG", "TOKENIZER_DIR"]

TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
"""The vendored SD2.1 / CLIP tokenizer files (see its LICENSE)."""

TINY_UNET_CONFIG = {
    "_class_name": "MultiViewUNetModel",
    "attention_resolutions": [2],
    "camera_dim": 16,
    "channel_mult": [1, 2],
    "context_dim": 32,
    "image_size": 32,
    "in_channels": 4,
    "model_channels": 32,
    "num_head_channels": 16,
    "num_res_blocks": 1,
    "out_channels": 4,
    "transformer_depth": 1,
}
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "set_alpha_to_one": False,
    "steps_offset": 1, "thresholding": False, "timestep_spacing": "leading", "trained_betas": None,
}
_FEATURE_EXTRACTOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}, "use_square_size": False,
}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _save(state, path: Path, dtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    save_file(state, str(path), metadata={"format": "pt"})


def make_tiny_pipeline_folder(path: Union[str, os.PathLike], kind: str = "mvdream", seed: int = 0,
                              tokenizer_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Write a tiny random-weight MVDream (``kind="mvdream"``) or ImageDream (``"imagedream"``)
    pipeline folder at ``path`` (created; written to a temporary sibling and renamed into place, so
    an existing complete folder is replaced atomically). Returns the folder. About 7 MB, < 1 s."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..mvdiffusion.unet import MultiViewUNet

    if kind not in ("mvdream", "imagedream"):
        raise ValueError(f"kind must be 'mvdream' or 'imagedream', got {kind!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tok_src = Path(tokenizer_dir) if tokenizer_dir is not None else TOKENIZER_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=str(target.parent)))
    try:
        torch.manual_seed(seed)
        imagedream = kind == "imagedream"
        index = {
            "_class_name": "MVDreamPipeline", "_diffusers_version": "0.25.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"] if imagedream else [None, None],
            "image_encoder": ["transformers", "CLIPVisionModel"] if imagedream else [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["mv_unet", "MultiViewUNetModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        _write_json(tmp / "model_index.json", index)

        unet_cfg = dict(TINY_UNET_CONFIG)
        if imagedream:
            unet_cfg.update(ip_dim=4, ip_input_dim=64)
        unet = MultiViewUNet(**{k: v for k, v in unet_cfg.items() if not k.startswith("_")})
        with torch.no_grad():  # the original init zeroes output convs: make the stand-in non-trivial
            for name, p in unet.named_parameters():
                if name.endswith("weight") and p.dim() >= 2 and p.abs().max() == 0:
                    p.normal_(0, 0.02)
        _write_json(tmp / "unet" / "config.json", unet_cfg)
        _save(unet.state_dict(), tmp / "unet" / "diffusion_pytorch_model.safetensors")

        vae_cfg = {
            "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [8, 8, 16, 16],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
            "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8, "out_channels": 3,
            "sample_size": 256, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
        }
        vae = AutoencoderKL.from_config(vae_cfg)
        _write_json(tmp / "vae" / "config.json", vae_cfg)
        _save(vae.state_dict(), tmp / "vae" / "diffusion_pytorch_model.safetensors")

        text_cfg = CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
            bos_token_id=0, eos_token_id=2, pad_token_id=1)
        text = CLIPTextModel(text_cfg)
        text_cfg_dict = text_cfg.to_dict()
        text_cfg_dict["architectures"] = ["CLIPTextModel"]
        _write_json(tmp / "text_encoder" / "config.json", text_cfg_dict)
        sd = {("text_model." + k if not k.startswith("text_model.") else k): v
              for k, v in text.state_dict().items()}
        _save(sd, tmp / "text_encoder" / "model.fp16.safetensors", torch.float16)

        (tmp / "tokenizer").mkdir()
        for name in _TOKENIZER_FILES:
            if (tok_src / name).is_file():
                shutil.copyfile(tok_src / name, tmp / "tokenizer" / name)
        _write_json(tmp / "scheduler" / "scheduler_config.json", _SCHEDULER)

        if imagedream:
            vis_cfg = CLIPVisionConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                image_size=224, patch_size=32, hidden_act="gelu", projection_dim=32)
            vis = CLIPVisionModel(vis_cfg)
            vis_cfg_dict = vis_cfg.to_dict()
            vis_cfg_dict["architectures"] = ["CLIPVisionModel"]
            _write_json(tmp / "image_encoder" / "config.json", vis_cfg_dict)
            sd = {k[len("vision_model."):] if k.startswith("vision_model.") else k: v
                  for k, v in vis.state_dict().items()}
            _save(sd, tmp / "image_encoder" / "model.safetensors")
            _write_json(tmp / "feature_extractor" / "preprocessor_config.json", _FEATURE_EXTRACTOR)

        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
