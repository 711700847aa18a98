"""lgm_core: a plain-PyTorch implementation of LGM (Large Multi-View Gaussian Model).

No ComfyUI import anywhere in this package. Heavy submodules are imported lazily, so
``import lgm_core`` is cheap and never touches the network.

Main entry points::

    from lgm_core import load_lgm, Gaussians, Cameras
    model = load_lgm("model_fp16_fixrot.safetensors")          # or a hub repo id / folder
    gaussians = model.reconstruct(views)                        # [B,4,3,H,W] in [0,1] -> Gaussians
    gaussians.save_ply("object.ply")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Gaussians": ("lgm_core.gaussians", "Gaussians"),
    "Cameras": ("lgm_core.cameras", "Cameras"),
    "orbit_camera": ("lgm_core.cameras", "orbit_camera"),
    "default_input_cameras": ("lgm_core.cameras", "default_input_cameras"),
    "plucker_rays": ("lgm_core.cameras", "plucker_rays"),
    "LGM": ("lgm_core.models.lgm", "LGM"),
    "LGMConfig": ("lgm_core.models.lgm", "LGMConfig"),
    "load_lgm": ("lgm_core.weights", "load_lgm"),
    "load_ply": ("lgm_core.ply", "load_ply"),
    "save_ply": ("lgm_core.ply", "save_ply"),
    "Mesh": ("lgm_core.mesh", "Mesh"),
    "extract_mesh": ("lgm_core.mesh", "extract_mesh"),
    "render": ("lgm_core.render", "render"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lgm_core' has no attribute {name!r}")


def __dir__():
    return __all__
