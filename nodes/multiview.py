"""Multi-view diffusion nodes (text/image -> 4 views + cameras) and image preparation."""

from __future__ import annotations

import torch

from lgm_core.pipelines import DEFAULT_NEGATIVE_PROMPT

from .comfy_api import io
from .progress import Progress
from .types import CATEGORY, CamerasType, MultiViewPipelineType, views_to_image

_VIEWS_TIP = ("The 4 generated views [4,256,256,3] in LGM order: front (azimuth 0), then the object turned by "
              "90, 180 and 270 degrees. Feed them to LGM Reconstruct.")
_CAMERAS_TIP = "Camera poses of the 4 views (LGM frame, radius 1.5, fovy 49.1) for LGM Reconstruct / Render."
_MASK_TIP = ("Optional object mask. With it the object is cropped, recentred and put on white, as LGM expects.")
_INVERT_TIP = ("ComfyUI's Load Image gives a MASK that is 1 where the image is transparent: keep this on for it. "
               "Turn it off for masks that are 1 on the object (e.g. background-removal nodes).")


def _common_inputs(default_guidance: float) -> list:
    return [
        io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE_PROMPT,
                        tooltip="What the views should not show."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Random seed of the initial noise (same seed + settings = same views)."),
        io.Int.Input("steps", default=30, min=1, max=200, tooltip="Denoising steps (DDIM). 30 as the original."),
        io.Float.Input("guidance", default=default_guidance, min=0.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance scale; <= 1 disables guidance."),
        io.Float.Input("elevation", default=0.0, min=-30.0, max=60.0, step=1.0,
                       tooltip="Camera elevation of the views in degrees; positive = looking from above."),
    ]


def _outputs() -> list:
    return [io.Image.Output(display_name="views", tooltip=_VIEWS_TIP),
            CamerasType.Output(display_name="cameras", tooltip=_CAMERAS_TIP)]


def _generate(managed, stage, **options):
    """Run ``stage`` (``lgm_core.pipelines.text_to_views`` / ``image_to_views``) with per-step progress,
    preview and interrupt; return (IMAGE [4,H,W,3] in LGM order, Cameras)."""
    from lgm_core.cameras import Cameras
    from lgm_core.views import to_lgm_order

    pipe = managed.get()
    progress = Progress(options["steps"])
    nf = pipe.num_frames

    def on_step(step, total, latents):
        progress.total = total
        progress.update(step, latents=to_lgm_order(latents[:nf]))

    views = stage(pipe, callback=on_step, **options)
    image = views_to_image(views)
    return image, Cameras(views.cameras, width=image.shape[2], height=image.shape[1])


class LGMTextToMultiView(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMTextToMultiView",
            display_name="LGM Text to Multi-View",
            category=CATEGORY,
            description="MVDream: a text prompt -> 4 consistent views of one object (256x256) and their cameras.",
            inputs=[
                MultiViewPipelineType.Input("mv_pipeline", tooltip="An MVDream pipeline (LGM Multi-View Loader)."),
                io.String.Input("prompt", multiline=True, default="a cute owl, 3d asset",
                                tooltip="What the object is. Short descriptions work best."),
                *_common_inputs(7.5),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, mv_pipeline, prompt, negative_prompt, seed, steps, guidance, elevation) -> io.NodeOutput:
        if mv_pipeline.model.is_imagedream:
            raise ValueError("this is an ImageDream model, which needs an image: use LGM Image to Multi-View, "
                             "or load mvdream-sd2.1-diffusers for text prompts")
        from lgm_core.pipelines import text_to_views

        return io.NodeOutput(*_generate(mv_pipeline, text_to_views, prompt=prompt, negative_prompt=negative_prompt,
                                        seed=seed, steps=steps, guidance=guidance, elevation=elevation))


class LGMImageToMultiView(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMImageToMultiView",
            display_name="LGM Image to Multi-View",
            category=CATEGORY,
            description="ImageDream: one object image (+ optional mask and prompt) -> 4 consistent views (256x256) "
                        "and their cameras. Best with the object centred on white (see LGM Prepare Image).",
            inputs=[
                MultiViewPipelineType.Input("mv_pipeline", tooltip="An ImageDream pipeline (LGM Multi-View Loader)."),
                io.Image.Input("image", tooltip="The object image; only the first of a batch is used."),
                io.Mask.Input("mask", optional=True, tooltip=_MASK_TIP),
                io.Boolean.Input("invert_mask", default=True, tooltip=_INVERT_TIP),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Optional text describing the object (ImageDream works without)."),
                *_common_inputs(5.0),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, mv_pipeline, image, invert_mask, prompt, negative_prompt, seed, steps, guidance, elevation,
                mask=None) -> io.NodeOutput:
        from lgm_core.pipelines import image_to_views

        if not mv_pipeline.model.is_imagedream:
            raise ValueError("this is an MVDream model, which takes text only: load imagedream-ipmv-diffusers "
                             "for image input, or use LGM Text to Multi-View")
        img = image[0]
        fg = _foreground(mask, invert_mask, img.shape[:2]) if mask is not None else None
        # with a mask: crop + recentre on white; without: pad to a square (as the original app)
        return io.NodeOutput(*_generate(mv_pipeline, image_to_views, image=img, mask=fg, prompt=prompt,
                                        negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
                                        elevation=elevation))


def _foreground(mask: torch.Tensor, invert: bool, hw) -> torch.Tensor:
    """First mask of a MASK batch as [H,W] with 1 = object, resized to the image if needed."""
    m = mask[0] if mask.dim() == 3 else mask
    m = m.float()
    if tuple(m.shape) != tuple(hw):
        m = torch.nn.functional.interpolate(m[None, None], size=tuple(hw), mode="bilinear", align_corners=False)[0, 0]
    return 1.0 - m if invert else m


class LGMPrepareImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMPrepareImage",
            display_name="LGM Prepare Image",
            category=CATEGORY,
            description="Crop to the object, recentre it on a square canvas with a border and composite it on a "
                        "background (white, as LGM/ImageDream expect). Without a mask or alpha: pad to a square.",
            inputs=[
                io.Image.Input("image", tooltip="Object images [B,H,W,3|4]; a 4th channel is used as alpha."),
                io.Mask.Input("mask", optional=True, tooltip="Optional object mask (see invert_mask)."),
                io.Boolean.Input("invert_mask", default=True, tooltip=_INVERT_TIP),
                io.Int.Input("size", default=256, min=64, max=2048, step=8, tooltip="Output side in pixels."),
                io.Float.Input("border_ratio", default=0.2, min=0.0, max=0.8, step=0.01,
                               tooltip="Fraction of the side left free around the object (0.2 as the original)."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Grey level of the background: 1 = white (what LGM expects)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="Prepared images [B,size,size,3]."),
                io.Mask.Output(display_name="alpha", tooltip="Object coverage of the prepared images (1 = object)."),
            ],
        )

    @classmethod
    def execute(cls, image, invert_mask, size, border_ratio, background, mask=None) -> io.NodeOutput:
        from lgm_core.preprocess import prepare_image

        bg = (float(background),) * 3
        images, alphas = [], []
        for i in range(image.shape[0]):
            img = image[i].float()
            fg = None
            if mask is not None:
                fg = _foreground(mask[min(i, mask.shape[0] - 1)][None], invert_mask, img.shape[:2])
            elif img.shape[-1] == 4:
                fg = img[..., 3]
            if fg is None:
                fg = torch.ones(img.shape[:2])
            rgba = torch.cat([img[..., :3], fg[..., None]], dim=-1)
            # colour composited on the background; coverage = white-on-black of the same crop
            images.append(prepare_image(rgba, size=int(size), border_ratio=float(border_ratio), background=bg))
            cover = torch.cat([torch.ones_like(img[..., :3]), fg[..., None]], dim=-1)
            alphas.append(prepare_image(cover, size=int(size), border_ratio=float(border_ratio),
                                        background=(0.0, 0.0, 0.0))[..., 0])
        return io.NodeOutput(torch.stack(images).cpu(), torch.stack(alphas).cpu())
