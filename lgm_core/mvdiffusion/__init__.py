"""Multi-view diffusion (stage 1 of LGM): MVDream (text -> 4 views) and ImageDream (image -> 4 views).

Checkpoint-exact re-implementation of the ``MultiViewUNetModel`` and ``MVDreamPipeline`` used by LGM,
without executing any code from the model repositories. See ``docs/mvdiffusion.md``::

    from lgm_core.mvdiffusion import MultiViewPipeline
    pipe = MultiViewPipeline.from_pretrained("ashawkey/mvdream-sd2.1-diffusers", device="cuda")
    out = pipe("a ceramic owl", generator=torch.Generator().manual_seed(0))
    gaussians = lgm.reconstruct(out.views)

Importing this package is cheap: diffusers/transformers are imported inside the functions that
build a pipeline. Stand-in pipelines for tests: :func:`lgm_core.testing.make_tiny_pipeline_folder`.
"""

from __future__ import annotations

from .cameras import mv_camera_matrices, mv_view_poses
from .loading import HUB_REPOS, ComponentError
from .pipeline import MultiViewOutput, MultiViewPipeline
from .unet import MultiViewUNet

__all__ = ["ComponentError", "HUB_REPOS", "MultiViewOutput", "MultiViewPipeline", "MultiViewUNet",
           "mv_camera_matrices", "mv_view_poses"]
