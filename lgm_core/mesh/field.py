"""Gaussians -> dense voxel fields (opacity density, colour, centre), pure PyTorch.

For every voxel centre x the splatter accumulates, over Gaussians i with
``m_i(x)^2 = (x - mu_i)^T Sigma_i^-1 (x - mu_i) < cutoff^2``, the weight
``w_i(x) = opacity_i * exp(-m_i(x)^2 / 2)`` into 7 channels::

    density = sum_i w_i           colour_sum = sum_i w_i rgb_i      centre_sum = sum_i w_i mu_i

so ``colour_sum / density`` is a locally weighted Gaussian colour and ``centre_sum / density``
a locally weighted Gaussian centre (both used by mesh extraction). Each Gaussian touches the
voxel cube of half-width ``ceil(cutoff * sigma_max / voxel)`` around its centre; Gaussians are
processed in groups of equal half-width, in chunks of bounded size, with ``index_add_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..gaussians import Gaussians
from ..geometry import inverse_covariance_3d


@dataclass
class VoxelGrid:
    """Fields sampled at voxel centres ``origin + voxel_size * (i, j, k)``.

    ``data``: [D, H, W, C] float32 with axis order (x, y, z) -> (i, j, k) = data[i, j, k];
    channels: 0 = density, 1-3 = colour_sum, 4-6 = centre_sum (see module docstring).
    ``origin``: world position [3] of voxel (0, 0, 0); ``voxel_size``: edge length (world units).
    """

    data: torch.Tensor
    origin: torch.Tensor
    voxel_size: float

    @property
    def shape(self):
        return tuple(self.data.shape[:3])

    @property
    def density(self) -> torch.Tensor:
        return self.data[..., 0]

    def sample(self, points: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        """Trilinear interpolation of the chosen channels at world ``points`` [N, 3] -> [N, C]."""
        d = self.data[..., channels].permute(3, 0, 1, 2)[None]  # [1, C, X, Y, Z]
        size = torch.tensor(self.shape, dtype=torch.float32, device=points.device)
        idx = (points.float() - self.origin.to(points.device)) / self.voxel_size  # voxel index space
        # grid_sample's last grid coordinate indexes the first spatial axis (X) after our permute
        norm = idx / (size - 1) * 2 - 1
        grid = norm.flip(-1)[None, None, None]  # [1,1,1,N,3] ordered (z, y, x) -> (W, H, D)
        out = torch.nn.functional.grid_sample(d, grid.to(d.dtype), mode="bilinear", padding_mode="border",
                                              align_corners=True)
        return out[0, :, 0, 0].T.contiguous()


def gaussian_frames(g: Gaussians, min_scale: float = 1e-4):
    """Per-Gaussian inverse covariance [N, 3, 3] and largest std-dev [N] of batch item 0.

    Honors ``normalized_rotations``: legacy Gaussians use the raw-quaternion formula
    (:func:`lgm_core.geometry.inverse_covariance_3d`).
    """
    return inverse_covariance_3d(g.scales[0], g.rotations[0], normalized=g.normalized_rotations, min_scale=min_scale)


def splat_fields(
    g: Gaussians,
    *,
    resolution: int = 256,
    cutoff: float = 3.0,
    padding: int = 3,
    max_radius_voxels: int = 24,
    chunk: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> VoxelGrid:
    """Splat batch item 0 of ``g`` into a :class:`VoxelGrid` on ``g``'s device.

    The grid covers the Gaussians' support (centres +- cutoff sigma) plus ``padding`` voxels;
    ``resolution`` voxels span its longest side (voxels are cubes). Gaussians with a support wider
    than ``max_radius_voxels`` are truncated there (their tails are dropped).
    """
    dev = g.device
    mu = g.positions[0].float()
    opac = g.opacities[0, :, 0].float().clamp(0, 1)
    rgb = g.rgb[0].float().clamp(0, 1)
    inv, sigma_max = gaussian_frames(g)
    radius = cutoff * sigma_max
    lo = (mu - radius[:, None]).amin(dim=0)
    hi = (mu + radius[:, None]).amax(dim=0)
    extent = float((hi - lo).max())
    if not extent > 0:
        extent = float(radius.max().clamp_min(1e-3)) * 2
    voxel = extent / max(resolution - 1, 1)
    origin = lo - padding * voxel
    dims = (torch.ceil((hi - lo) / voxel).long() + 1 + 2 * padding).tolist()
    X, Y, Z = dims
    nvox = X * Y * Z
    data = torch.zeros(nvox, 7, device=dev, dtype=torch.float32)
    if chunk is None:
        chunk = 1 << 24 if dev.type == "cuda" else 1 << 21

    r_vox = torch.ceil(radius / voxel).long().clamp(1, min(max_radius_voxels, padding + min(dims) // 2))
    base = torch.round((mu - origin) / voxel).long()  # nearest voxel; base +- r stays inside the grid
    d0 = (origin + base.float() * voxel) - mu  # [N, 3] from the centre to its base voxel
    # m^2(o) = (d0 + o)^T A (d0 + o) = [A6 | 2 A d0 | d0^T A d0] . [P6(o) | o | 1]: one GEMM per chunk
    A = inv
    Ad0 = (A @ d0[:, :, None])[:, :, 0]
    coeff = torch.cat([
        A[:, 0, 0, None], A[:, 1, 1, None], A[:, 2, 2, None],
        2 * A[:, 0, 1, None], 2 * A[:, 0, 2, None], 2 * A[:, 1, 2, None],
        2 * Ad0, (d0 * Ad0).sum(-1, keepdim=True)], dim=1)  # [N, 10]
    feats = torch.cat([opac[:, None], opac[:, None] * rgb, opac[:, None] * mu], dim=1)  # [N, 7]
    strides = torch.tensor([Y * Z, Z, 1], device=dev)
    base_flat = (base * strides).sum(-1)
    cut2 = cutoff * cutoff
    groups = torch.unique(r_vox).tolist()
    for gi, r in enumerate(groups):
        sel = torch.nonzero(r_vox == r).squeeze(1)
        ar = torch.arange(-r, r + 1, device=dev)
        off = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).reshape(-1, 3)
        # keep only offsets inside the sphere of radius r + 1 voxel (the cube corners never count)
        off = off[(off.float().pow(2).sum(-1) <= (r + 0.87) ** 2)]
        o = off.float() * voxel
        basis = torch.cat([o * o, o[:, 0:1] * o[:, 1:2], o[:, 0:1] * o[:, 2:3], o[:, 1:2] * o[:, 2:3],
                           o, torch.ones_like(o[:, :1])], dim=1).T.contiguous()  # [10, K]
        off_flat = (off * strides).sum(-1)
        k = off.shape[0]
        per = max(1, chunk // k)
        for start in range(0, sel.numel(), per):
            ids = sel[start:start + per]
            m2 = coeff[ids] @ basis  # [n, K]
            nz = (m2 < cut2).nonzero(as_tuple=True)
            w = torch.exp(-0.5 * m2[nz])
            gid = ids[nz[0]]
            flat = base_flat[gid] + off_flat[nz[1]]
            data.index_add_(0, flat, w[:, None] * feats[gid])
        if progress is not None and len(groups) > 4 and gi % max(1, len(groups) // 4) == 0:
            progress(f"splatting: radius group {gi + 1}/{len(groups)}")
    return VoxelGrid(data.view(X, Y, Z, 7), origin, voxel)
