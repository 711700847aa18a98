"""Quadric-error edge-collapse decimation in pure PyTorch (CPU or CUDA), in parallel rounds.

Conventions: ``vertices`` [V, 3] float, ``faces`` [F, 3] int64 (a manifold triangle mesh, e.g. a
marching-cubes surface); the result keeps the winding. Each vertex carries the area-weighted
quadric of its faces' planes (Garland & Heckbert); an edge (a, b) collapses onto the point x that
minimises the summed quadric, regularised towards the edge midpoint m in flat directions::

    x = argmin  Q_a(x) + Q_b(x) + lam |x - m|^2,   lam = 1e-3 trace(A_a + A_b) / 3

A round collapses, at once, every candidate edge whose cost rank is the smallest within two rings
of both its ends (so no face is touched by two collapses and the checks below stay exact), where
candidates are the cheapest ``candidate_fraction`` of the interior edges. A collapse is refused when
it would break the manifold (its ends share more than the two neighbours opposite the edge: the
link condition) or turn a remaining face over (its normal changes direction by more than
``acos(min_cos)``), and boundary edges/vertices never move. The last round takes only as many of the
cheapest collapses as the face budget needs. One host sync per round (the accepted count).
"""

from __future__ import annotations

import logging
import math
from typing import Tuple

import torch

from .topology import unique_edges

_BIG = torch.iinfo(torch.int64).max
log = logging.getLogger("lgm_core")


def _face_quadrics(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[V, 10] per-vertex sums of area-weighted plane quadrics: A (xx, yy, zz, xy, xz, yz), b (3), c."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cr = torch.cross(b - a, c - a, dim=-1)
    area = 0.5 * cr.norm(dim=-1, keepdim=True)
    nrm = cr / (2 * area).clamp_min(1e-30)
    d = -(nrm * a).sum(-1, keepdim=True)
    x, y, z = nrm[:, 0:1], nrm[:, 1:2], nrm[:, 2:3]
    q = area * torch.cat([x * x, y * y, z * z, x * y, x * z, y * z, nrm * d, d * d], 1)
    out = torch.zeros(v.shape[0], 10, dtype=v.dtype, device=v.device)
    for k in range(3):
        out.index_add_(0, f[:, k], q)
    return out


def _optimal(q: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Collapse points [E, 3] and their quadric errors [E] for summed quadrics ``q`` [E, 10]."""
    A = torch.stack([torch.stack([q[:, 0], q[:, 3], q[:, 4]], -1),
                     torch.stack([q[:, 3], q[:, 1], q[:, 5]], -1),
                     torch.stack([q[:, 4], q[:, 5], q[:, 2]], -1)], -2)
    b, c = q[:, 6:9], q[:, 9]
    m = 0.5 * (pa + pb)
    lam = (1e-3 * (q[:, 0] + q[:, 1] + q[:, 2]) / 3).clamp_min(1e-30)
    M = A + lam[:, None, None] * torch.eye(3, dtype=q.dtype, device=q.device)
    rhs = lam[:, None] * m - b
    c0, c1, c2 = M[:, :, 0], M[:, :, 1], M[:, :, 2]  # Cramer's rule on the columns
    det = (c0 * torch.cross(c1, c2, dim=-1)).sum(-1)
    x = torch.stack([(rhs * torch.cross(c1, c2, dim=-1)).sum(-1), (c0 * torch.cross(rhs, c2, dim=-1)).sum(-1),
                     (c0 * torch.cross(c1, rhs, dim=-1)).sum(-1)], -1) / det[:, None]
    far = (x - m).norm(dim=-1) > (pa - pb).norm(dim=-1)  # never further than one edge length away
    x = torch.where(far[:, None] | ~torch.isfinite(x).all(-1, keepdim=True), m, x)
    cost = ((x[:, :, None] * A).sum(1) * x).sum(-1) + 2 * (b * x).sum(-1) + c
    return x, cost.clamp_min(0)


def _csr(keys: torch.Tensor, n: int):
    """(order, start [n], count [n]) grouping the rows of ``keys`` [K] (values in [0, n)) by key."""
    order = torch.argsort(keys)
    count = torch.bincount(keys, minlength=n)
    return order, torch.cumsum(count, 0) - count, count


def _expand(start: torch.Tensor, count: torch.Tensor):
    """(owner [sum count], position) enumerating ``start[i] + 0 .. count[i] - 1`` for every i."""
    owner = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
    local = torch.arange(owner.numel(), device=count.device) - (torch.cumsum(count, 0) - count)[owner]
    return owner, start[owner] + local


def _collapse_allowed(v, f, E, n, a, b, x, min_cos) -> torch.Tensor:
    """[C] bool: collapsing edge (a, b) onto x keeps the mesh manifold (a and b share exactly two
    neighbours) and turns no face around a or b over (each collapse judged on its own)."""
    dev = v.device
    C = a.numel()
    # link condition: neighbours w of a (w != b) that are also neighbours of b
    D = torch.cat([E, E.flip(1)])
    keys, _ = torch.sort(D[:, 0] * n + D[:, 1])
    order, start, count = _csr(D[:, 0], n)
    c_of, pos = _expand(start[a], count[a])
    w = D[order[pos], 1]
    query = b[c_of] * n + w
    at = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    common = torch.bincount(c_of[(keys[at] == query) & (w != b[c_of])], minlength=C)
    good = common == 2
    # no face around a or b (other than the two on the edge) turns over
    corner_v = f.reshape(-1)
    order, start, count = _csr(corner_v, n)
    for end, other_end in ((a, b), (b, a)):
        c_of, pos = _expand(start[end], count[end])
        tri = f[order[pos] // 3]
        other = other_end[c_of]
        keep = ~(tri == other[:, None]).any(1)
        c_of, tri = c_of[keep], tri[keep]
        p_old = v[tri]
        moving = (tri == end[c_of][:, None])
        p_new = torch.where(moving[..., None], x[c_of][:, None, :], p_old)
        n_old = torch.cross(p_old[:, 1] - p_old[:, 0], p_old[:, 2] - p_old[:, 0], dim=-1)
        n_new = torch.cross(p_new[:, 1] - p_new[:, 0], p_new[:, 2] - p_new[:, 0], dim=-1)
        flip = (n_old * n_new).sum(-1) <= min_cos * n_old.norm(dim=-1) * n_new.norm(dim=-1)
        bad = torch.zeros(C, dtype=torch.bool, device=dev)
        bad[c_of[flip]] = True
        good &= ~bad
    return good


def decimate(vertices: torch.Tensor, faces: torch.Tensor, target_faces: int, *, candidate_fraction: float = 0.25,
             min_cos: float = 0.2, max_rounds: int = 500) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decimate to at most ``target_faces`` faces where the checks allow (see the module docstring)
    -> (vertices [V', 3] in ``vertices``' dtype, faces [F', 3] int64), unreferenced vertices dropped."""
    dev, out_dtype = vertices.device, vertices.dtype
    v = vertices.double().clone()
    f = faces.long()
    n = v.shape[0]
    Q = _face_quadrics(v, f)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        nf = f.shape[0]
        if nf <= target_faces:
            break
        E, cnt, _ = unique_edges(f, n)
        ea, eb = E[:, 0], E[:, 1]
        boundary = torch.zeros(n, dtype=torch.bool, device=dev)
        boundary[E[cnt != 2].reshape(-1)] = True
        ok = (cnt == 2) & ~boundary[ea] & ~boundary[eb]
        x, cost = _optimal(Q[ea] + Q[eb], v[ea], v[eb])
        cost = torch.where(ok, cost, torch.full_like(cost, math.inf))
        rank = torch.empty_like(ea)
        rank[torch.argsort(cost, stable=True)] = torch.arange(E.shape[0], device=dev)  # ties (flat: 0) by edge id
        cand = (ok & (rank < max(1, int(candidate_fraction * E.shape[0])))).nonzero().squeeze(1)
        cand = cand[_collapse_allowed(v, f, E, n, ea[cand], eb[cand], x[cand], min_cos)]
        if cand.numel() == 0:
            break
        # among the allowed collapses, those of locally smallest rank within two rings of both ends
        r = torch.full_like(rank, _BIG)
        r[cand] = rank[cand]
        vmin = torch.full((n,), _BIG, dtype=torch.int64, device=dev)
        vmin.scatter_reduce_(0, ea, r, reduce="amin")
        vmin.scatter_reduce_(0, eb, r, reduce="amin")
        fmin = vmin[f].amin(1)
        vmin2 = torch.full((n,), _BIG, dtype=torch.int64, device=dev)
        for k in range(3):
            vmin2.scatter_reduce_(0, f[:, k], fmin, reduce="amin")
        acc = cand[(vmin2[ea[cand]] == r[cand]) & (vmin2[eb[cand]] == r[cand])]
        need = (nf - target_faces + 1) // 2
        n_acc = int(acc.numel())
        if n_acc == 0:
            break
        if n_acc > need:
            acc = acc[torch.argsort(rank[acc])[:need]]
        a, b = ea[acc], eb[acc]
        v[a] = x[acc]
        Q[a] += Q[b]
        remap = torch.arange(n, device=dev)
        remap[b] = a
        f = remap[f]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    log.debug("decimate: %d -> %d faces in %d rounds", faces.shape[0], f.shape[0], rounds)
    used = torch.zeros(n, dtype=torch.bool, device=dev)
    used[f.reshape(-1)] = True
    index = torch.cumsum(used.long(), 0) - 1
    return v[used].to(out_dtype), index[f]
