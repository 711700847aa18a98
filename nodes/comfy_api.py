"""The one import point of ComfyUI for this pack.

This is the ONLY module of the pack that imports ComfyUI (``comfy_api``, ``comfy``, ``folder_paths``,
``latent_preview``). ComfyUI marks its V3 API ``comfy_api.latest`` as unstable; if it moves, only this
file changes. The other adapter modules import what they need from here, each with one job:

- ``bridge``: the types bridge (core ``SPLAT``/``MESH`` <-> ``lgm_core`` objects, the one frame, UV and
  colour conversion at the boundary);
- ``files``: model folders, input/output files, the bundled demo model and example inputs;
- ``devices``: compute/intermediate devices, dtypes, accelerator logging;
- ``progress``: progress bars with previews, interruption;
- ``model_management``: the pack's models under ComfyUI's memory manager (``ManagedModel``).

All numerical work lives in the plain-PyTorch library ``lgm_core``.
"""

from __future__ import annotations

import logging
import torch

import comfy.model_management as model_management
from comfy.cli_args import args as cli_args
import comfy.model_patcher as model_patcher
from comfy.patcher_extension import CallbacksMP
import comfy.utils as comfy_utils
import folder_paths
from comfy_api.latest import ComfyExtension, Types, io, ui

log = logging.getLogger("comfyui-lgm")

__all__ = ["ComfyExtension", "Types", "io", "ui", "cli_args", "model_management", "model_patcher", "CallbacksMP",
           "comfy_utils",
           "folder_paths", "log", "latent_previewer", "core_mesh_batch_helpers"]


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
