"""diffusers' ``AutoencoderKL`` on the fused path: its ``ResnetBlock2D`` blocks (and the decoder's final
GroupNorm+SiLU) run the fused Triton kernels.

The VAE is diffusers' module, loaded from the checkpoint as is. :func:`install` gives each plain
``ResnetBlock2D`` of it (GroupNorm -> SiLU -> conv, twice, plus the skip; no time embedding, no
up/down-sampling inside the block: every block of the Stable Diffusion VAE) an instance ``forward`` that,
while a CUDA graph is built in fp16/bf16 inference (``lgm_core.models.unet.fold_biases``), computes

    h = conv1(SiLU(GroupNorm1(x)))              -> fused GroupNorm+SiLU, conv1 without its bias
    h = conv2(SiLU(GroupNorm2(h + conv1.bias)))  -> the bias added inside the fused GroupNorm
    out = (shortcut(x) + h) / output_scale_factor -> one residual kernel with conv2's and the shortcut's biases

and the decoder's ``conv_norm_out`` + ``conv_act`` become one fused GroupNorm+SiLU; otherwise it calls
diffusers' own ``ResnetBlock2D.forward`` / ``Decoder.forward`` unchanged (CPU, fp32, eager, training,
autocast, compile: the original ops bit for bit). The state dict, the module tree and the class are
unchanged; :func:`uninstall` removes the instance forwards.

Why: at batch 16 (64 latents -> 64 images of 256x256) the decoder's GroupNorm+SiLU pairs and bias adds
run on tensors of up to 64x256x256x256 fp16 values; torch runs each as separate memory passes.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from ..models.unet import conv_without_bias, fold_biases, group_norm, residual, skip_without_bias

_MARK = "_lgm_fused_forward"


def _folded_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's output with its convolution biases added inside the next fused kernel."""
    h = conv_without_bias(block.conv1, group_norm(block.norm1, x, silu=True))
    h = conv_without_bias(block.conv2, group_norm(block.norm2, h, silu=True, add=block.conv1.bias))
    shortcut = block.conv_shortcut if block.conv_shortcut is not None else nn.Identity()
    skip, skip_bias = skip_without_bias(shortcut, x)
    return residual(h, skip, 1.0 / block.output_scale_factor, block.conv2.bias, skip_bias)


def _forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    """Instance ``forward`` installed by :func:`install`: the folded pass on the fused path, else diffusers'."""
    if temb is None and not args and not kwargs and not self.training and fold_biases(input_tensor):
        return _folded_forward(self, input_tensor)
    return type(self).forward(self, input_tensor, temb, *args, **kwargs)


def _decoder_forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Instance ``forward`` of the VAE ``Decoder`` installed by :func:`install`: on the fused path diffusers'
    steps (conv_in, mid block, up blocks, norm, SiLU, conv_out) with the final GroupNorm and SiLU as one
    fused kernel (the largest norm of the decoder: 128 channels at full resolution), else diffusers'."""
    if latent_embeds is not None or self.training or not fold_biases(sample):
        return type(self).forward(self, sample, latent_embeds)
    sample = self.conv_in(sample)
    sample = self.mid_block(sample, None)
    sample = sample.to(next(iter(self.up_blocks.parameters())).dtype)  # older diffusers' upscale_dtype; a no-op
    for up_block in self.up_blocks:
        sample = up_block(sample, None)
    return self.conv_out(group_norm(self.conv_norm_out, sample, silu=True))


def is_plain_decoder(module: nn.Module) -> bool:
    """Whether ``module`` is a diffusers VAE ``Decoder`` whose tail :func:`_decoder_forward` computes:
    a GroupNorm ``conv_norm_out`` (not a SpatialNorm), a SiLU ``conv_act``, conv_in/mid_block/up_blocks/conv_out."""
    get = module.__dict__.get("_modules", {}).get
    norm = get("conv_norm_out")
    return (type(module).__name__ == "Decoder" and isinstance(norm, nn.GroupNorm) and norm.affine
            and isinstance(get("conv_act"), nn.SiLU) and all(get(n) is not None for n in
                                                             ("conv_in", "mid_block", "up_blocks", "conv_out")))


def is_plain_resnet(module: nn.Module) -> bool:
    """Whether ``module`` is a diffusers ``ResnetBlock2D`` that :func:`_folded_forward` computes exactly:
    affine GroupNorms, SiLU, 3x3 convolutions with biases, a 1x1 shortcut with bias or none, no time
    embedding (so no time-embedding norm acts: "default" and the up-decoder blocks' "group" reduce to norm2;
    "scale_shift" would raise without one, and keeps diffusers' forward), no resampling inside the block."""
    if type(module).__name__ != "ResnetBlock2D":
        return False
    get = module.__dict__.get("_modules", {}).get
    norm1, norm2, conv1, conv2 = get("norm1"), get("norm2"), get("conv1"), get("conv2")
    shortcut = get("conv_shortcut")
    return (isinstance(norm1, nn.GroupNorm) and isinstance(norm2, nn.GroupNorm) and norm1.affine and norm2.affine
            and isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)
            and conv1.bias is not None and conv2.bias is not None
            and (shortcut is None or (isinstance(shortcut, nn.Conv2d) and shortcut.kernel_size == (1, 1)
                                      and shortcut.bias is not None))
            and isinstance(get("nonlinearity"), nn.SiLU) and get("time_emb_proj") is None
            and getattr(module, "upsample", None) is None and getattr(module, "downsample", None) is None
            and getattr(module, "time_embedding_norm", "default") != "scale_shift"  # without temb: norm2 alone
            and float(getattr(module, "output_scale_factor", 1.0)) > 0)


def install(vae: nn.Module) -> int:
    """Route every plain ``ResnetBlock2D`` of ``vae``, and its decoder's final GroupNorm+SiLU, through the
    fused path (idempotent); returns how many modules have it."""
    count = 0
    for module in vae.modules():
        forward = _forward if is_plain_resnet(module) else _decoder_forward if is_plain_decoder(module) else None
        if forward is not None:
            if not getattr(module, _MARK, False):
                module.forward = types.MethodType(forward, module)
                setattr(module, _MARK, True)
            count += 1
    return count


def uninstall(vae: nn.Module) -> None:
    """Remove what :func:`install` added: diffusers' forward everywhere again."""
    for module in vae.modules():
        if module.__dict__.pop(_MARK, False):
            module.__dict__.pop("forward", None)
