"""Synthetic test scenes: Gaussians sampled on known surfaces (for tests and benchmarks).

Each scene is a union of primitives with analytic signed distances (negative inside), so the
union's surface can be sampled exactly: a sample on one primitive is kept only when it lies
outside every other primitive. Colours are a smooth function of position plus a per-primitive
base colour, so textures have both gradients and sharp edges. Frame: the LGM frame, objects of
size about 0.6-0.9 centred at the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np
import torch

from ..gaussians import Gaussians

SCENES = ("sphere", "torus", "box", "composite")


@dataclass
class Primitive:
    sample: Callable[[np.random.Generator, int], Tuple[np.ndarray, np.ndarray]]  # -> points, normals
    sdf: Callable[[np.ndarray], np.ndarray]
    area: float
    color: Tuple[float, float, float]


def _sphere(center, r, color) -> Primitive:
    c = np.asarray(center, dtype=np.float64)

    def sample(rng, n):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return c + r * d, d

    return Primitive(sample, lambda p: np.linalg.norm(p - c, axis=1) - r, 4 * math.pi * r * r, color)


def _box(center, half, color) -> Primitive:
    c = np.asarray(center, dtype=np.float64)
    h = np.asarray(half, dtype=np.float64)
    areas = np.array([h[1] * h[2], h[1] * h[2], h[0] * h[2], h[0] * h[2], h[0] * h[1], h[0] * h[1]]) * 4

    def sample(rng, n):
        face = rng.choice(6, size=n, p=areas / areas.sum())
        axis = face // 2
        sign = np.where(face % 2 == 0, 1.0, -1.0)
        p = rng.uniform(-1, 1, size=(n, 3)) * h
        p[np.arange(n), axis] = sign * h[axis]
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return c + p, nrm

    def sdf(p):
        q = np.abs(p - c) - h
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)

    return Primitive(sample, sdf, float(areas.sum()), color)


def _torus(center, R, r, color) -> Primitive:
    c = np.asarray(center, dtype=np.float64)

    def sample(rng, n):
        # rejection sampling for uniform area density: density ~ (R + r cos v)
        u = rng.uniform(0, 2 * math.pi, size=4 * n)
        v = rng.uniform(0, 2 * math.pi, size=4 * n)
        keep = rng.uniform(0, R + r, size=4 * n) < (R + r * np.cos(v))
        u, v = u[keep][:n], v[keep][:n]
        nrm = np.stack([np.cos(v) * np.cos(u), np.sin(v), np.cos(v) * np.sin(u)], 1)
        ring = np.stack([np.cos(u), np.zeros_like(u), np.sin(u)], 1) * R
        return c + ring + r * nrm, nrm

    def sdf(p):
        q = p - c
        xz = np.sqrt(q[:, 0] ** 2 + q[:, 2] ** 2) - R
        return np.sqrt(xz**2 + q[:, 1] ** 2) - r

    return Primitive(sample, sdf, 4 * math.pi**2 * R * r, color)


def _cylinder_x(center, half_len, r, color) -> Primitive:
    """A capped cylinder along x."""
    c = np.asarray(center, dtype=np.float64)
    side = 2 * math.pi * r * 2 * half_len
    cap = math.pi * r * r

    def sample(rng, n):
        which = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
        t = rng.uniform(0, 2 * math.pi, size=n)
        x = rng.uniform(-half_len, half_len, size=n)
        rad = np.sqrt(rng.uniform(0, 1, size=n)) * r
        p = np.stack([x, r * np.cos(t), r * np.sin(t)], 1)
        nrm = np.stack([np.zeros(n), np.cos(t), np.sin(t)], 1)
        for k, s in ((1, 1.0), (2, -1.0)):
            m = which == k
            p[m] = np.stack([np.full(m.sum(), s * half_len), rad[m] * np.cos(t[m]), rad[m] * np.sin(t[m])], 1)
            nrm[m] = np.array([s, 0.0, 0.0])
        return c + p, nrm

    def sdf(p):
        q = p - c
        d = np.stack([np.abs(q[:, 0]) - half_len, np.sqrt(q[:, 1] ** 2 + q[:, 2] ** 2) - r], 1)
        return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)

    return Primitive(sample, sdf, side + 2 * cap, color)


def scene_primitives(name: str) -> List[Primitive]:
    if name == "sphere":
        return [_sphere((0, 0, 0), 0.4, (0.85, 0.35, 0.25))]
    if name == "torus":
        return [_torus((0, 0, 0), 0.3, 0.12, (0.25, 0.55, 0.85))]
    if name == "box":
        return [_box((0, 0, 0), (0.35, 0.25, 0.3), (0.3, 0.75, 0.35))]
    if name == "composite":
        # a body, a head, a thin fin (2 cm thick) and a thin rod (2.4 cm across)
        return [
            _box((0, -0.1, 0), (0.25, 0.15, 0.2), (0.8, 0.7, 0.3)),
            _sphere((0, 0.17, 0.02), 0.15, (0.9, 0.4, 0.6)),
            _box((0, -0.1, -0.3), (0.01, 0.12, 0.12), (0.3, 0.4, 0.9)),
            _cylinder_x((0.4, -0.1, 0.05), 0.17, 0.012, (0.2, 0.2, 0.2)),
        ]
    raise ValueError(f"unknown scene {name!r}; choose from {SCENES}")


def sample_surface(name: str, n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points uniformly (by area) on the scene's union surface -> points, normals, rgb."""
    prims = scene_primitives(name)
    rng = np.random.default_rng(seed)
    pts, nrms, cols = [], [], []
    total = 0
    while total < n:
        areas = np.array([p.area for p in prims])
        want = rng.multinomial(int((n - total) * 1.3) + 16, areas / areas.sum())
        for i, (prim, k) in enumerate(zip(prims, want)):
            if k == 0:
                continue
            p, nr = prim.sample(rng, int(k))
            keep = np.ones(len(p), dtype=bool)
            for j, other in enumerate(prims):
                if j != i:
                    keep &= other.sdf(p) > 1e-9
            p, nr = p[keep], nr[keep]
            base = np.asarray(prim.color)
            wave = 0.15 * np.sin(7.0 * p + np.array([0.0, 2.0, 4.0]))
            pts.append(p)
            nrms.append(nr)
            cols.append(np.clip(base + wave, 0, 1))
            total += len(p)
    perm = rng.permutation(total)[:n]
    return (np.concatenate(pts)[perm], np.concatenate(nrms)[perm], np.concatenate(cols)[perm])


def _random_quaternions(rng, n) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.sign(q[:, :1] + 1e-12)


def _frame_quaternions(normals: np.ndarray, rng) -> np.ndarray:
    """Unit wxyz quaternions of rotations whose local z axis is ``normals`` (random spin about it)."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(helper, n)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(n, t1)
    ang = rng.uniform(0, 2 * math.pi, size=(len(n), 1))
    x = np.cos(ang) * t1 + np.sin(ang) * t2
    y = np.cross(n, x)
    R = np.stack([x, y, n], axis=2)  # columns = local axes
    w = np.sqrt(np.clip(1 + R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2], 1e-12, None)) / 2
    q = np.stack([w, (R[:, 2, 1] - R[:, 1, 2]) / (4 * w), (R[:, 0, 2] - R[:, 2, 0]) / (4 * w),
                  (R[:, 1, 0] - R[:, 0, 1]) / (4 * w)], 1)
    # fall back to a robust path where w is tiny (rotation by ~180 degrees)
    bad = w < 1e-3
    if bad.any():
        import torch as _t

        from ..geometry import matrix_to_quaternion

        q[bad] = np.stack([matrix_to_quaternion(_t.from_numpy(r)).numpy() for r in R[bad]])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


STYLES = ("surfel", "fuzzy")


def make_scene(
    name: str,
    n: int = 65_536,
    *,
    seed: int = 0,
    style: str = "surfel",
    scale_range: Tuple[float, float] = (0.005, 0.02),
    normal_scale_range: Tuple[float, float] = (0.002, 0.006),
    opacity_range: Tuple[float, float] = (0.5, 1.0),
    jitter: float = 0.002,
) -> Gaussians:
    """LGM-like Gaussians (batch 1) on the named scene's surface; centres jittered along the
    normal by N(0, ``jitter``), opacities uniform in ``opacity_range``.

    ``style="surfel"``: flat splats lying in the surface (as optimised splats tend to), the two
    tangent scales log-uniform in ``scale_range``, the normal scale in ``normal_scale_range``.
    ``style="fuzzy"``: random orientations, all three scales log-uniform in ``scale_range`` (a
    blurry shell whose visible surface sits about 0.04 outside the true one).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = np.random.default_rng(seed + 1000)
    p, nrm, rgb = sample_surface(name, n, seed)
    p = p + nrm * rng.normal(scale=jitter, size=(n, 1)) if jitter > 0 else p
    lo, hi = np.log(scale_range[0]), np.log(scale_range[1])
    scales = np.exp(rng.uniform(lo, hi, size=(n, 3)))
    if style == "surfel":
        scales[:, 2] = np.exp(rng.uniform(np.log(normal_scale_range[0]), np.log(normal_scale_range[1]), size=n))
        rot = _frame_quaternions(nrm, rng)
    else:
        rot = _random_quaternions(rng, n)
    opac = rng.uniform(*opacity_range, size=(n, 1))
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))[None]  # noqa: E731
    return Gaussians.from_rgb(t(p), t(scales), t(rot), t(opac), t(rgb))
