"""The pipeline layer: LGM's two stages and their chains, called by every front end (the CLI, the
ComfyUI nodes — one stage per node —, the demo, the trainer's evaluation and the README example)::

    text_to_views(pipe, prompt)          -> Views       MVDream: text -> 4 views
    image_to_views(pipe, image)          -> Views       ImageDream: one object image -> 4 views
    views_to_gaussians(model, views)     -> Gaussians   LGM: 4 posed views -> 3D Gaussians
    text_to_3d(pipe, model, prompt)      -> Generation  both stages
    image_to_3d(pipe, model, image)      -> Generation  both stages

``pipe`` is a :class:`~lgm_core.mvdiffusion.MultiViewPipeline`, ``model`` an :class:`~lgm_core.LGM`;
loading them is the caller's business (``MultiViewPipeline.from_pretrained``, ``load_lgm``), so a front
end can free the first stage before it loads the second. Views travel as :class:`~lgm_core.views.Views`
(LGM order, with cameras). Images are channels-last float in [0, 1]. Elevation: degrees, positive =
cameras above the object (LGM's app used the opposite sign). All randomness comes from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .views import Views

if TYPE_CHECKING:  # the front ends import this module at start-up: keep it light
    from .gaussians import Gaussians

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "Generation", "text_to_views", "prepare_input_image", "image_to_views", "views_to_gaussians",
           "text_to_3d", "image_to_3d"]

DEFAULT_NEGATIVE_PROMPT = ("ugly, blurry, pixelated obscure, unnatural colors, poor lighting, dull, unclear, cropped, "
                           "lowres, low quality, artifacts, duplicate")
"""The negative prompt of LGM's app for text -> 3D (image -> 3D uses none by default)."""

StepCallback = Callable[[int, int, torch.Tensor], None]
"""``callback(step, total, latents)`` after every diffusion step (step counts from 1); may raise to cancel."""


@dataclass
class Generation:
    """Both stages' results: the 4 views (with cameras) and the Gaussians reconstructed from them."""

    views: Views
    gaussians: Gaussians


def _sample(pipe, prompt: str, image, negative_prompt: str, steps: int, guidance: Optional[float],
            elevation: float, seed: int, callback: Optional[StepCallback]) -> Views:
    out = pipe(prompt, image=image, negative_prompt=negative_prompt, num_inference_steps=int(steps),
               guidance_scale=None if guidance is None else float(guidance), elevation=float(elevation),
               generator=torch.Generator("cpu").manual_seed(int(seed)), callback=callback, output_type="pt")
    return out.views


def text_to_views(pipe, prompt: str, *, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, steps: int = 30,
                  guidance: Optional[float] = None, elevation: float = 0.0, seed: int = 0,
                  callback: Optional[StepCallback] = None) -> Views:
    """MVDream: a text prompt -> 4 views ``[1, 4, 3, 256, 256]`` in LGM order with their cameras.
    ``guidance`` None: the model's default (7.5); ``<= 1`` disables classifier-free guidance."""
    return _sample(pipe, prompt, None, negative_prompt, steps, guidance, elevation, seed, callback)


def prepare_input_image(image: torch.Tensor, mask: Optional[torch.Tensor] = None,
                        border_ratio: float = 0.2) -> torch.Tensor:
    """An object image ``[H, W, 3|4]`` made ready for ImageDream as LGM's app does
    (:func:`lgm_core.preprocess.prepare_image`): with a mask (``mask`` [H, W], 1 = object, else the
    alpha channel) the object is cropped, recentred leaving ``border_ratio`` free and composited on
    white; a plain RGB image is padded to a square. Returns ``[256, 256, 3]`` in [0, 1]."""
    from .preprocess import prepare_image

    return prepare_image(image, mask=mask, size=256, border_ratio=border_ratio)


def image_to_views(pipe, image: torch.Tensor, *, mask: Optional[torch.Tensor] = None, prompt: str = "",
                   negative_prompt: str = "", border_ratio: float = 0.2, prepared: bool = False, steps: int = 30,
                   guidance: Optional[float] = None, elevation: float = 0.0, seed: int = 0,
                   callback: Optional[StepCallback] = None) -> Views:
    """ImageDream: one object image ``[H, W, 3|4]`` -> 4 views in LGM order with their cameras.

    The image goes through :func:`prepare_input_image` (``mask``, ``border_ratio``) unless it is
    ``prepared`` already (front ends that check the input before loading models). ``guidance`` None:
    the model's default (5.0)."""
    if not prepared:
        image = prepare_input_image(image, mask, border_ratio)
    return _sample(pipe, prompt, image, negative_prompt, steps, guidance, elevation, seed, callback)


def views_to_gaussians(model, views: Views) -> Gaussians:
    """LGM: views -> Gaussians (float32, on the model's device; B objects)."""
    return model.reconstruct(views)


def text_to_3d(pipe, model, prompt: str, **sampling) -> Generation:
    """:func:`text_to_views` then :func:`views_to_gaussians` (``sampling``: text_to_views' options)."""
    views = text_to_views(pipe, prompt, **sampling)
    return Generation(views, views_to_gaussians(model, views))


def image_to_3d(pipe, model, image: torch.Tensor, **options) -> Generation:
    """:func:`image_to_views` then :func:`views_to_gaussians` (``options``: image_to_views' options)."""
    views = image_to_views(pipe, image, **options)
    return Generation(views, views_to_gaussians(model, views))
