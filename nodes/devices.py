"""Devices and dtypes as ComfyUI chooses them (``--cpu``, ``--cuda-device``, ``--gpu-only`` ...)."""

from __future__ import annotations

import torch

from .comfy_api import log, model_management

__all__ = ["torch_device", "intermediate_device", "pick_dtype", "log_accelerators"]


def torch_device() -> torch.device:
    """The device ComfyUI computes on (respects ``--cpu``, ``--cuda-device``, ...)."""
    return model_management.get_torch_device()


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, SPLAT, ...) are kept between nodes (CPU unless --gpu-only)."""
    return model_management.intermediate_device()


def pick_dtype(precision: str, device: torch.device | None = None) -> torch.dtype:
    """Map a precision choice (auto/fp16/bf16/fp32) to a dtype; auto follows ComfyUI's own rules."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    device = device or torch_device()
    if model_management.is_device_cpu(device):
        return torch.float32
    if model_management.should_use_fp16(device):
        return torch.float16
    if model_management.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def log_accelerators() -> None:
    """Log once whether the optional gsplat accelerator is installed (it is never imported here: it may
    compile CUDA code on first use; lgm_core.render tries it lazily and falls back to PyTorch)."""
    import importlib.util

    if importlib.util.find_spec("gsplat") is None:
        log.info("LGM: gsplat not installed; splats render with the built-in PyTorch renderer")
    else:
        log.info("LGM: gsplat installed; used for CUDA rendering when it loads (else PyTorch fallback)")
