"""UV atlas without xatlas: axis-aligned charts, orthographic projection, shelf packing.

Conventions: input ``vertices`` [V, 3] float, ``faces`` [F, 3] int64 (a welded mesh, CCW from
outside); output as xatlas' ``atlas[0]``: a vertex map [V'] (split vertex -> input vertex), faces
[F, 3] into the split vertices, and ``uvs`` [V', 2] float32 in [0, 1] with (0, 0) at the bottom-left
of the texture (OBJ convention; :func:`lgm_core.mesh.extract._bake_texture` reads them so).

1. every face gets one of the six axis directions (+-x, +-y, +-z): the one closest to its normal
   after ``smooth_rounds`` rounds of averaging normals over the neighbouring faces (fewer ragged chart
   borders), unless the face itself leans less than ``min_dot`` towards it, then its own closest one
   — so no face is ever projected edge-on or mirrored;
2. charts are the connected parts (faces joined across shared edges) of equal direction
   (:func:`lgm_core.mesh.topology.connected_components`, on the mesh's device);
3. each chart is projected orthographically along its direction (one world unit = the same number
   of texels everywhere), turned upright when taller than wide, and its bounding rectangle, plus
   ``padding`` texels on each side (less when a small texture cannot hold it), is shelf-packed (tallest first) into the square texture, with the
   largest texel density that fits (bisection on the density; NumPy, one short loop per try).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from .topology import connected_components, unique_edges

_DIRS = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
# in-plane axes (u, w) per direction, ordered so that u x w points along the direction
_PLANE = [(1, 2), (2, 1), (2, 0), (0, 2), (0, 1), (1, 0)]


def _face_neighbours(f: torch.Tensor, nv: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fa, fb): the two faces on each manifold edge."""
    _, counts, side = unique_edges(f, nv)
    order = torch.argsort(side.reshape(-1), stable=True)
    sid = side.reshape(-1)[order]
    first = torch.ones_like(sid, dtype=torch.bool)
    first[1:] = sid[1:] != sid[:-1]
    pair = first.nonzero().squeeze(1)[counts == 2]
    return order[pair] // 3, order[pair + 1] // 3


def _face_labels(v: torch.Tensor, f: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, smooth_rounds: int,
                 min_dot: float, vote_rounds: int) -> torch.Tensor:
    """[F] direction index (0..5 = +x, -x, +y, -y, +z, -z) of each face (steps 1 of the module docstring)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    fn = torch.cross(b - a, c - a, dim=-1)  # area-weighted
    unit = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    dirs = _DIRS.to(v)
    sm = fn
    for _ in range(smooth_rounds):
        vn = torch.zeros_like(v)
        for k in range(3):
            vn.index_add_(0, f[:, k], sm)
        sm = vn[f].sum(1)
    lean = unit @ dirs.T  # [F, 6]
    allowed = lean > min_dot
    allowed[torch.arange(f.shape[0], device=v.device), lean.argmax(1)] = True
    score = torch.where(allowed, sm @ dirs.T, torch.full_like(lean, -torch.inf))
    label = score.argmax(1)
    eye = torch.eye(6, dtype=v.dtype, device=v.device)
    for _ in range(vote_rounds):  # majority of the edge neighbours (and the face itself), among allowed directions
        votes = eye[label] * 1.5
        votes.index_add_(0, fa, eye[label[fb]])
        votes.index_add_(0, fb, eye[label[fa]])
        label = torch.where(allowed, votes + 1e-3 * lean, torch.full_like(votes, -torch.inf)).argmax(1)
    return label


def _shelf_pack(w: np.ndarray, h: np.ndarray, size: float) -> Tuple[bool, np.ndarray, np.ndarray]:
    """Place rectangles (already padded, tallest first) in shelves of width ``size``."""
    x = np.zeros(len(w))
    y = np.zeros(len(w))
    cx = cy = shelf = 0.0
    for i in range(len(w)):
        if cx + w[i] > size:
            cy += shelf
            cx = shelf = 0.0
        x[i], y[i] = cx, cy
        cx += w[i]
        shelf = max(shelf, h[i])
    return cy + shelf <= size and (len(w) == 0 or w.max() <= size), x, y


def chart_atlas(vertices: torch.Tensor, faces: torch.Tensor, texture_size: int, *, padding: float = 2.0,
                smooth_rounds: int = 3, min_dot: float = 0.3,
                vote_rounds: int = 10) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vertex map [V'] int64, faces [F, 3] int64, uvs [V', 2] float32) on the input's device; see
    the module docstring."""
    dev = vertices.device
    v = vertices.double()
    f = faces.long()
    nv, nf = v.shape[0], f.shape[0]
    fa, fb = _face_neighbours(f, nv)
    label = _face_labels(v, f, fa, fb, smooth_rounds, min_dot, vote_rounds)
    same = label[fa] == label[fb]
    comp = connected_components(nf, torch.stack([fa[same], fb[same]], 1))
    _, chart = torch.unique(comp, return_inverse=True)
    n_charts = int(chart.max()) + 1 if nf else 0
    # split vertices: one per (chart, vertex)
    key = (chart[:, None] * nv + f).reshape(-1)
    ukey, inv = torch.unique(key, return_inverse=True)
    vmap = ukey % nv
    vchart = ukey // nv
    new_faces = inv.view(nf, 3)
    vlabel = torch.empty_like(vchart)
    vlabel[new_faces.reshape(-1)] = label[:, None].expand(nf, 3).reshape(-1)
    plane = torch.tensor(_PLANE, device=dev)[vlabel]  # [V', 2]
    p = v[vmap]
    uw = torch.stack([p.gather(1, plane[:, :1])[:, 0], p.gather(1, plane[:, 1:])[:, 0]], -1)
    lo = torch.full((n_charts, 2), float("inf"), dtype=v.dtype, device=dev)
    hi = torch.full((n_charts, 2), float("-inf"), dtype=v.dtype, device=dev)  # chart bounding boxes
    lo.scatter_reduce_(0, vchart[:, None].expand(-1, 2), uw, reduce="amin")
    hi.scatter_reduce_(0, vchart[:, None].expand(-1, 2), uw, reduce="amax")
    ext = (hi - lo).cpu().numpy()
    rot = ext[:, 1] > ext[:, 0]  # turn tall charts on their side (a rotation: no mirroring)
    w = np.where(rot, ext[:, 1], ext[:, 0])
    h = np.where(rot, ext[:, 0], ext[:, 1])
    by_height = np.argsort(-h, kind="stable")
    size = float(texture_size)

    area = float((w * h).sum())
    # a tiny texture cannot hold every chart's gutter: halve the padding until the charts fit
    for pad in (padding, padding / 2, padding / 4, 0.0):
        def attempt(density):
            return _shelf_pack(w[by_height] * density + 2 * pad, h[by_height] * density + 2 * pad, size)

        hi_d = size / max(np.sqrt(max(area, 1e-30)), 1e-30)  # no packing beats a 100 % fill
        lo_d = 0.0
        for _ in range(20):
            mid = 0.5 * (lo_d + hi_d)
            if attempt(mid)[0]:
                lo_d = mid
            else:
                hi_d = mid
        density = lo_d
        fits, x, y = attempt(density)
        if fits and density > 0:
            break
    else:
        raise ValueError(f"cannot pack {n_charts} charts into a {texture_size}^2 texture: use a larger texture_size")
    padding = pad
    ox = np.empty(n_charts)
    oy = np.empty(n_charts)
    ox[by_height], oy[by_height] = x + padding, y + padding
    # local chart coordinates (texels), turned where needed: (u, w) -> (w, -u) is a rotation
    local = (uw - lo[vchart]) * density
    rot_t = torch.from_numpy(rot).to(dev)[vchart]
    ext_t = torch.from_numpy(ext).to(dev)[vchart] * density
    lx = torch.where(rot_t, local[:, 1], local[:, 0])
    ly = torch.where(rot_t, ext_t[:, 0] - local[:, 0], local[:, 1])
    px = torch.from_numpy(ox).to(dev)[vchart] + lx
    # rows from the top; the chart's "up" points up the image, so UV faces stay counter-clockwise
    py = torch.from_numpy(oy + h * density).to(dev)[vchart] - ly
    uvs = torch.stack([px / size, 1.0 - py / size], -1).float()
    return vmap, new_faces, uvs
