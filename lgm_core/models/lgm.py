"""LGM: 4 posed views -> 3D Gaussians (docs/conventions.md#model).

The module's ``state_dict()`` is key-for-key and shape-for-shape the official checkpoints'
(``unet.*`` then ``conv.*``); :func:`lgm_core.load_lgm` loads them strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..cameras import LGM_FOVY, LGM_RADIUS, plucker_rays
from ..gaussians import Gaussians
from ..views import Views, as_views
from .derived import derived_weight, drop_derived_weights
from .unet import NUM_VIEWS, MVUNet, channels_last, fold_biases, set_attention_backend

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# On the fused path (``fold_biases``, channels-last) the UNet's output convolution (3x3, 14 channels) and
# the 1x1 ``conv`` after it run as one 3x3 convolution with the composed weights ``W1 @ W3`` (bias
# ``W1 @ b3 + b1``, added in float32), padded to 16 output channels for cuDNN's tensor-core kernels; the
# same linear map up to fp16 rounding (the intermediate is no longer rounded to fp16).
FUSED_HEAD = True
HEAD_CHANNELS = 16

ROTATION_MODES = ("per_gaussian", "legacy")
"""``per_gaussian``: each quaternion divided by its own norm ("fixrot" checkpoints, default).
``legacy``: the pre-fix behaviour, each quaternion component divided by its norm over all N
Gaussians of the sample (docs/conventions.md#legacy-rotations); only for ``model.safetensors`` /
``model_fp16.safetensors``."""


@dataclass(frozen=True)
class LGMConfig:
    """Architecture of an LGM (the fields of the original ``options.py`` that shape the model)."""

    down_channels: Tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: Tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: Tuple[int, ...] = (1024, 1024, 512, 256)
    up_attention: Tuple[bool, ...] = (True, True, True, False)
    splat_size: int = 64
    input_size: int = 256
    output_size: int = 256
    fovy: float = LGM_FOVY
    cam_radius: float = LGM_RADIUS

    def __post_init__(self) -> None:
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.down_attention) != len(self.down_channels):
            raise ValueError("down_attention needs one flag per down block")
        if len(self.up_attention) < len(self.up_channels):
            raise ValueError("up_attention needs a flag per up block")
        if any(c % 32 for c in self.down_channels + self.up_channels):
            raise ValueError("every channel count must be a multiple of 32 (GroupNorm with 32 groups)")
        expected = self.input_size // 2 ** ((len(self.down_channels) - 1) - (len(self.up_channels) - 1))
        if expected != self.splat_size:
            raise ValueError(f"splat_size {self.splat_size} does not match the architecture (gives {expected})")

    @property
    def num_gaussians(self) -> int:
        return NUM_VIEWS * self.splat_size**2

    @classmethod
    def preset(cls, name: str) -> "LGMConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown LGM preset {name!r}; choose from {sorted(PRESETS)}") from None

    def same_architecture(self, other: "LGMConfig") -> bool:
        """True when both configs build identical state dicts."""
        n_up = len(self.up_channels)
        return (
            self.down_channels == other.down_channels
            and self.down_attention == other.down_attention
            and self.mid_attention == other.mid_attention
            and self.up_channels == other.up_channels
            and self.up_attention[:n_up] == other.up_attention[: len(other.up_channels)]
            and self.input_size == other.input_size
        )

    @classmethod
    def from_state_dict(cls, state_dict: Dict[str, torch.Tensor]) -> "LGMConfig":
        """Infer the architecture from checkpoint keys and shapes (any channel layout, not only
        the presets). Raises ``ValueError`` when the keys do not describe an LGM."""

        def shape(key: str) -> Tuple[int, ...]:
            return tuple(state_dict[key].shape)

        if "unet.conv_in.weight" not in state_dict:
            raise ValueError("not an LGM checkpoint: key 'unet.conv_in.weight' is missing")
        down, down_attn, up, up_attn = [], [], [], []
        i = 0
        while f"unet.down_blocks.{i}.nets.0.conv1.weight" in state_dict:
            down.append(shape(f"unet.down_blocks.{i}.nets.0.conv1.weight")[0])
            down_attn.append(f"unet.down_blocks.{i}.attns.0.norm.weight" in state_dict)
            i += 1
        i = 0
        while f"unet.up_blocks.{i}.nets.0.conv1.weight" in state_dict:
            up.append(shape(f"unet.up_blocks.{i}.nets.0.conv1.weight")[0])
            up_attn.append(f"unet.up_blocks.{i}.attns.0.norm.weight" in state_dict)
            i += 1
        if not down or not up:
            raise ValueError("not an LGM checkpoint: no down/up blocks found")
        splat = 256 // 2 ** ((len(down) - 1) - (len(up) - 1))
        inferred = cls(
            down_channels=tuple(down),
            down_attention=tuple(down_attn),
            mid_attention="unet.mid_block.attns.0.norm.weight" in state_dict,
            up_channels=tuple(up),
            up_attention=tuple(up_attn),
            splat_size=splat,
        )
        for name, preset in PRESETS.items():  # prefer the preset's exact fields (output size ...)
            if preset.same_architecture(inferred) and name != "lrm":
                return preset
        return inferred


PRESETS: Dict[str, LGMConfig] = {
    "lrm": LGMConfig(),
    "small": LGMConfig(),
    "big": LGMConfig(
        up_channels=(1024, 1024, 512, 256, 128),
        up_attention=(True, True, True, False, False),
        splat_size=128,
        output_size=512,
    ),
    "tiny": LGMConfig(
        down_channels=(32, 64, 128, 256, 512),
        down_attention=(False, False, False, False, True),
        up_channels=(512, 256, 128),
        up_attention=(True, False, False, False),
        splat_size=64,
    ),
}


def preset_name(config: LGMConfig) -> Optional[str]:
    """The preset name of a config ('small' for the lrm/small architecture), or None if custom."""
    for name in ("big", "small", "tiny"):
        if PRESETS[name].same_architecture(config):
            return name
    return None


class LGM(nn.Module):
    """Large Multi-View Gaussian Model.

    ``forward_gaussians`` is the exact network; ``reconstruct`` is the user-level call that
    prepares images and rays. Attention runs through SDPA by default; ``set_attention("math")``
    switches to the explicit-softmax path used for checking.
    """

    def __init__(self, config: Union[LGMConfig, str] = "big", rotation_mode: str = "per_gaussian"):
        super().__init__()
        if isinstance(config, str):
            config = LGMConfig.preset(config)
        if rotation_mode not in ROTATION_MODES:
            raise ValueError(f"rotation_mode must be one of {ROTATION_MODES}, got {rotation_mode!r}")
        self.config = config
        self.rotation_mode = rotation_mode
        self.unet = MVUNet(
            config.down_channels,
            config.down_attention,
            config.mid_attention,
            config.up_channels,
            config.up_attention[: len(config.up_channels)],
        )
        self.conv = nn.Conv2d(14, 14, kernel_size=1)
        self._rays_cache: Dict[tuple, torch.Tensor] = {}
        self._channels_last = False
        self._graph_runner = None

    @classmethod
    def from_pretrained(cls, source=None, **kwargs) -> "LGM":
        """Load a checkpoint (file, folder, hub repo id, ``"demo"``; default the official
        ``ashawkey/LGM``), as ``MultiViewPipeline.from_pretrained`` loads the multi-view stage: same
        resolver (:mod:`lgm_core.hub`), same device/dtype defaults (:mod:`lgm_core.runtime`). Keyword
        arguments: those of :func:`lgm_core.weights.load_lgm`."""
        from ..weights import load_lgm

        return load_lgm(source, **kwargs)

    def save_pretrained(self, path, dtype: Optional[torch.dtype] = None):
        """Write the weights as .safetensors in the official key layout, with the config and rotation
        mode in the metadata (:func:`lgm_core.weights.save_lgm`); ``from_pretrained(path)`` reads it back."""
        from ..weights import save_lgm

        return save_lgm(self, path, dtype=dtype)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "LGM":
        """Build an (untrained) LGM of a named preset: "big", "small", "lrm" or "tiny"."""
        return cls(LGMConfig.preset(name), **kwargs)

    @property
    def preset(self) -> Optional[str]:
        return preset_name(self.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv.weight.device

    def set_attention(self, backend: str) -> "LGM":
        """``"sdpa"`` (default, fused kernels) or ``"math"`` (explicit softmax in fp32, for checks)."""
        set_attention_backend(self, backend)
        return self

    def use_channels_last(self, enabled: bool = True) -> "LGM":
        """Store conv weights and activations channels-last (faster cuDNN convolutions on GPUs
        with tensor cores; same results up to kernel rounding)."""
        self._channels_last = enabled
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def use_cuda_graphs(self, enabled: bool = True) -> "LGM":
        """Replay ``forward_gaussians`` on CUDA inputs from captured CUDA graphs (one capture per
        input shape; removes kernel-launch overhead; same kernels, same results). Inert for CPU inputs;
        graphs are captured again automatically when the weights move (``.to()``, offloading), see
        :class:`lgm_core.runtime.CUDAGraphRunner`."""
        from ..runtime import CUDAGraphRunner

        if not enabled:
            self._graph_runner = None
        elif self._graph_runner is None or self._graph_runner.fn != self._forward_gaussians:
            self._graph_runner = CUDAGraphRunner(self._forward_gaussians, weights=self, name="LGM.forward_gaussians")
        return self

    def load_state_dict(self, *args, **kwargs):
        """``nn.Module.load_state_dict``, then the fused path's derived weights are dropped (an in-place copy
        into inference-mode weights moves no version counter, so the cache could not tell)."""
        result = super().load_state_dict(*args, **kwargs)
        drop_derived_weights(self)
        return result

    def release_cuda_graphs(self) -> None:
        """Free the captured graphs' memory now (e.g. when a memory manager unloads the model) and the
        fused path's derived weights (``lgm_core.models.derived``); the next CUDA call captures again."""
        if self._graph_runner is not None:
            self._graph_runner.reset()
        drop_derived_weights(self)

    def optimize_for_inference(self, compile: bool = False) -> "LGM":
        """The fast CUDA path; call it on the final device and dtype (the layout is chosen from them).

        CUDA graphs (inert for CPU inputs); on a CUDA fp16/bf16 model that gets the fused Triton
        GroupNorm (``models/unet.py``) also channels-last; with ``compile=True`` on a CUDA model
        channels-last + ``torch.compile`` (fuses GroupNorm/SiLU; falls back to eager if compilation is
        impossible), its code kept per machine by :mod:`lgm_core.compile_cache` (``LGM_CACHE_DIR``): ~1 min
        the first time for a config/dtype/input shape, loaded from the cache in later processes. Safe to
        call again (captured graphs are kept). H200, ``big`` fp16 batch 1: eager 17.8 ms, graphs 12.8 ms,
        default (graphs + fused GroupNorm, folded biases and residual kernel, sub-pixel upsampling, padded
        conv_in, composed head + channels-last) 6.7-8.4 ms,
        compile + graphs 7.4 ms (docs/benchmarks.md)."""
        if compile and self.device.type == "cuda":
            from ..compile_cache import PersistentCompile
            from ..runtime import CompiledOrEager

            self.use_channels_last()
            options = {"attention": sorted({getattr(m, "backend", "") for m in self.modules()} - {""}),
                       "channels_last": True}
            self._forward_gaussians = CompiledOrEager(
                type(self)._forward_gaussians.__get__(self),
                compiler=lambda fn: PersistentCompile(fn, "lgm", self.config, module=self, options=options))
        elif self.device.type == "cuda":
            from .unet import fused_groupnorm_available

            # the fused Triton GroupNorm is fastest on channels-last activations (H200, big fp16 + graphs:
            # batch 1 8.1 ms vs 10.4 ms contiguous, 13.6 ms with torch's kernels); without it,
            # channels-last is no faster at batch 1 and slower at batch 4, so the layout stays
            if fused_groupnorm_available(self.device, self.dtype):
                self.use_channels_last()
        return self.use_cuda_graphs()

    # ------------------------------------------------------------------ the network
    def forward_gaussians(self, x: torch.Tensor) -> torch.Tensor:
        """Model input [B, 4, 9, 256, 256] (ImageNet-normalised RGB + Plücker rays) -> activated
        Gaussians [B, 4*s*s, 14] float32: pos(3) opacity(1) scale(3) rot wxyz(4) rgb(3).

        Gaussian n = v*s^2 + row*s + col. The convolutions run in the model's dtype; the
        activations (softplus, tanh, sigmoid, normalisation) run in float32.
        """
        if x.dim() != 5 or x.shape[1] != NUM_VIEWS or x.shape[2] != 9:
            raise ValueError(f"LGM input must be [B, 4, 9, H, W], got {list(x.shape)}")
        if self._graph_runner is not None and x.is_cuda and not torch.is_grad_enabled():
            return self._graph_runner(x)
        return self._forward_gaussians(x)

    def _forward_gaussians(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = self.config.splat_size
        x = x.reshape(b * NUM_VIEWS, *x.shape[2:]).to(self.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if FUSED_HEAD and fold_biases(x) and channels_last(x) and channels_last(self.unet.conv_out.weight):
            return self.activate(self._fused_head(self.unet.features(x)).reshape(b, -1, 14))
        h = self.conv(self.unet(x))
        h = h.float().reshape(b, NUM_VIEWS, 14, s, s).permute(0, 1, 3, 4, 2).reshape(b, -1, 14)
        return self.activate(h)

    def _fused_head(self, features: torch.Tensor) -> torch.Tensor:
        """``conv(unet.conv_out(features))`` as one convolution (``FUSED_HEAD``) -> raw [B*4, s, s, 14]
        float32 (pixel-major: the Gaussians' order)."""
        sources = (self.unet.conv_out.weight, self.unet.conv_out.bias, self.conv.weight, self.conv.bias)

        def weight(w3, b3, w1, b1):
            w = torch.einsum("oi,ichw->ochw", w1.flatten(1).float(), w3.float())
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, max(HEAD_CHANNELS - w.shape[0], 0)))
            return w.to(w3.dtype).contiguous(memory_format=torch.channels_last)

        def bias(w3, b3, w1, b1):
            return w1.flatten(1).float() @ b3.float() + b1.float()

        h = F.conv2d(features, derived_weight(self, "_head_weight", sources, weight, params=(HEAD_CHANNELS,)), None,
                     padding=1)
        return torch.add(h.permute(0, 2, 3, 1)[..., :14], derived_weight(self, "_head_bias", sources, bias))

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """LGM's fixed activations on raw [B, N, 14] (float32) -> activated [B, N, 14]."""
        pos = raw[..., 0:3].clamp(-1, 1)
        opacity = torch.sigmoid(raw[..., 3:4])
        scale = 0.1 * F.softplus(raw[..., 4:7])
        rot_axis = -1 if self.rotation_mode == "per_gaussian" else 1
        rotation = F.normalize(raw[..., 7:11], dim=rot_axis)
        rgb = 0.5 * torch.tanh(raw[..., 11:14]) + 0.5
        return torch.cat([pos, opacity, scale, rotation, rgb], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_gaussians(x)

    # ------------------------------------------------------------------ user-level API
    def rays(self, cameras: torch.Tensor) -> torch.Tensor:
        """Plücker rays [4, 6, S, S] for c2w poses [4, 4, 4], cached per pose set, on the model device."""
        key = (tuple(cameras.detach().cpu().flatten().tolist()), str(self.device))
        if key not in self._rays_cache:
            if len(self._rays_cache) > 16:
                self._rays_cache.clear()
            self._rays_cache[key] = plucker_rays(cameras, self.config.input_size, self.config.fovy).to(self.device)
        return self._rays_cache[key]

    def prepare_inputs(
        self,
        images: Union[torch.Tensor, Views],
        cameras: Optional[torch.Tensor] = None,
        elevation: float = 0.0,
    ) -> torch.Tensor:
        """Views (or images [B, 4, 3, H, W] in [0, 1] + cameras) -> model input [B, 4, 9, 256, 256] float32."""
        views = as_views(images, cameras, elevation)
        b = views.num_objects
        size = self.config.input_size
        x = views.images.to(self.device, torch.float32)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x.reshape(b * NUM_VIEWS, 3, *x.shape[-2:]), size=(size, size), mode="bilinear",
                              align_corners=False).reshape(b, NUM_VIEWS, 3, size, size)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 1, 3, 1, 1)
        x = (x - mean) / std
        cameras = views.camera_poses(self.config.cam_radius)
        if cameras.dim() == 3:
            rays = self.rays(cameras)[None].expand(b, -1, -1, -1, -1)
        else:
            rays = torch.stack([self.rays(c) for c in cameras])
        return torch.cat([x, rays.to(x.dtype)], dim=2)

    @torch.inference_mode()
    def reconstruct(
        self,
        images: Union[torch.Tensor, Views],
        cameras: Optional[torch.Tensor] = None,
        elevation: float = 0.0,
    ) -> Gaussians:
        """4 views of an object -> 3D Gaussians.

        Args:
            images: a :class:`~lgm_core.views.Views`, or images ``[B, 4, 3, H, W]`` (or ``[4, 3, H, W]``)
                RGB in [0, 1] on a white background, any square size (bilinearly resized to 256, as the
                original). **View order**: front (azimuth 0), then the object turned by 90, 180 and 270
                degrees, i.e. cameras on +z, +x, -z, -x (:mod:`lgm_core.views`; ``Views.from_multiview``
                reorders multi-view diffusion frames).
            cameras: optional camera-to-world poses ``[4, 4, 4]`` or ``[B, 4, 4, 4]`` (OpenGL
                convention: camera looks down -z, +y up; LGM world frame, +y up; fovy 49.1).
                LGM was trained with view 0 at (0, 0, 1.5) looking at the origin; poses from
                another frame should be re-expressed relative to view 0 first
                (:func:`lgm_core.cameras.canonicalize_cameras`). Default: the 4 orbit cameras
                at radius 1.5, azimuths 0/90/180/270, at ``elevation``. Only with plain images.
            elevation: degrees, positive = cameras above the object; used only when ``cameras``
                is None. Only with plain images.

        Returns:
            :class:`~lgm_core.gaussians.Gaussians`, float32, on the model's device.
        """
        x = self.prepare_inputs(images, cameras, elevation)
        out = self.forward_gaussians(x)
        return Gaussians.from_lgm_tensor(out, normalized_rotations=self.rotation_mode == "per_gaussian")

