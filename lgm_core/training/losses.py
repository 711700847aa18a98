"""The training loss (docs/conventions.md#training): MSE(rgb on white) + MSE(alpha) + λ·LPIPS-VGG.

LPIPS (Zhang et al. 2018, "lin" v0.1 on VGG-16) is implemented here (no torchvision needed) and
loaded from weights on disk only; nothing is downloaded:

* the VGG-16 backbone: torchvision's ``vgg16-397923af.pth`` (looked up in the torchvision cache,
  ``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``);
* the linear heads: ``vgg.pth`` of the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``, found
  without importing the package).

``--lpips-weights PATH`` names either one ``.safetensors`` file holding both (keys
``features.N.weight|bias`` and ``lin{0..4}.model.1.weight``; :func:`save_lpips_weights` writes one)
or a folder holding the two ``.pth`` files. ``.pth`` files are read with ``torch.load(...,
weights_only=True)`` (tensors only, no code). When the weights cannot be found, :func:`load_lpips`
says so once and the trainer runs with λ_lpips = 0: the loss is never faked.

The original feeds LPIPS gt and prediction mapped to [−1, 1] and bilinearly resized to 256².
LPIPS runs in eval mode here (the original's heads sit in the trained module, so their dropout
was active during training; this is a deliberate, documented deviation towards determinism).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("lgm_core.training")

VGG_FILE = "vgg16-397923af.pth"
LIN_FILE = "vgg.pth"
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS-VGG distance between image batches in [−1, 1]: [N, 3, H, W] x 2 -> [N]."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":  # always eval (no dropout, fixed weights)
        return super().train(False)

    def _taps(self, x: torch.Tensor):
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
            if i == _TAPS[-1]:
                break
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for fa, fb, lin in zip(self._taps(a), self._taps(b), self.lins):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(2, 3))
        return total[:, 0]

    def load_weights(self, state: Dict[str, torch.Tensor]) -> "LPIPS":
        """Load ``features.*`` (torchvision VGG-16 keys; the classifier is ignored) and
        ``lin{k}.model.1.weight`` (lpips keys) strictly."""
        mine = {}
        for k, v in state.items():
            if k.startswith("features."):
                mine[k] = v
            elif k.startswith("lin") and k.endswith(".weight"):
                mine[f"lins.{int(k[3])}.weight"] = v
        missing = sorted(set(self.state_dict()) - set(mine))
        if missing:
            raise ValueError(f"LPIPS weights incomplete: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        self.load_state_dict(mine, strict=True)
        return self


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _lpips_package_lin() -> Optional[Path]:
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / LIN_FILE
    return path if path.is_file() else None


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def find_lpips_weights(path: Optional[Union[str, os.PathLike]] = None) -> tuple:
    """(list of weight files, reason) — the files to load, or [] and why not."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return [p], ""
        if p.is_dir():
            files = [p / VGG_FILE, p / LIN_FILE]
            missing = [f.name for f in files if not f.is_file()]
            return ([], f"{p} lacks {', '.join(missing)}") if missing else (files, "")
        return [], f"--lpips-weights: no such file or folder: {p}"
    vgg = _torch_hub_dir() / VGG_FILE
    lin = _lpips_package_lin()
    missing = []
    if not vgg.is_file():
        missing.append(f"VGG-16 backbone {vgg}")
    if lin is None:
        missing.append("LPIPS heads (the 'lpips' package's weights/v0.1/vgg.pth)")
    return ([vgg, lin], "") if not missing else ([], "not found: " + "; ".join(missing))


def load_lpips(path: Optional[Union[str, os.PathLike]] = None, device="cpu", warn: bool = True) -> Optional[LPIPS]:
    """LPIPS-VGG with pretrained weights, or None (after one warning line, if ``warn``) when they are
    not available. An explicit ``path`` that is unusable is an error."""
    files, reason = find_lpips_weights(path)
    if not files:
        if path is not None:
            raise FileNotFoundError(reason)
        if warn:
            log.warning("LPIPS-VGG weights %s. Training runs with lambda_lpips = 0 (MSE losses only); "
                        "pass --lpips-weights PATH to use LPIPS.", reason)
        return None
    state: Dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(_read_tensors(f))
        except Exception as exc:
            raise ValueError(f"{f}: cannot read LPIPS weights ({type(exc).__name__}: {exc})") from None
    try:
        model = LPIPS().load_weights(state)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{', '.join(map(str, files))}: {exc}") from None
    if warn:
        log.info("LPIPS-VGG loaded from %s", ", ".join(map(str, files)))
    return model.to(device)


def save_lpips_weights(model: LPIPS, path: Union[str, os.PathLike]) -> Path:
    """Write an :class:`LPIPS`'s weights as one .safetensors file usable with ``--lpips-weights``."""
    from safetensors.torch import save

    from ..fileio import atomic_write_bytes

    state = {k: v.contiguous() for k, v in model.features.state_dict().items()}
    state = {f"features.{k}": v for k, v in state.items()}
    state.update({f"lin{i}.model.1.weight": lin.weight.contiguous() for i, lin in enumerate(model.lins)})
    return atomic_write_bytes(path, save(state))


def lpips_weight(step: int, lambda_lpips: float, start: int = 0, ramp: int = 0) -> float:
    """λ_lpips at optimiser step ``step`` with the warm-up: 0 before ``start``, then a linear ramp
    over ``ramp`` steps to ``lambda_lpips``."""
    if step < start:
        return 0.0
    if ramp <= 0:
        return float(lambda_lpips)
    return float(lambda_lpips) * min(1.0, (step - start + 1) / ramp)


def reconstruction_loss(pred_images: torch.Tensor, pred_alpha: torch.Tensor, gt_images: torch.Tensor,
                        gt_masks: torch.Tensor, lpips: Optional[LPIPS] = None, lambda_lpips: float = 0.0) -> dict:
    """Loss terms for renders [B, V, 3|1, S, S] against gt composited on white and gt alpha masks.

    Returns {"loss", "mse", "mse_alpha", "lpips"} (scalars; "lpips" is 0 when not computed).
    """
    mse = F.mse_loss(pred_images, gt_images)
    mse_alpha = F.mse_loss(pred_alpha, gt_masks)
    loss = mse + mse_alpha
    lp = torch.zeros((), device=pred_images.device)
    if lpips is not None and lambda_lpips > 0:
        S = pred_images.shape[-1]

        def prep(x):
            x = x.reshape(-1, 3, S, S) * 2 - 1
            return F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False) if S != 256 else x

        lp = lpips(prep(gt_images), prep(pred_images)).mean()
        loss = loss + lambda_lpips * lp
    return {"loss": loss, "mse": mse.detach(), "mse_alpha": mse_alpha.detach(), "lpips": lp.detach()}
