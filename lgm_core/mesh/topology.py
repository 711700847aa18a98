"""Graph and grid helpers in pure PyTorch (CPU or CUDA) for mesh extraction.

* :func:`connected_components`: labels of an undirected graph given as an edge list
  (hook-and-compress label propagation: a handful of rounds, each a few scatters and gathers,
  with one host sync per round);
* :func:`outside_mask`: the empty voxels 6-connected to the grid's border (flood fill by repeated
  dilation; host syncs only every ``check_every`` steps);
* :func:`unique_edges`: the undirected edges of a triangle list with their face counts.
"""

from __future__ import annotations

from typing import Tuple

import torch


def connected_components(n: int, edges: torch.Tensor, max_rounds: int = 200, jumps: int = 4) -> torch.Tensor:
    """Component label [n] int64 of each of ``n`` nodes joined by ``edges`` [E, 2] int64.

    Labels are the smallest node id of each component (so isolated nodes keep their own id).
    Every round hooks each edge's larger label onto the smaller one (``scatter_reduce(amin)``), then
    halves the paths ``jumps`` times (``lab = lab[lab]``); it ends when every edge's two labels agree
    and every label is a root (one host sync per round)."""
    lab = torch.arange(n, device=edges.device)
    if edges.numel() == 0 or n == 0:
        return lab
    u, v = edges[:, 0].long(), edges[:, 1].long()
    for _ in range(max_rounds):
        lu, lv = lab[u], lab[v]
        m = torch.minimum(lu, lv)
        lab.scatter_reduce_(0, lu, m, reduce="amin")
        lab.scatter_reduce_(0, lv, m, reduce="amin")
        for _ in range(jumps):  # pointer jumping; labels only decrease, so they end at the roots
            lab = lab[lab]
        if bool(((lab[u] == lab[v]).all() & (lab[lab] == lab).all())):  # the round's one host sync
            return lab
    raise RuntimeError("connected_components did not converge")  # pragma: no cover


def outside_mask(empty: torch.Tensor, check_every: int = 16) -> torch.Tensor:
    """[X, Y, Z] bool: the voxels of ``empty`` 6-connected to a voxel on the grid's border."""
    reach = torch.zeros_like(empty)
    for sl in ((0,), (-1,)):
        reach[sl[0]] = empty[sl[0]]
        reach[:, sl[0]] = empty[:, sl[0]]
        reach[:, :, sl[0]] = empty[:, :, sl[0]]
    count = int(reach.sum())
    while True:
        for _ in range(check_every):
            grown = reach.clone()
            grown[1:] |= reach[:-1]
            grown[:-1] |= reach[1:]
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            grown[:, :, 1:] |= reach[:, :, :-1]
            grown[:, :, :-1] |= reach[:, :, 1:]
            reach = grown & empty
        new = int(reach.sum())
        if new == count:
            return reach
        count = new


def unique_edges(faces: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(edges [E, 2] with edges[:, 0] < edges[:, 1], faces per edge [E], edge id of each face side
    [F, 3]; side k joins corners k and k + 1)."""
    e = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1)  # [F, 3, 2]
    lo, hi = e.min(-1).values, e.max(-1).values
    key, inverse, counts = torch.unique((lo * n + hi).reshape(-1), return_inverse=True, return_counts=True)
    return torch.stack([key // n, key % n], -1), counts, inverse.view(-1, 3)
