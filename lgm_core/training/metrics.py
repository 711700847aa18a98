"""Image metrics for training logs and validation (images in [0, 1], [..., C, H, W])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB over the leading axes: 10·log10(1 / MSE) per image [..., C, H, W]
    (the original logs it on the batch MSE; this is per image, then averaged)."""
    mse = ((pred.float() - target.float()) ** 2).flatten(-3).mean(-1)
    return (-10.0 * torch.log10(mse.clamp(min=1e-10))).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, data range 1, valid
    region only) of images [..., C, H, W]; images smaller than the window use a window of their size."""
    C, H, W = pred.shape[-3:]
    x = pred.float().reshape(-1, C, H, W)
    y = target.float().reshape(-1, C, H, W)
    window = min(window, H, W)
    g = _gaussian_window(window, sigma, x.device)
    kx = g.view(1, 1, 1, -1).expand(C, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(C, 1, window, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kx, groups=C), ky, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean()
