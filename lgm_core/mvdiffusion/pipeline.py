"""MVDream (text -> 4 views) and ImageDream (image [+ text] -> 4 views) sampling pipeline.

Components: our :class:`~lgm_core.mvdiffusion.unet.MultiViewUNet`, diffusers ``AutoencoderKL`` and any
diffusers scheduler (DDIM from the checkpoint by default; swap with ``pipe.scheduler = ...``),
transformers ``CLIPTextModel``/``CLIPTokenizer`` and, for ImageDream, ``CLIPVisionModel`` plus CLIP
preprocessing. Spec: ``shared/docs/mvdream_spec.md`` §4.

Conventions
-----------
* Output images: ``[n*4, 256, 256, 3]`` float32 in [0, 1], object-major (rows ``4*b .. 4*b+3`` are
  object ``b``), views in camera order: MVDream azimuth 0, 90, 180, 270 (ImageDream's 5th,
  reference frame is dropped). ``n = len(prompts or images) * num_images_per_prompt``; samples of
  one prompt are consecutive.
* ``elevation`` (degrees): **positive = cameras above the object**, as in :mod:`lgm_core.cameras`.
  At 0 the conditioning equals the original exactly. LGM's original app passes its elevation to a
  copy of ``get_camera`` that treats positive as below: its ``e`` is our ``-e``.
* :attr:`MultiViewOutput.views` hands the views to ``LGM.reconstruct`` in LGM's order with the
  matching cameras (:class:`lgm_core.views.Views`): ``lgm.reconstruct(out.views)``.
* All randomness comes from ``generator`` (ImageDream's VAE sample of the reference image first,
  then the initial latents, then whatever the scheduler draws). A list of generators, one per object,
  makes each object's noise its own: object ``i`` draws from ``generator[i]`` exactly what a call for
  that object alone with that generator draws, so a batch of prompts reproduces the one-at-a-time
  results (up to the fp noise of batched kernels). Two exceptions: with ``num_images_per_prompt > 1``
  ImageDream samples each image's reference latent once, from the generator of the image's first object,
  and its other objects share it; a scheduler that draws noise per step (DDIM with ``eta > 0``, DDPM,
  ancestral samplers) draws it row by row, which equals a one-object call's draw for CPU generators (the
  front ends' choice) but not necessarily for CUDA ones. Latents are kept in float32 between steps; the
  UNet/VAE/CLIP models run in the pipeline dtype.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..models.derived import drop_derived_weights
from ..models.unet import fused_groupnorm_available
from ..runtime import CUDAGraphRunner, resolve_device_dtype
from ..views import Views
from .cameras import mv_camera_matrices
from . import fused_vae, loading

__all__ = ["MultiViewPipeline", "MultiViewOutput"]

LATENT_SIZE = 32
IMAGE_SIZE = 256
NUM_VIEWS = 4
_CLIP_DEFAULTS = dict(size=224, crop=224, mean=(0.48145466, 0.4578275, 0.40821073),
                      std=(0.26862954, 0.26130258, 0.27577711), resample=3)


@dataclass
class MultiViewOutput:
    """Result of :class:`MultiViewPipeline`.

    ``images``: ``[n*4, 256, 256, 3]`` float32 in [0, 1] (numpy for ``output_type="np"``, torch on the
    pipeline's device for ``"pt"``, a list of PIL images for ``"pil"``, None for ``"latent"``), object-major, camera order.
    ``elevation``: the views' elevation in degrees (positive = above). ``camera_embedding``: the raw UNet
    conditioning ``[F, 16]`` per object. ``latents``: final latents ``[n*F, 4, 32, 32]`` (F = 5 for
    ImageDream, reference slot included). :attr:`views` hands the images to LGM.
    """

    images: Any
    elevation: float
    num_objects: int
    camera_embedding: torch.Tensor
    latents: Optional[torch.Tensor] = None

    @cached_property
    def views(self) -> Views:
        """The images of every object as :class:`~lgm_core.views.Views` (LGM view order, with their
        cameras), so that ``lgm.reconstruct(out.views)`` reconstructs them."""
        if self.images is None:
            raise ValueError("no decoded images (output_type='latent')")
        imgs = self.images
        if isinstance(imgs, list):  # PIL
            imgs = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in imgs])
        return Views.from_multiview(imgs, self.elevation)

    def grid(self, index: int = 0) -> np.ndarray:
        """2x2 preview ``[512, 512, 3]`` float32 of object ``index``, laid out as LGM's app (LGM views in
        reading order, :meth:`lgm_core.views.Views.grid`)."""
        return self.views.grid(index).cpu().numpy()


def _as_list(value, name: str) -> List:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _per_object_generators(generator, num_objects: int) -> Optional[List[torch.Generator]]:
    """``generator`` as a list of one per object, or None for a single generator (or None) drawing the
    whole batch's noise at once (the original's behaviour)."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != num_objects or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"generator: give one torch.Generator or a list of {num_objects} (one per object), "
                         f"got {len(gens)} item(s)")
    return gens


def _diagonal_gaussian():
    """diffusers' ``DiagonalGaussianDistribution`` (AutoencoderKL's ``latent_dist``), by its module path."""
    try:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    except ImportError:  # older diffusers layout
        from diffusers.models.vae import DiagonalGaussianDistribution
    return DiagonalGaussianDistribution


class MultiViewPipeline:
    """Multi-view diffusion pipeline (MVDream when ``unet.ip_dim == 0``, ImageDream otherwise).

    Load with :meth:`from_pretrained`; call it as ``pipe(prompt, image=None, ...)`` (see
    :meth:`__call__`). ``use_cuda_graphs`` (default True) captures the UNet step, the CLIP text and
    image encoders and the VAE's encoder and decoder in CUDA graphs on CUDA devices (each falls back to
    eager on a capture error); set False for plain eager execution.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, image_encoder=None,
                 feature_extractor=None):
        if unet is None or vae is None or text_encoder is None or tokenizer is None or scheduler is None:
            raise ValueError("unet, vae, text_encoder, tokenizer and scheduler are required")
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        # cuDNN's measured convolution algorithms for the step (H200, batch-16 step 61.5 -> 61.0 ms; LGM's
        # batch-1 convolutions gain nothing from it, so its runner keeps the heuristic pick)
        self._unet_graphs = CUDAGraphRunner(self._unet_step, weights=lambda: self.unet,
                                            name="MultiViewUNet step", cudnn_benchmark=True)
        # the encoders run once per call but are launch-bound (H200: CLIP text 8-16 ms, CLIP-ViT-H 14-26 ms
        # eager; 3-4 and 7 ms graphed), so they are graphed as well (one graph per batch size)
        self._text_graphs = CUDAGraphRunner(self._text_hidden_states,
                                            weights=lambda: self.text_encoder,
                                            name="CLIP text encoder")
        self._image_graphs = CUDAGraphRunner(self._image_hidden_states,
                                             weights=lambda: self.image_encoder,
                                             name="CLIP vision encoder")
        # the VAE too (ImageDream image -> 4 views on the H200: 333 ms with the encoders graphed, 309 ms with
        # the VAE as well); the encoder's moments are graphed and the reference latent sampled from them as
        # diffusers does
        self._decode_graphs = CUDAGraphRunner(self._vae_decoded, weights=lambda: self.vae,
                                              name="VAE decoder")
        self._encode_graphs = CUDAGraphRunner(self._vae_moments, weights=lambda: self.vae,
                                              name="VAE encoder")
        self._vae_layout_follows_graphs = False  # set by optimize_for_inference (_place_vae_layout)
        self.use_cuda_graphs = True
        if self.is_imagedream and image_encoder is None:
            raise ValueError("an ImageDream UNet (ip_dim > 0) needs an image_encoder")

    # --------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None,
                        device: Union[str, torch.device, None] = None) -> "MultiViewPipeline":
        """Load from a hub-layout folder or a hub repo id (``ashawkey/mvdream-sd2.1-diffusers``,
        ``ashawkey/imagedream-ipmv-diffusers``). No Python file of the folder is executed.

        ``device`` and ``dtype`` default to the runtime policy (:mod:`lgm_core.runtime`: CUDA when
        available, float16 there and float32 elsewhere), as :func:`lgm_core.load_lgm`.
        """
        folder = loading.resolve_source(source)
        index = loading.read_model_index(folder)
        device, dtype = resolve_device_dtype(device, dtype)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            entry = index.get(name)
            if not entry or entry[0] is None or not (folder / name).is_dir():
                raise loading.ComponentError(f"required component {name!r} is missing in {folder}")
        has_image = bool(index.get("image_encoder") and index["image_encoder"][0]
                         and (folder / "image_encoder").is_dir())
        return cls(
            unet=loading.load_unet(folder, dtype, device),
            vae=loading.load_vae(folder, dtype, device),
            text_encoder=loading.load_clip_text(folder, dtype, device),
            tokenizer=loading.load_tokenizer(folder),
            scheduler=loading.load_scheduler(folder),
            image_encoder=loading.load_clip_vision(folder, dtype, device) if has_image else None,
            feature_extractor=loading.load_feature_extractor(folder) if has_image else None,
        )

    def to(self, device=None, dtype=None) -> "MultiViewPipeline":
        for m in (self.unet, self.vae, self.text_encoder, self.image_encoder):
            if m is not None:
                m.to(device=device, dtype=dtype)
        self.release_cuda_graphs()  # free the graphs' memory now (moved weights would be noticed anyway)
        if self._vae_layout_follows_graphs:  # e.g. moved to the CPU: no fused kernels there, contiguous again
            self._place_vae_layout()
        return self

    def optimize_for_inference(self) -> "MultiViewPipeline":
        """The fast path, the default of the CLI and the ComfyUI nodes; call it on the final device.

        CUDA graphs for the UNet step (``use_cuda_graphs``) and, on CUDA, the UNet's weights in
        channels-last memory, cuDNN's native layout: no NCHW<->NHWC transposes around every convolution,
        and each transformer's pixel->token reshape becomes a view. The UNet's GroupNorm(+SiLU) runs as
        the fused Triton kernels inside the captured graphs (``lgm_core.models.unet.use_fused_groupnorm``). H200, fp16,
        one MVDream UNet step with CFG (batch 8) under CUDA graphs: 13.0 ms with torch's GroupNorm on
        contiguous memory, 10.8 ms fused, 9.0 ms fused + channels-last
        (benchmarks/results/probe_mv_kernels_h200.md). The VAE's residual blocks get the same fused
        kernels inside the encoder's and decoder's graphs (:mod:`lgm_core.mvdiffusion.fused_vae`) and, where
        those kernels are available, channels-last weights too while the graphs are on (decoding 64 latents:
        164 -> 107 ms; back to contiguous with ``use_cuda_graphs = False``). Outputs
        stay within the fp16 noise of eager execution (docs/benchmarks.md). Safe to call again; inert on
        the CPU."""
        self.use_cuda_graphs = True
        if self.unet.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        fused_vae.install(self.vae)  # the VAE's residual blocks on the fused kernels inside its graphs
        self._vae_layout_follows_graphs = True
        self._place_vae_layout()
        return self

    def _place_vae_layout(self) -> None:
        """After ``optimize_for_inference``: the VAE's weights channels-last while its graphs run with the
        fused GroupNorm, contiguous again when the graphs are switched off. Channels-last pays only with the
        fused GroupNorm, which runs inside graph builds only: torch's channels-last GroupNorm is slow (H200,
        decoding 64 latents: 164 ms contiguous, 232 channels-last; fused 118 / 107 ms)."""
        wanted = self._use_cuda_graphs and fused_groupnorm_available(self.vae.device, self.vae.dtype)
        conv = next(p for p in self.vae.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        if wanted != (conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()):
            self.vae.to(memory_format=torch.channels_last if wanted else torch.contiguous_format)

    def release_cuda_graphs(self) -> None:
        """Free the captured UNet graphs' memory now (e.g. when a memory manager unloads the pipeline) and
        the UNet's derived weights (concatenated q/k/v); the next CUDA call captures again. Also the way to make
        in-place changes of inference-mode weights take effect (those have no version counter)."""
        for runner in self._graph_runners():
            runner.reset()
        drop_derived_weights(self.unet)

    @property
    def use_cuda_graphs(self) -> bool:
        """Whether CUDA inputs run through the captured graphs (every runner of the pipeline follows it)."""
        return self._use_cuda_graphs

    @use_cuda_graphs.setter
    def use_cuda_graphs(self, enabled: bool) -> None:
        self._use_cuda_graphs = bool(enabled)
        for runner in self._graph_runners():
            runner.enabled = self._use_cuda_graphs
        if self._vae_layout_follows_graphs:
            self._place_vae_layout()

    def _graph_runners(self) -> List[CUDAGraphRunner]:
        return [self._unet_graphs, self._text_graphs, self._image_graphs, self._decode_graphs, self._encode_graphs]

    def torch_modules(self) -> torch.nn.ModuleList:
        """The pipeline's torch modules (UNet, VAE, text and image encoders) in one container, for
        memory managers that move them together."""
        return torch.nn.ModuleList([m for m in (self.unet, self.vae, self.text_encoder, self.image_encoder)
                                    if m is not None])

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def is_imagedream(self) -> bool:
        return self.unet.ip_dim > 0

    @property
    def num_frames(self) -> int:
        """Frames per object in the UNet batch: 4, or 5 for ImageDream (4 views + reference)."""
        return NUM_VIEWS + 1 if self.is_imagedream else NUM_VIEWS

    @property
    def default_guidance_scale(self) -> float:
        return 5.0 if self.is_imagedream else 7.5

    # --------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: List[str]) -> torch.Tensor:
        """CLIP text ``last_hidden_state`` ``[P, 77, D]`` (BOS, tokens, EOS, pad id 0 up to 77)."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self._text_graphs(ids.to(self.text_encoder.device))

    def _text_hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids)[0]

    def _image_hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]

    def _clip_pixels(self, images_u8: np.ndarray) -> torch.Tensor:
        """CLIP preprocessing of uint8 ``[P, H, W, 3]``: bicubic resize of the shortest edge (PIL, as
        transformers 4.x), centre crop, rescale 1/255, normalise. Returns ``[P, 3, crop, crop]`` float32."""
        from PIL import Image

        fe = self.feature_extractor or {}
        get = (lambda k, d: fe.get(k, d)) if isinstance(fe, dict) else (lambda k, d: getattr(fe, k, d))

        def field(value, *keys):  # int, dict or transformers SizeDict
            if isinstance(value, (int, float)):
                return int(value)
            for k in keys:
                v = value.get(k) if isinstance(value, dict) else getattr(value, k, None)
                if v:
                    return int(v)
            raise ValueError(f"unsupported CLIP preprocessing size {value!r}")

        size_cfg = get("size", _CLIP_DEFAULTS["size"])
        size = field(size_cfg, "shortest_edge", "height")
        crop = get("crop_size", _CLIP_DEFAULTS["crop"])
        crop_h, crop_w = field(crop, "height"), field(crop, "width", "height")
        mean = np.asarray(get("image_mean", _CLIP_DEFAULTS["mean"]), dtype=np.float32)
        std = np.asarray(get("image_std", _CLIP_DEFAULTS["std"]), dtype=np.float32)
        resample = int(get("resample", _CLIP_DEFAULTS["resample"]))
        out = []
        for img in images_u8:
            h, w = img.shape[:2]
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(size * long / short)
            new_h, new_w = (size, new_long) if h <= w else (new_long, size)
            pil = Image.fromarray(img).resize((new_w, new_h), resample=resample)
            arr = np.asarray(pil, dtype=np.float32)
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
            arr = arr[max(top, 0): max(top, 0) + crop_h, max(left, 0): max(left, 0) + crop_w]
            arr = (arr * np.float32(1 / 255) - mean) / std
            out.append(arr.transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(np.stack(out)))

    def encode_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-ViT penultimate hidden states ``[P, 257, 1280]`` of ``images`` [P, H, W, 3] in [0, 1]
        (truncated to uint8 first, as the original)."""
        u8 = (images.detach().cpu().float().numpy() * 255).astype(np.uint8)
        pixels = self._clip_pixels(u8).to(self.image_encoder.device, self.image_encoder.dtype)
        return self._image_graphs(pixels)

    def encode_image_latents(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """VAE latent ``[P, 4, 32, 32]`` of ``images`` [P, H, W, 3] in [0, 1]: bilinear resize to 256,
        2x-1, ``latent_dist.sample(generator)`` x scaling_factor."""
        x = images.permute(0, 3, 1, 2).contiguous().to(self.vae.device, torch.float32) * 2 - 1
        x = F.interpolate(x, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        dist = _diagonal_gaussian()(self._encode_graphs(x.to(self.vae.dtype)))  # AutoencoderKL's latent_dist
        return dist.sample(generator=generator).float() * self.vae.config.scaling_factor

    def _vae_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.parameters

    def _vae_decoded(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``[N, 4, 32, 32]`` -> images ``[N, 256, 256, 3]`` float32 in [0, 1] (on the pipeline device)."""
        x = self._decode_graphs((latents / self.vae.config.scaling_factor).to(self.vae.dtype))
        return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    # --------------------------------------------------------------------------------------
    @staticmethod
    def _prepare_images(image) -> torch.Tensor:
        """Validate and stack ``image`` into float32 ``[P, H, W, 3]`` in [0, 1] (CPU)."""
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        out = []
        for item in items:
            if hasattr(item, "convert") and hasattr(item, "size"):  # PIL image
                item = np.asarray(item.convert("RGB"))
            if isinstance(item, np.ndarray):
                item = torch.from_numpy(np.ascontiguousarray(item))
            if not isinstance(item, torch.Tensor):
                raise TypeError(f"image must be a numpy array, torch tensor or PIL image, got {type(item).__name__}")
            if item.dim() == 3:
                item = item[None]
            if item.dim() != 4 or item.shape[-1] != 3:
                hint = " (RGBA: composite it on a background first, e.g. lgm_core.preprocess.prepare_image)" \
                    if item.dim() in (3, 4) and item.shape[-1] == 4 else ""
                raise ValueError(f"image must be channels-last RGB [H, W, 3] or [N, H, W, 3], got "
                                 f"{list(item.shape)}{hint}")
            if min(item.shape[1:3]) < 8:
                raise ValueError(f"image is too small: {list(item.shape)}")
            if item.dtype == torch.uint8:
                item = item.float() / 255.0
            elif item.is_floating_point():
                item = item.detach().to("cpu", torch.float32)
                lo, hi = float(item.min()), float(item.max())
                if lo < -1e-3 or hi > 1 + 1e-3 or not math.isfinite(lo + hi):
                    raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
                item = item.clamp(0, 1)
            else:
                raise TypeError(f"image dtype must be float in [0, 1] or uint8, got {item.dtype}")
            out.append(item)
        shapes = {tuple(t.shape[1:]) for t in out}
        if len(shapes) > 1:
            raise ValueError(f"all images must have the same size, got {sorted(shapes)}")
        return torch.cat(out, 0)

    def _unet_step(self, x, t, cam_emb, ctx, ip_img) -> torch.Tensor:
        """One UNet evaluation on prepared conditions (the function the CUDA-graph runner captures)."""
        return self.unet.forward_prepared(x, t, cam_emb, ctx, self.num_frames, ip_img)

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, Sequence[str]] = "",
        image=None,
        negative_prompt: Union[str, Sequence[str]] = "",
        num_inference_steps: int = 30,
        guidance_scale: Optional[float] = None,
        elevation: float = 0.0,
        generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None,
        latents: Optional[torch.Tensor] = None,
        image_latents: Optional[torch.Tensor] = None,
        num_images_per_prompt: int = 1,
        callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
        output_type: str = "np",
        eta: float = 0.0,
    ) -> MultiViewOutput:
        """Generate 4 views per object.

        ``prompt``: str or list; ``image`` (ImageDream only, required there): [H, W, 3] / [N, H, W, 3]
        float in [0, 1] or uint8, numpy/torch/PIL, or a list (white background, object centred, as
        LGM prepares it). One prompt or image broadcasts against a list of the other.
        ``guidance_scale``: None -> 7.5 (MVDream) / 5.0 (ImageDream); ``<= 1`` disables CFG.
        ``latents``: initial noise ``[n*F, 4, 32, 32]``; ``image_latents``: reference latents
        ``[P or n, 4, 32, 32]`` replacing the VAE sample. ``callback(step, total, latents)`` runs after
        every step (step counts from 1) and may raise to cancel. ``output_type``: "np", "pt" (a tensor on the
        pipeline's device, as diffusers), "pil", "latent". ``generator``: one, or a list of one per object
        (module docstring).
        """
        if output_type not in ("np", "numpy", "pt", "pil", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}")
        if int(num_inference_steps) < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if int(num_images_per_prompt) < 1:
            raise ValueError("num_images_per_prompt must be >= 1")
        device, dtype = self.device, self.dtype
        nf = self.num_frames

        prompts = [str(p) for p in _as_list(prompt, "prompt")]
        images = None
        if self.is_imagedream:
            if image is None and image_latents is None:
                raise ValueError("this is an ImageDream model: pass `image` (use an MVDream model for text only)")
            if image is None:
                raise ValueError("ImageDream needs `image` for its CLIP features, even with image_latents")
            images = self._prepare_images(image)
        elif image is not None:
            raise ValueError("this MVDream model has no image encoder: `image` needs an ImageDream model")
        num_prompts = max(len(prompts), 1 if images is None else images.shape[0])
        if len(prompts) == 1:
            prompts = prompts * num_prompts
        if images is not None and images.shape[0] == 1 and num_prompts > 1:
            images = images.expand(num_prompts, -1, -1, -1)
        if len(prompts) != num_prompts or (images is not None and images.shape[0] != num_prompts):
            raise ValueError(f"got {len(prompts)} prompts but {images.shape[0]} images: give one of "
                             f"either, or equally many")
        negs = [str(p) for p in _as_list(negative_prompt, "negative_prompt")]
        if len(negs) == 1:
            negs = negs * num_prompts
        if len(negs) != num_prompts:
            raise ValueError(f"negative_prompt: expected 1 or {num_prompts} entries, got {len(negs)}")
        n_per = int(num_images_per_prompt)
        num_objects = num_prompts * n_per
        generators = _per_object_generators(generator, num_objects)
        scale = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        do_cfg = scale > 1.0

        # ---- conditions (once per call) -------------------------------------------------------
        text = self.encode_prompt(negs + prompts if do_cfg else prompts).to(dtype)
        # one context row per object (its frames share it: the UNet's cross-attention then projects keys
        # and values once per object instead of once per frame, the same attention)
        text = text.repeat_interleave(n_per, 0)  # [(2) B, 77, D]
        cams = mv_camera_matrices(NUM_VIEWS, elevation, extra_view=self.is_imagedream)
        cam_rows = cams.to(device, dtype).repeat(num_objects * (2 if do_cfg else 1), 1)
        ip = ip_img = None
        if self.is_imagedream:
            feats = self.encode_image_features(images).to(dtype)  # [P, 257, 1280]
            if image_latents is None:
                ref = self.encode_image_latents(  # [P, 4, 32, 32]; prompt p's from its first object's generator
                    images, generator if generators is None else generators[::n_per])
            else:
                ref = torch.as_tensor(image_latents)
                if ref.dim() != 4 or ref.shape[1:] != (4, LATENT_SIZE, LATENT_SIZE) or \
                        ref.shape[0] not in (num_prompts, num_objects):
                    raise ValueError(f"image_latents must be [{num_prompts} or {num_objects}, 4, 32, 32], "
                                     f"got {list(ref.shape)}")
                ref = ref.to(device, torch.float32)
            if ref.shape[0] == num_prompts:
                ref = ref.repeat_interleave(n_per, 0)
            feats = feats.repeat_interleave(n_per, 0)  # [B, 257, 1280], one per object as the text
            ip = torch.cat([torch.zeros_like(feats), feats]) if do_cfg else feats
            ip_img = torch.cat([torch.zeros_like(ref), ref]) if do_cfg else ref
            ip_img = ip_img.to(dtype)
        cam_emb, ctx = self.unet.prepare_conditions(text, cam_rows, ip)

        # ---- initial noise & schedule -----------------------------------------------------------
        shape = (num_objects * nf, 4, LATENT_SIZE, LATENT_SIZE)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            if generators is None:
                latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
            else:  # each object's frames from its own generator: the draw of a one-object call
                latents = torch.cat([randn_tensor((nf, *shape[1:]), generator=g, device=device, dtype=torch.float32)
                                     for g in generators])
        else:
            latents = torch.as_tensor(latents)
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must be {list(shape)} (objects x {nf} frames), got {list(latents.shape)}")
            latents = latents.to(device, torch.float32)
        scheduler = self.scheduler
        scheduler.set_timesteps(int(num_inference_steps), device="cpu")
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        t_dev = timesteps.to(device=device, dtype=torch.float32)  # one transfer, no per-step sync
        rows = latents.shape[0] * (2 if do_cfg else 1)
        step_params = inspect.signature(scheduler.step).parameters
        step_kwargs = {}
        if "generator" in step_params:  # per row when per object (diffusers' randn_tensor takes one per row)
            step_kwargs["generator"] = generator if generators is None else [g for g in generators for _ in range(nf)]
        if "eta" in step_params:
            step_kwargs["eta"] = eta
        total = len(timesteps)

        # ---- denoising loop ---------------------------------------------------------------------
        for i, t in enumerate(timesteps):
            lat_in = scheduler.scale_model_input(latents, t)
            x_in = torch.cat([lat_in, lat_in]) if do_cfg else lat_in
            t_rows = t_dev[i].expand(rows)
            eps = self._unet_graphs(x_in.to(dtype), t_rows, cam_emb, ctx, ip_img).float()
            if do_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + scale * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0].float()
            if callback is not None:
                callback(i + 1, total, latents)

        # ---- decode -----------------------------------------------------------------------------
        out_images: Any = None
        if output_type != "latent":
            view_lat = latents.view(num_objects, nf, *latents.shape[1:])[:, :NUM_VIEWS].flatten(0, 1)
            imgs = self.decode_latents(view_lat)
            if output_type == "pt":
                out_images = imgs  # stays on the device: LGM reconstructs from it without a round trip
            elif output_type == "pil":
                from PIL import Image

                arr = (imgs.cpu().numpy() * 255).round().astype(np.uint8)
                out_images = [Image.fromarray(a) for a in arr]
            else:
                out_images = imgs.cpu().numpy()
        return MultiViewOutput(
            images=out_images,
            elevation=float(elevation),
            num_objects=num_objects,
            camera_embedding=cams,
            latents=latents,
        )
