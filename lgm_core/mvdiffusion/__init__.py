"""Multi-view diffusion (stage 1 of LGM): MVDream (text -> 4 views) and ImageDream (image -> 4 views).

Checkpoint-exact re-implementation of the ``MultiViewUNetModel`` and ``MVDreamPipeline`` used by LGM,
without executing any code from the model repositories. See ``docs/mvdiffusion.md``::

    from lgm_core.mvdiffusion import MultiViewPipeline
    pipe = MultiViewPipeline.from_pretrained("ashawkey/mvdream-sd2.1-diffusers", device="cuda")
    out = pipe("a ceramic owl", generator=torch.Generator().manual_seed(0))
    gaussians = lgm.reconstruct(out.views)

Submodules load lazily (diffusers/transformers are imported only when a pipeline is built).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MultiViewUNet": ("lgm_core.mvdiffusion.unet", "MultiViewUNet"),
    "MultiViewPipeline": ("lgm_core.mvdiffusion.pipeline", "MultiViewPipeline"),
    "MultiViewOutput": ("lgm_core.mvdiffusion.pipeline", "MultiViewOutput"),
    "mv_camera_matrices": ("lgm_core.mvdiffusion.cameras", "mv_camera_matrices"),
    "mv_view_poses": ("lgm_core.mvdiffusion.cameras", "mv_view_poses"),
    "HUB_REPOS": ("lgm_core.mvdiffusion.loading", "HUB_REPOS"),
    "ComponentError": ("lgm_core.mvdiffusion.loading", "ComponentError"),
    "make_tiny_pipeline_folder": ("lgm_core.mvdiffusion.testing", "make_tiny_pipeline_folder"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lgm_core.mvdiffusion' has no attribute {name!r}")


def __dir__():
    return __all__
