"""Small synthetic multi-view datasets (no data files, no mesh renderer): coloured Gaussian blobs
rendered by the project's splat renderer from orbit cameras, written in the dataset layout.

For tests, benchmarks and smoke runs of ``python -m lgm_core train``::

    from lgm_core.training.synthetic import make_synthetic_dataset
    make_synthetic_dataset("data/blobs", num_objects=8, ring=16, size=64)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import torch

from ..cameras import LGM_FOVY, LGM_RADIUS, Cameras, orbit_cameras
from ..gaussians import Gaussians
from ..runtime import default_device
from .layout import DatasetManifest, ObjectEntry, ViewInfo, write_object_views


def dataset_cameras(ring: int, extra_elevations: Sequence[float] = (), radius: float = LGM_RADIUS) -> tuple:
    """The view layout of the manifest's ``ring`` contract: views 0..ring-1 at elevation 0, azimuths
    0, 360/ring, ... ascending; then, per extra elevation (degrees, positive = above), another ring
    offset by half a step. Returns (c2w [V, 4, 4] OpenGL, [ViewInfo])."""
    elevations, azimuths = [0.0] * ring, [i * 360.0 / ring for i in range(ring)]
    for e in extra_elevations:
        elevations += [float(e)] * ring
        azimuths += [(i + 0.5) * 360.0 / ring for i in range(ring)]
    c2w = orbit_cameras(elevations, azimuths, radius)
    return c2w, [ViewInfo(e, a, radius) for e, a in zip(elevations, azimuths)]


def blob_object(seed: int, num_blobs: int = 6, per_blob: int = 48) -> Gaussians:
    """A random object: ``num_blobs`` clusters of small opaque Gaussians, each cluster one colour,
    inside [-0.6, 0.6]^3."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(num_blobs, 3, generator=g) - 0.5) * 1.0
    sizes = 0.12 + 0.15 * torch.rand(num_blobs, 1, generator=g)
    colours = torch.rand(num_blobs, 3, generator=g) * 0.8 + 0.1
    offsets = torch.randn(num_blobs, per_blob, 3, generator=g) * sizes[:, None, :] * 0.5
    pos = (centres[:, None, :] + offsets).reshape(-1, 3).clamp(-0.8, 0.8)
    n = pos.shape[0]
    rgb = colours[:, None, :].expand(num_blobs, per_blob, 3).reshape(-1, 3)
    scales = (sizes[:, None, :].expand(num_blobs, per_blob, 3).reshape(-1, 3) * 0.35)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4).clone()
    opac = torch.full((n, 1), 0.9)
    return Gaussians.from_rgb(pos[None], scales[None], quats[None], opac[None], rgb[None])


def make_synthetic_dataset(root: Union[str, os.PathLike], num_objects: int = 4, ring: int = 16,
                           size: int = 64, extra_elevations: Sequence[float] = (20.0,), seed: int = 0,
                           fovy: float = LGM_FOVY, device=None) -> DatasetManifest:
    """Render ``num_objects`` blob objects into ``root`` (layout of :mod:`.layout`, with a manifest
    whose ``ring`` is set) at ``size`` px, on ``device`` (default: CUDA if available); returns the
    manifest. About a second per object at 64 px on a CPU."""
    from ..render import render

    device = torch.device(device) if device else default_device()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c2w, views = dataset_cameras(ring, extra_elevations)
    cams = Cameras(c2w, fovy, size, size)
    manifest = DatasetManifest(size=size, fovy=fovy, ring=ring, notes="synthetic Gaussian blobs (lgm_core.training.synthetic)")
    for i in range(num_objects):
        out = render(blob_object(seed * 7919 + i).to(device), cams, out_device="cpu")
        rgba = torch.cat([out.image[0], out.alpha[0]], dim=-1)
        # straight alpha: the renderer composites on white, so rgb = (img - (1 - a)) / a
        a = out.alpha[0].clamp(min=1e-6)
        rgba[..., :3] = ((out.image[0] - (1.0 - out.alpha[0])) / a).clamp(0, 1)
        rgba[..., :3] = torch.where(out.alpha[0] > 1e-4, rgba[..., :3], torch.ones_like(rgba[..., :3]))
        obj_id = f"blob_{i:03d}"
        write_object_views(root, obj_id, rgba, c2w)
        manifest.objects.append(ObjectEntry(id=obj_id, num_views=len(views), source="synthetic", name=obj_id,
                                            license="CC0-1.0", views=views))
    manifest.write(root)
    return manifest


__all__ = ["make_synthetic_dataset", "dataset_cameras", "blob_object"]
