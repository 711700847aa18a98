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

Graphs survive ComfyUI's bookkeeping detach: ``load_models_gpu`` on a model that is already loaded
pops it from its list and calls ``detach(unpatch_all=False)`` before loading it again (0.3.x and 0.33
alike), with the weights left where they are. Releasing the graphs there made every node execution
capture again (LGM Reconstruct 121-144 ms instead of ~16 ms on the H200 in ComfyUI 0.33); only a detach
that unpatches (the weights leave) releases them. A model that is resident — ComfyUI lists it as
loaded, whole, on its load device, with more free VRAM than core reserves for inference — skips
``load_models_gpu`` altogether (``ManagedModel.resident_fast_path``): it is only marked as in use
and moved to the front of ComfyUI's list, as that call would do, without its free-memory pass
(which on CUDA synchronises and may empty the cache every time).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from .comfy_api import CallbacksMP, model_management, model_patcher
from .devices import torch_device

__all__ = ["ManagedModel"]


def _release_on_unpatch(cls, release):
    """The patcher's ON_DETACH callback: ``release()`` when the detach unpatches (the weights leave the
    device), or on every detach with ``cls.release_on_any_detach``."""
    def callback(_patcher, unpatch_all):
        if unpatch_all or cls.release_on_any_detach:
            release()
    return callback


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
            # neither callback refers to this ManagedModel (no reference cycle through the patcher): dropped
            # by ComfyUI's cache, it dies at once and frees the graphs' memory without waiting for the gc
            self.patcher.add_callback(CallbacksMP.ON_DETACH, _release_on_unpatch(type(self), release))
            weakref.finalize(self, release).atexit = False

    @property
    def device(self) -> torch.device:
        """The compute device ComfyUI loads the model on."""
        return self.patcher.load_device

    resident_fast_path = True
    """Skip ``load_models_gpu`` when the weights are resident (see the module docstring)."""

    release_on_any_detach = False
    """Release captured graphs on every detach, also ComfyUI's bookkeeping one (the old behaviour; for
    benchmarks/bench_comfyui.py's overhead probe only)."""

    def _resident(self) -> bool:
        """Whether ComfyUI has the weights loaded whole on the load device with room left for inference;
        if so, mark the model as in use and most recent, as ``load_models_gpu`` would."""
        loaded = model_management.current_loaded_models
        index = next((i for i, entry in enumerate(loaded) if entry.model is self.patcher), None)
        if index is None or getattr(self.patcher.model, "model_lowvram", False):
            return False
        if self.patcher.loaded_size() < self.patcher.model_size():
            return False
        device = self.patcher.load_device
        if (not model_management.is_device_cpu(device)
                and model_management.get_free_memory(device) < 2 * model_management.minimum_inference_memory()):
            return False  # little VRAM left: ComfyUI makes room as usual
        entry = loaded.pop(index)
        entry.currently_used = True
        loaded.insert(0, entry)
        return True

    def get(self) -> Any:
        """Load the weights on the compute device (if they are not there already) and return ``model``,
        switched to the library's fast inference path on that device the first time."""
        if not (self.resident_fast_path and self._resident()):
            # Modules here have no comfy.ops cast hooks, so they are always loaded whole.
            model_management.load_models_gpu([self.patcher], force_full_load=True)
        if not self.optimized:
            self.model.optimize_for_inference()  # the library's default fast path, on the compute device
            self.optimized = True
        return self.model

    def __repr__(self) -> str:
        desc = ", ".join(f"{k}={v}" for k, v in self.info.items())
        return f"ManagedModel({type(self.model).__name__}, {desc}, dtype={self.dtype})"
