"""The one import point of ComfyUI for this pack.

This is the ONLY module of the pack that imports ComfyUI (``comfy_api``, ``comfy``, ``folder_paths``,
``latent_preview``). ComfyUI marks its V3 API ``comfy_api.latest`` as unstable; if it moves, only this
file changes. The other adapter modules import what they need from here, each with one job:

- ``bridge``: the types bridge (core ``SPLAT``/``MESH`` <-> ``lgm_core`` objects, the one frame, UV and
  colour conversion at the boundary);
- ``files``: model folders, input/output files, the bundled demo model and example inputs;
- ``devices``: compute/intermediate devices, dtypes, accelerator logging;
- ``progress``: progress bars with previews, interruption.

All numerical work lives in the plain-PyTorch library ``lgm_core``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

import comfy.model_management as model_management
from comfy.cli_args import args as cli_args
import comfy.model_patcher as model_patcher
import comfy.utils as comfy_utils
import folder_paths
from comfy_api.latest import ComfyExtension, Types, io, ui

log = logging.getLogger("comfyui-lgm")

__all__ = ["ComfyExtension", "Types", "io", "ui", "cli_args", "model_management", "model_patcher", "comfy_utils",
           "folder_paths", "log", "ManagedModel", "latent_previewer", "core_mesh_batch_helpers"]


def latent_previewer(device: torch.device):
    """ComfyUI's previewer for SD-family latents (chosen by ``--preview-method``), or None."""
    import comfy.latent_formats
    import latent_preview

    return latent_preview.get_previewer(device, comfy.latent_formats.SD15())


def core_mesh_batch_helpers():
    """Core's MESH batch helpers ``(pack_variable_mesh_batch, get_mesh_batch_item)`` on cores that have
    them (0.33), else ``(None, None)`` (0.3.75)."""
    try:
        from comfy_extras.nodes_save_3d import get_mesh_batch_item, pack_variable_mesh_batch
    except ImportError:
        return None, None
    return pack_variable_mesh_batch, get_mesh_batch_item


class _Holder(torch.nn.Module):
    """Container so ComfyUI's ModelPatcher can set its bookkeeping attributes without touching ours."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class ManagedModel:
    """A model under ComfyUI's memory manager (``comfy.model_patcher.ModelPatcher``).

    ``get()`` asks ComfyUI to load it on the compute device (evicting other models if VRAM is short,
    honouring --lowvram/--novram/--cpu) and returns the module; between uses ComfyUI may move it back
    to the offload device. ``info`` carries metadata for display (kind, preset, dtype, ...).
    """

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype,
                 on_reload: Callable[[torch.device], Any] | None = None, **info: Any):
        self.dtype = dtype
        self.info = dict(info)
        self.on_reload = on_reload
        self._placement = None
        self.patcher = model_patcher.ModelPatcher(
            _Holder(module), load_device=model_management.get_torch_device(), offload_device=model_management.unet_offload_device())

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def get(self) -> torch.nn.Module:
        """Load on the compute device (if not there already) and return the wrapped module."""
        # Modules here have no comfy.ops cast hooks, so they are always loaded whole.
        model_management.load_models_gpu([self.patcher], force_full_load=True)
        module = self.patcher.model.inner
        first = next(module.parameters(), None)
        placement = (first.device, first.data_ptr()) if first is not None else None
        if placement != self._placement:
            # weights moved since the last use (first load, or ComfyUI offloaded and reloaded them):
            # let the owner drop device-bound caches (e.g. captured CUDA graphs)
            if self.on_reload is not None and self._placement is not None:
                self.on_reload(self.device)
            self._placement = placement
        return module

    def __repr__(self) -> str:
        desc = ", ".join(f"{k}={v}" for k, v in self.info.items())
        return f"ManagedModel({desc}, dtype={self.dtype})"
