"""lgm_core: a plain-PyTorch implementation of LGM (Large Multi-View Gaussian Model).

No ComfyUI import anywhere in this package, and no network at import. ``import lgm_core`` loads
torch and the package's own small modules; heavy libraries (diffusers, transformers, trimesh,
xatlas, scikit-image, imageio, gsplat, huggingface_hub) are imported inside the functions that
need them.

Main entry points::

    from lgm_core import load_lgm, save_ply
    model = load_lgm("model_fp16_fixrot.safetensors")          # or a hub repo id / folder
    gaussians = model.reconstruct(views)                        # [B,4,3,H,W] in [0,1] -> Gaussians
    save_ply(gaussians, "object.ply")
"""

from __future__ import annotations

from .cameras import Cameras, default_input_cameras, orbit_camera, plucker_rays
from .gaussians import Gaussians
from .mesh import Mesh, extract_mesh
from .models.lgm import LGM, LGMConfig
from .ply import load_ply, save_ply
from .render import render
from .weights import load_lgm

__version__ = "0.1.0"

__all__ = ["Cameras", "Gaussians", "LGM", "LGMConfig", "Mesh", "default_input_cameras", "extract_mesh", "load_lgm",
           "load_ply", "orbit_camera", "plucker_rays", "render", "save_ply", "__version__"]
