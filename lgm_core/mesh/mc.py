"""Marching cubes in PyTorch (CPU or CUDA): a welded, consistently oriented iso-surface.

Conventions: ``volume`` [X, Y, Z] is sampled at integer index positions (i, j, k); a sample is
*inside* when its value is > ``level``. Vertices come back in index coordinates (float, the same
frame as scikit-image's ``marching_cubes`` output), one vertex per grid edge the surface crosses,
placed by linear interpolation along that edge, so neighbouring cubes share their vertices and the
mesh is welded by construction. Faces wind counter-clockwise seen from the outside (low values),
i.e. normals point from high to low values.

The case table is generated here (:func:`case_table`), not copied: for each of the 256 corner
patterns, every cube face contributes the iso-contour segments that separate its inside corners
from its outside ones (on an ambiguous face, with two diagonal inside corners, :data:`JOIN_INSIDE`
says which pair is joined across the diagonal); the segments, directed consistently, close
into loops on the cube's surface, and each loop is triangulated (the best-shaped triangulation
whose inner diagonals never run along a cube face, where a neighbour cube could use the same
diagonal; :func:`_triangulate`). The face rule depends
only on the face's four corners, so the two cubes sharing a face always agree and the surface is
closed (watertight) wherever it does not reach the volume's border.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import torch

# corner c sits at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1) along (i, j, k)
_CORNERS = [((c & 1), (c >> 1) & 1, (c >> 2) & 1) for c in range(8)]
# edge e joins corner a and a + 2**axis; listed by axis, then by corner a
_EDGES = [(a, a | (1 << axis), axis) for axis in range(3) for a in range(8) if not a & (1 << axis)]
_EDGE_OF = {frozenset((a, b)): e for e, (a, b, _) in enumerate(_EDGES)}
JOIN_INSIDE = False
"""Ambiguous cube faces (two diagonal inside corners): False cuts each inside corner off alone (the
inside never joins across a face diagonal); True cuts the outside corners off (it always does)."""


def _faces() -> List[List[int]]:
    """The 6 cube faces, each as its 4 corners in counter-clockwise order seen from outside the cube."""
    out = []
    for axis in range(3):
        b, c = (axis + 1) % 3, (axis + 2) % 3  # e_b x e_c = e_axis
        for side in (0, 1):
            ring = []
            for ub, uc in ((0, 0), (1, 0), (1, 1), (0, 1)):  # CCW seen from +e_axis
                off = [0, 0, 0]
                off[axis], off[b], off[c] = side, ub, uc
                ring.append(off[0] | off[1] << 1 | off[2] << 2)
            out.append(ring if side == 1 else ring[::-1])
    return out


def _case(config: int) -> List[Tuple[int, int, int]]:
    """Triangles (local edge ids, CCW seen from outside the surface) of one corner pattern."""
    inside = [(config >> c) & 1 for c in range(8)]
    nxt = {}
    for ring in _faces():
        crossings = []  # (position in the ring, entering the inside?)
        for k in range(4):
            p, q = ring[k], ring[(k + 1) % 4]
            if inside[p] != inside[q]:
                crossings.append((k, bool(inside[q])))
        # JOIN_INSIDE False: pair each entering edge with the next exiting edge (each run of inside
        # corners is cut off); True: each exiting edge with the next entering one (outside runs cut off)
        for n, (k, entering) in enumerate(crossings):
            if entering != JOIN_INSIDE:
                k2 = crossings[(n + 1) % len(crossings)][0]
                e_k = _EDGE_OF[frozenset((ring[k], ring[(k + 1) % 4]))]
                e_k2 = _EDGE_OF[frozenset((ring[k2], ring[(k2 + 1) % 4]))]
                e_in, e_out = (e_k, e_k2) if entering else (e_k2, e_k)
                nxt[e_in] = e_out  # directed entry -> exit: outward normals (checked in the tests)
    tris, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, e = [], start
        while e not in seen:
            seen.add(e)
            loop.append(e)
            e = nxt[e]
        tris += _triangulate(loop)
    return tris


def _edge_faces():
    """Per cube edge, the set of the (two) cube faces it lies on."""
    out = [set() for _ in _EDGES]
    for fi, ring in enumerate(_faces()):
        for k in range(4):
            out[_EDGE_OF[frozenset((ring[k], ring[(k + 1) % 4]))]].add(fi)
    return out


def _midpoint(e: int):
    a, b, _ = _EDGES[e]
    return [(_CORNERS[a][i] + _CORNERS[b][i]) / 2 for i in range(3)]


def _triangulations(loop):
    """Every triangulation of the polygon ``loop`` (a list of vertices), as triangle lists."""
    if len(loop) < 3:
        return [[]]
    if len(loop) == 3:
        return [[tuple(loop)]]
    out = []
    a, b = loop[0], loop[-1]
    for k in range(1, len(loop) - 1):  # the triangle on edge (b, a) has apex loop[k]
        for left in _triangulations(loop[: k + 1]):
            for right in _triangulations(loop[k:]):
                out.append(left + right + [(a, loop[k], b)])
    return out


def _triangulate(loop):
    """Triangles of one contour loop: among all its triangulations, those whose inner diagonals never
    join two vertices on one cube face (a neighbour cube could use the same diagonal, making the edge
    non-manifold), the one with the best worst triangle (vertices at edge midpoints)."""
    if len(loop) == 3:
        return [tuple(loop)]
    faces = _edge_faces()
    ring = {frozenset((loop[i], loop[(i + 1) % len(loop)])) for i in range(len(loop))}

    def score(tris):
        worst = float("inf")
        for t in tris:
            for i in range(3):
                pair = frozenset((t[i], t[(i + 1) % 3]))
                if pair not in ring and faces[t[i]] & faces[t[(i + 1) % 3]]:
                    return -1.0
            p = [_midpoint(e) for e in t]
            u = [p[1][i] - p[0][i] for i in range(3)]
            w = [p[2][i] - p[0][i] for i in range(3)]
            cross = [u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2], u[0] * w[1] - u[1] * w[0]]
            area = sum(c * c for c in cross) ** 0.5
            edges = sum(sum((p[j][i] - p[(j + 1) % 3][i]) ** 2 for i in range(3)) for j in range(3))
            worst = min(worst, area / edges)
        return worst

    best = max(_triangulations(loop), key=score)
    if score(best) < 0:
        raise AssertionError(f"no face-safe triangulation of loop {loop}")  # pragma: no cover
    return best


@functools.lru_cache(maxsize=None)
def case_table() -> Tuple[torch.Tensor, torch.Tensor]:
    """(triangles [256, T, 3] int64 local edge ids, padded with 0; count [256] int64)."""
    cases = [_case(c) for c in range(256)]
    t = max(len(c) for c in cases)
    table = torch.zeros(256, t, 3, dtype=torch.int64)
    for c, tris in enumerate(cases):
        if tris:
            table[c, : len(tris)] = torch.tensor(tris)
    return table, torch.tensor([len(c) for c in cases], dtype=torch.int64)


def marching_cubes(volume: torch.Tensor, level: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Iso-surface of ``volume`` [X, Y, Z] at ``level`` -> (vertices [V, 3] float32 in index
    coordinates, faces [F, 3] int64), on ``volume``'s device. See the module docstring."""
    if volume.dim() != 3 or min(volume.shape) < 2:
        raise ValueError(f"volume must be [X, Y, Z] with every side >= 2, got {list(volume.shape)}")
    dev = volume.device
    vol = volume.float().contiguous()
    X, Y, Z = vol.shape
    stride_list = (Y * Z, Z, 1)
    strides = torch.tensor(stride_list, device=dev)
    flat_vol = vol.view(-1)
    occ = vol > level
    # one vertex per crossed grid edge, numbered axis by axis in raster order; vmap[3 * p + axis] is
    # the vertex on the edge from grid point p (flat index) along +axis
    vmap = torch.empty(3 * X * Y * Z, dtype=torch.int32, device=dev)
    verts, count = [], 0
    for axis in range(3):
        n = vol.shape[axis] - 1
        idx = (occ.narrow(axis, 0, n) != occ.narrow(axis, 1, n)).nonzero()  # [E, 3] lower ends
        lo = (idx * strides).sum(-1)
        va = flat_vol[lo]
        vb = flat_vol[lo + stride_list[axis]]
        t = ((level - va) / (vb - va)).clamp(1e-3, 1 - 1e-3)  # never exactly on a corner (no degenerate faces)
        p = idx.float()
        p[:, axis] += t
        verts.append(p)
        vmap[3 * lo + axis] = torch.arange(count, count + idx.shape[0], device=dev, dtype=torch.int32)
        count += idx.shape[0]
    vertices = torch.cat(verts)

    code = torch.zeros(X - 1, Y - 1, Z - 1, dtype=torch.uint8, device=dev)
    for c, (dx, dy, dz) in enumerate(_CORNERS):
        code |= occ[dx:X - 1 + dx, dy:Y - 1 + dy, dz:Z - 1 + dz].to(torch.uint8) << c
    cubes = ((code > 0) & (code < 255)).nonzero()  # [M, 3]
    table, ntri = case_table()
    table, ntri = table.to(dev), ntri.to(dev)
    cc = code[cubes[:, 0], cubes[:, 1], cubes[:, 2]].long()
    base = (cubes * strides).sum(-1)  # flat index of each cube's corner 0
    per = ntri[cc]
    cube = torch.repeat_interleave(torch.arange(cubes.shape[0], device=dev), per)
    slot = torch.arange(cube.shape[0], device=dev) - (torch.cumsum(per, 0) - per)[cube]
    local = table[cc[cube], slot]  # [F, 3] local edge ids
    # per local edge: 3 * flat offset of its lower corner + its axis
    edge_key = torch.tensor([3 * sum(o * s for o, s in zip(_CORNERS[a], (Y * Z, Z, 1))) + axis
                             for a, _, axis in _EDGES], device=dev)
    faces = vmap[3 * base[cube][:, None] + edge_key[local]].long()
    return vertices, faces
