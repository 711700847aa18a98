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

Batches: ``text_to_views``/``text_to_3d`` take a list of prompts and ``image_to_views``/``image_to_3d`` a
list of images; the objects are sampled in one batched diffusion call and reconstructed in one LGM call.
Object ``i`` draws its noise from its own seed (``seed[i]``, or ``seed + i`` for one ``int``), so it
is the object a one-item call with that seed gives, up to the fp noise of batched kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Union

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


Seeds = Union[int, Sequence[int]]
"""One seed (an ``int``; object ``i`` of a batch gets ``seed + i``) or one per object."""


def object_seeds(seed: Seeds, count: int) -> List[int]:
    """The seed of each of ``count`` objects (see :data:`Seeds`)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"seed: got {len(seed)} seeds for {count} objects")
        return [int(s) for s in seed]
    return [int(seed) + i for i in range(count)]


def _sample(pipe, prompt, image, negative_prompt: str, steps: int, guidance: Optional[float],
            elevation: float, seed: Seeds, callback: Optional[StepCallback], count: int) -> Views:
    gens = [torch.Generator("cpu").manual_seed(s) for s in object_seeds(seed, count)]
    out = pipe(prompt, image=image, negative_prompt=negative_prompt, num_inference_steps=int(steps),
               guidance_scale=None if guidance is None else float(guidance), elevation=float(elevation),
               generator=gens[0] if count == 1 else gens, callback=callback, output_type="pt")
    return out.views


def _batch(items, what: str) -> tuple:
    """``(list, count)`` of one item or a list of them; an empty list is an error."""
    batch = list(items) if isinstance(items, (list, tuple)) else [items]
    if not batch:
        raise ValueError(f"no {what} given")
    return batch, len(batch)


def text_to_views(pipe, prompt: Union[str, Sequence[str]], *, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                  steps: int = 30, guidance: Optional[float] = None, elevation: float = 0.0, seed: Seeds = 0,
                  callback: Optional[StepCallback] = None) -> Views:
    """MVDream: a text prompt -> 4 views ``[1, 4, 3, 256, 256]`` in LGM order with their cameras (on the
    pipeline's device); a list of B prompts -> ``[B, 4, 3, 256, 256]`` in one batched call (seeds: module
    docstring). ``guidance`` None: the model's default (7.5); ``<= 1`` disables classifier-free guidance."""
    prompts, count = _batch(prompt, "prompts")
    return _sample(pipe, prompts if count > 1 else prompts[0], None, negative_prompt, steps, guidance, elevation,
                   seed, callback, count)


def prepare_input_image(image: torch.Tensor, mask: Optional[torch.Tensor] = None,
                        border_ratio: float = 0.2) -> torch.Tensor:
    """An object image ``[H, W, 3|4]`` made ready for ImageDream as LGM's app does
    (:func:`lgm_core.preprocess.prepare_image`): with a mask (``mask`` [H, W], 1 = object, else the
    alpha channel) the object is cropped, recentred leaving ``border_ratio`` free and composited on
    white; a plain RGB image is padded to a square. Returns ``[256, 256, 3]`` in [0, 1]."""
    from .preprocess import prepare_image

    return prepare_image(image, mask=mask, size=256, border_ratio=border_ratio)


def image_to_views(pipe, image: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                   mask: Union[None, torch.Tensor, Sequence[Optional[torch.Tensor]]] = None, prompt: str = "",
                   negative_prompt: str = "", border_ratio: float = 0.2, prepared: bool = False, steps: int = 30,
                   guidance: Optional[float] = None, elevation: float = 0.0, seed: Seeds = 0,
                   callback: Optional[StepCallback] = None) -> Views:
    """ImageDream: one object image ``[H, W, 3|4]`` -> 4 views in LGM order with their cameras; a list of
    B images (and of B masks, or None) -> B objects in one batched call (seeds: module docstring).

    Each image goes through :func:`prepare_input_image` (``mask``, ``border_ratio``) unless it is
    ``prepared`` already (front ends that check the input before loading models). ``guidance`` None:
    the model's default (5.0)."""
    images, count = _batch(image, "images")
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * count
    if len(masks) != count:
        raise ValueError(f"mask: got {len(masks)} masks for {count} images")
    if not prepared:
        images = [prepare_input_image(im, m, border_ratio) for im, m in zip(images, masks)]
    return _sample(pipe, prompt, images if count > 1 else images[0], negative_prompt, steps, guidance, elevation,
                   seed, callback, count)


def views_to_gaussians(model, views: Views) -> Gaussians:
    """LGM: views -> Gaussians (float32, on the model's device; B objects)."""
    return model.reconstruct(views)


def text_to_3d(pipe, model, prompt: Union[str, Sequence[str]], **sampling) -> Generation:
    """:func:`text_to_views` then :func:`views_to_gaussians` (``sampling``: text_to_views' options); a list
    of prompts gives one Generation of that many objects."""
    views = text_to_views(pipe, prompt, **sampling)
    return Generation(views, views_to_gaussians(model, views))


def image_to_3d(pipe, model, image: Union[torch.Tensor, Sequence[torch.Tensor]], **options) -> Generation:
    """:func:`image_to_views` then :func:`views_to_gaussians` (``options``: image_to_views' options); a list
    of images gives one Generation of that many objects."""
    views = image_to_views(pipe, image, **options)
    return Generation(views, views_to_gaussians(model, views))
