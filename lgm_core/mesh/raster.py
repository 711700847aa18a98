"""A small pip-only z-buffer triangle rasterizer in PyTorch (CPU or CUDA).

Used to render meshes for evaluation and to rasterize UV layouts for texture baking. No
anti-aliasing; pixel (row i, column j) is sampled at its centre (j + 0.5, i + 0.5); row 0 is the
top of the image. Each triangle enumerates the pixels of its bounding box (chunked, vectorised);
the nearest one wins through ``scatter_reduce(amin)`` on a 64-bit key (quantised depth << 32 | face).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from ..cameras import Cameras
from ..geometry import intrinsics, pixel_coordinates, world_to_camera


@dataclass
class Fragments:
    """Per-pixel rasterization result for one image of size [H, W].

    ``face``: [H, W] int64 index of the visible triangle, -1 for background.
    ``bary``: [H, W, 3] float32 barycentric weights of that triangle's 3 vertices (screen space
    unless perspective-corrected by the caller); zeros on background.
    """

    face: torch.Tensor
    bary: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.face >= 0


def rasterize(
    xy: torch.Tensor,
    depth: torch.Tensor,
    faces: torch.Tensor,
    size: Tuple[int, int],
    *,
    chunk: Optional[int] = None,
) -> Fragments:
    """Rasterize triangles given in pixel coordinates.

    ``xy``: [V, 2] float pixel coordinates (x right, y down; pixel centres at +0.5).
    ``depth``: [V] positive depth used for the z-test (smaller = nearer); triangles with any
    non-positive depth are skipped. ``faces``: [F, 3] int64. ``size``: (height, width).
    """
    H, W = int(size[0]), int(size[1])
    dev = xy.device
    if chunk is None:
        chunk = 1 << 24 if dev.type == "cuda" else 1 << 21
    faces = faces.long()
    xy = xy.float()
    depth = depth.float()
    tri = xy[faces]  # [F, 3, 2]
    dz = depth[faces]  # [F, 3]
    x0 = torch.ceil(tri[..., 0].amin(1) - 0.5).clamp(0, W).long()
    x1 = torch.floor(tri[..., 0].amax(1) - 0.5).clamp(-1, W - 1).long()
    y0 = torch.ceil(tri[..., 1].amin(1) - 0.5).clamp(0, H).long()
    y1 = torch.floor(tri[..., 1].amax(1) - 0.5).clamp(-1, H - 1).long()
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    # Edge-function coefficients: lambda_k(p) = A_k x + B_k y + C_k
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    valid = (area2.abs() > 1e-12) & (dz.amin(1) > 0) & (bw > 0) & (bh > 0)
    coef = _edge_coefficients(tri, area2)  # [F, 3, 3]

    count = bw * bh * valid.long()
    fid = torch.nonzero(count).squeeze(1)
    count = count[fid]
    big = torch.iinfo(torch.int64).max
    zbuf = torch.full((H * W,), big, dtype=torch.int64, device=dev)
    if fid.numel():
        # 1/depth is affine in screen space: interpolate it exactly and keep the largest
        inv_z = 1.0 / dz.clamp_min(1e-12)
        lo = float(inv_z[fid].amin())
        hi_ = float(inv_z[fid].amax())
        scale = (2**30) / max(hi_ - lo, 1e-12)
        csum = torch.cumsum(count, 0).cpu()
        n = fid.numel()
        start = 0
        while start < n:
            done = int(csum[start - 1]) if start > 0 else 0
            end = int(torch.searchsorted(csum, torch.tensor(done + chunk), right=True))
            end = min(max(end, start + 1), n)
            ids = fid[start:end]
            cnt = count[start:end]
            rep = torch.repeat_interleave(torch.arange(ids.numel(), device=dev), cnt)
            offs = torch.cumsum(cnt, 0) - cnt
            local = torch.arange(rep.numel(), device=dev) - offs[rep]
            f = ids[rep]
            w_ = bw[f]
            px = x0[f] + local % w_
            py = y0[f] + local // w_
            lam = _barycentric(coef[f], px, py)
            keep = (lam >= -1e-6).all(-1).nonzero().squeeze(1)
            f = f[keep]
            iz = (lam[keep] * inv_z[f]).sum(-1)
            zq = ((hi_ - iz) * scale).clamp(0, 2**31 - 1).long()
            key = (zq << 32) | f
            zbuf.scatter_reduce_(0, py[keep] * W + px[keep], key, reduce="amin")
            start = end
    hit = zbuf != big
    face = torch.where(hit, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1))
    ys, xs = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    bary = torch.zeros(H * W, 3, device=dev)
    hi = hit.nonzero().squeeze(1)
    if hi.numel():
        lam = _barycentric(coef[face[hi]], xs.reshape(-1)[hi], ys.reshape(-1)[hi]).clamp_min(0)
        bary[hi] = lam / lam.sum(-1, keepdim=True).clamp_min(1e-12)
    return Fragments(face.view(H, W), bary.view(H, W, 3))


def _edge_coefficients(tri: torch.Tensor, area2: torch.Tensor) -> torch.Tensor:
    safe = torch.where(area2.abs() > 1e-12, area2, torch.ones_like(area2))
    rows = []
    for k in range(3):
        p, q = tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        # lambda_k = cross(q - p, x - p) / area2
        A = -(q[:, 1] - p[:, 1])
        B = q[:, 0] - p[:, 0]
        C = -(A * p[:, 0] + B * p[:, 1])
        rows.append(torch.stack([A, B, C], -1) / safe[:, None])
    return torch.stack(rows, 1)


def _barycentric(coef: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    x = px.float() + 0.5
    y = py.float() + 0.5
    return coef[..., 0] * x[:, None] + coef[..., 1] * y[:, None] + coef[..., 2]


def project(vertices: torch.Tensor, cameras: Cameras, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """World points [V, 3] -> pixel coordinates [V, 2] and depth [V] (along the view axis) in
    camera ``index`` of ``cameras`` (:mod:`lgm_core.geometry` conventions)."""
    w2c = world_to_camera(cameras.c2w[index].to(vertices.device, torch.float32))
    pc = vertices.float() @ w2c[:3, :3].T + w2c[:3, 3]
    depth = pc[:, 2]
    safe = torch.where(depth.abs() > 1e-8, depth, torch.full_like(depth, 1e-8))
    K = intrinsics(cameras.width, cameras.height, cameras.fovy, device=vertices.device)[0]
    return pixel_coordinates(pc, K, safe), depth


@dataclass
class MeshRender:
    """``image``: [V, H, W, 3] float in [0, 1]; ``alpha``: [V, H, W] (1 where the mesh covers)."""

    image: torch.Tensor
    alpha: torch.Tensor


def render_mesh(
    mesh,
    cameras: Cameras,
    *,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    supersample: int = 1,
    device=None,
) -> MeshRender:
    """Render a :class:`~lgm_core.mesh.Mesh` unlit (texture, else vertex colours, else grey) from
    every camera, with perspective-correct interpolation. ``supersample`` > 1 renders at that
    factor and box-filters down (simple anti-aliasing)."""
    dev = torch.device(device) if device is not None else cameras.device
    v = mesh.vertices.to(dev)
    f = mesh.faces.to(dev)
    s = int(supersample)
    H, W = cameras.height * s, cameras.width * s
    cams = Cameras(cameras.c2w, cameras.fovy, W, H, cameras.near)
    bg = torch.tensor(background, dtype=torch.float32, device=dev)
    tex = mesh.texture.to(dev).permute(2, 0, 1)[None] if mesh.texture is not None else None
    uv = mesh.uvs.to(dev) if mesh.uvs is not None else None
    col = mesh.vertex_colors[:, :3].to(dev) if mesh.vertex_colors is not None else None
    images, alphas = [], []
    for i in range(len(cams)):
        xy, depth = project(v, cams, i)
        frag = rasterize(xy, depth, f, (H, W))
        m = frag.mask.reshape(-1)
        hit = m.nonzero().squeeze(1)
        img = bg.expand(H * W, 3).clone()
        if hit.numel():
            fi = frag.face.reshape(-1)[hit]
            tri = f[fi]
            lam = frag.bary.reshape(-1, 3)[hit] / depth[tri]  # perspective correction
            lam = lam / lam.sum(-1, keepdim=True)
            if tex is not None:
                uvp = (uv[tri] * lam[..., None]).sum(1)
                grid = torch.stack([uvp[:, 0] * 2 - 1, 1 - uvp[:, 1] * 2], -1)[None, None]
                c = torch.nn.functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                                                    align_corners=False)[0, :, 0].T
            elif col is not None:
                c = (col[tri] * lam[..., None]).sum(1)
            else:
                c = torch.full((hit.numel(), 3), 0.7, device=dev)
            img[hit] = c.clamp(0, 1)
        img = img.view(H, W, 3)
        a = m.float().view(H, W)
        if s > 1:
            img = torch.nn.functional.avg_pool2d(img.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            a = torch.nn.functional.avg_pool2d(a[None, None], s)[0, 0]
        images.append(img)
        alphas.append(a)
    return MeshRender(torch.stack(images), torch.stack(alphas))
