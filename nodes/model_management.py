"""The pack's models under ComfyUI's memory manager.

A :class:`ManagedModel` is what travels on the ``LGM_MODEL`` and ``LGM_MV_PIPELINE`` sockets: the model
object the nodes call (an ``lgm_core.LGM`` or an ``lgm_core.mvdiffusion.MultiViewPipeline``) plus a
``model_patcher.ModelPatcher`` over its torch modules, so ComfyUI loads it on the compute device
when a node needs it, evicts other models when VRAM is short, honours --lowvram/--novram/--cpu and may
move it back to the offload device between uses.

The library's fast path: the first time :meth:`ManagedModel.get` has the weights on the compute device
it calls the model's ``optimize_for_inference()`` (no arguments: whatever the library's default fast
path is — today CUDA graphs — the nodes get it; once per model, on the device it will run on, since a
path that compiles for a GPU needs the weights there; inert on the CPU). Captured CUDA graphs: the
runtime policy's graph runner (``lgm_core.runtime.CUDAGraphRunner``) notices by itself when ComfyUI
moved the weights and captures again. What this module adds is freeing their memory as soon as ComfyUI
unloads the model (``release_cuda_graphs()`` of the model, on the patcher's detach callback), so
offloading really gives the VRAM back.
"""

from __future__ import annotations

from typing import Any

import torch

from .comfy_api import CallbacksMP, model_management, model_patcher
from .devices import torch_device

__all__ = ["ManagedModel"]


class _Holder(torch.nn.Module):
    """Container so ComfyUI's ModelPatcher can set its bookkeeping attributes without touching ours."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class ManagedModel:
    """A model object plus the ComfyUI patcher that places its weights.

    ``model``: the object nodes call (never loaded or moved by reading this attribute; use it for cheap
    questions such as ``is_imagedream``). ``modules``: the torch modules ComfyUI moves (default: ``model``
    itself, which must then be an ``nn.Module``). ``info``: metadata for display (kind, preset, file, ...).
    """

    def __init__(self, model: Any, dtype: torch.dtype, *, modules: torch.nn.Module | None = None, **info: Any):
        if modules is None:
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"ManagedModel needs the torch modules of a {type(model).__name__} (modules=...)")
            modules = model
        self.model = model
        self.dtype = dtype
        self.info = dict(info)
        self.optimized = not callable(getattr(model, "optimize_for_inference", None))
        self.patcher = model_patcher.ModelPatcher(
            _Holder(modules), load_device=torch_device(), offload_device=model_management.unet_offload_device())
        release = getattr(model, "release_cuda_graphs", None)
        if release is not None:
            self.patcher.add_callback(CallbacksMP.ON_DETACH, lambda _patcher, _unpatch_all: release())

    @property
    def device(self) -> torch.device:
        """The compute device ComfyUI loads the model on."""
        return self.patcher.load_device

    def get(self) -> Any:
        """Load the weights on the compute device (if they are not there already) and return ``model``,
        switched to the library's fast inference path on that device the first time."""
        # Modules here have no comfy.ops cast hooks, so they are always loaded whole.
        model_management.load_models_gpu([self.patcher], force_full_load=True)
        if not self.optimized:
            self.model.optimize_for_inference()  # the library's default fast path, on the compute device
            self.optimized = True
        return self.model

    def __repr__(self) -> str:
        desc = ", ".join(f"{k}={v}" for k, v in self.info.items())
        return f"ManagedModel({type(self.model).__name__}, {desc}, dtype={self.dtype})"
