"""The types bridge: ComfyUI core's ``SPLAT`` and ``MESH`` <-> ``lgm_core``'s ``Gaussians`` and ``Mesh``.

Every conversion between the two worlds happens here, once (docs/comfyui.md, "Frame contract"):

- **Frame.** On SPLAT sockets Gaussians are in core's convention, the 3DGS frame (+y down, +z
  forward; core's viewer maps its y-up world to it by (x, y, z) -> (x, -y, -z)). ``lgm_core`` works in
  the LGM frame (+y up, front on +z). :func:`gaussians_to_splat` and :func:`splat_to_gaussians` turn
  positions, rotations and SH with the one frame conversion (``lgm_core.splat_io.frame``), so a splat
  from LGM looks upright and from the front in core's RenderSplat / SplatToMesh / viewer, and a splat
  from any core node (File3DToSplat, TransformSplat, MergeSplat ...) looks the same in the pack's nodes.
- **MESH.** Core's MESH holds glTF conventions: UV origin at the top-left of the texture, vertex
  colours in linear light; meshes are y-up (glTF), which is the LGM frame, so vertices pass as they are.
  ``lgm_core.Mesh`` has OBJ-style UVs (origin bottom-left) and display (sRGB) vertex colours.
  A textured mesh crosses without vertex colours (glTF multiplies COLOR_0 onto the texture).

Any object with the SPLAT attributes is accepted (ours, core's, another pack's); tensors may come
without the batch axis.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .comfy_api import Types, core_mesh_batch_helpers, io

__all__ = ["SPLAT", "SplatSocket", "SPLAT_FIELDS", "make_splat", "gaussians_to_splat", "splat_to_gaussians",
           "MESH", "mesh_to_core", "mesh_from_core", "mesh_batch_size"]

SPLAT_FIELDS = ("positions", "scales", "rotations", "opacities", "sh")
"""The tensor attributes every SPLAT has (``counts`` is optional)."""

_core_splat_class = getattr(Types, "SPLAT", None)
_core_splat_socket = getattr(io, "Splat", None) or getattr(io, "GaussianSplat", None)


class _SplatData:
    """Stand-in for core's SPLAT on ComfyUI versions without one (same attributes, same layouts).

    positions [B,N,3] world units (3DGS frame: +y down, +z forward); scales [B,N,3] linear; rotations
    [B,N,4] wxyz, unit norm; opacities [B,N,1] in [0,1]; sh [B,N,K,3] spherical-harmonic coefficients
    with DC = sh[..., 0, :]; counts [B] int64 (valid Gaussians per item, padding at the end) or None.
    """

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions = positions
        self.scales = scales
        self.rotations = rotations
        self.opacities = opacities
        self.sh = sh
        self.counts = counts

    def __repr__(self) -> str:
        return f"SPLAT(batch={self.positions.shape[0]}, n={self.positions.shape[1]}, sh={self.sh.shape[2]})"


SPLAT = _core_splat_class or _SplatData
"""The class whose instances travel on SPLAT sockets: core's when available, else ``_SplatData``."""

SplatSocket = _core_splat_socket or io.Custom("SPLAT")
"""The V3 socket type for SPLAT (core's ``io`` type when present, else a custom type named SPLAT)."""

MESH = Types.MESH
"""Core's MESH class. v0.3.75: ``MESH(vertices [B,N,3], faces [B,M,3])``; newer cores add uvs,
vertex_colors, texture, normals, vertex_counts/face_counts as constructor arguments."""


def make_splat(positions, scales, rotations, opacities, sh, counts=None):
    """A SPLAT object (core's class when present) from batched 3DGS-frame tensors (layouts: ``_SplatData``)."""
    values = dict(zip(SPLAT_FIELDS, (positions, scales, rotations, opacities, sh)), counts=counts)
    try:
        return SPLAT(**values)
    except TypeError:  # a core class with another constructor: fill the attributes directly
        obj = SPLAT.__new__(SPLAT)
        for k, v in values.items():
            setattr(obj, k, v)
        return obj


def gaussians_to_splat(g):
    """``lgm_core.Gaussians`` (LGM frame) -> SPLAT (3DGS frame). Legacy-checkpoint Gaussians, whose
    quaternions are intentionally not unit length, carry ``normalized_rotations=False`` as an extra
    attribute (the turn keeps their norm)."""
    from lgm_core.splat_io.frame import lgm_to_3dgs

    t = lgm_to_3dgs(g)
    splat = make_splat(t.positions, t.scales, t.rotations, t.opacities, t.sh, t.counts)
    if not g.normalized_rotations:
        splat.normalized_rotations = False
    return splat


def splat_to_gaussians(splat):
    """Any SPLAT-like object (3DGS frame; duck-typed by attributes) -> ``lgm_core.Gaussians`` (LGM frame).

    Tensors are accepted with or without the batch dimension ([N,3] becomes [1,N,3]); ``sh`` may be
    [B,N,3] (DC only). A ``Gaussians`` passes through unchanged (it is already in the LGM frame).
    """
    from lgm_core.gaussians import Gaussians
    from lgm_core.splat_io.frame import threedgs_to_lgm

    if isinstance(splat, Gaussians):
        return splat
    missing = [f for f in SPLAT_FIELDS if not torch.is_tensor(getattr(splat, f, None))]
    if missing:
        raise ValueError(f"expected a SPLAT (Gaussian splats) with tensor attributes {', '.join(SPLAT_FIELDS)}; "
                         f"got {type(splat).__name__} without {', '.join(missing)}")
    values = {f: getattr(splat, f) for f in SPLAT_FIELDS}
    if values["positions"].dim() == 2:
        values = {f: v[None] for f, v in values.items()}
    if values["sh"].dim() == 3:  # [B,N,3] colours-as-DC without the K axis
        values["sh"] = values["sh"][:, :, None, :]
    if values["opacities"].dim() == 2:  # [B,N] without the trailing axis
        values["opacities"] = values["opacities"][..., None]
    counts = getattr(splat, "counts", None)
    normalized = bool(getattr(splat, "normalized_rotations", True))
    return threedgs_to_lgm(Gaussians(counts=counts, normalized_rotations=normalized, **values))


# ---------------------------------------------------------------------------------------------------
# MESH
# ---------------------------------------------------------------------------------------------------

def _colours(colours: torch.Tensor | None, convert) -> torch.Tensor | None:
    """RGB(A) colours with ``convert`` applied to RGB (alpha is linear coverage either way)."""
    if colours is None:
        return None
    rgb = convert(colours[..., :3].float())
    return torch.cat([rgb, colours[..., 3:].float()], -1) if colours.shape[-1] == 4 else rgb


def _flip_v(uvs: torch.Tensor | None) -> torch.Tensor | None:
    """OBJ-style UVs (origin bottom-left) <-> glTF-style (origin top-left); its own inverse."""
    if uvs is None:
        return None
    return torch.stack([uvs[..., 0], 1.0 - uvs[..., 1]], -1)


def _accepted_kwargs(cls) -> set[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n in params if n != "self"}


def mesh_to_core(mesh):
    """``lgm_core.Mesh`` (one item, CPU, OBJ-style UVs, sRGB colours) -> core MESH (batch of 1,
    glTF conventions; see the module docstring). On cores without textured MESH fields the extras
    are attached as attributes (LGM Save Mesh reads them)."""
    textured = mesh.texture is not None and mesh.uvs is not None
    uvs = _flip_v(mesh.uvs)
    from lgm_core.mesh.texturing import srgb_to_linear

    colours = None if textured else _colours(mesh.vertex_colors, srgb_to_linear)
    texture = mesh.texture.float()[None] if textured else None
    pack, _ = core_mesh_batch_helpers()
    if pack is not None:
        return pack([mesh.vertices.float()], [mesh.faces.long()], colors=None if colours is None else [colours],
                    uvs=None if uvs is None else [uvs], texture=texture,
                    normals=None if mesh.normals is None else [mesh.normals.float()])
    extras = {"uvs": None if uvs is None else uvs[None], "vertex_colors": None if colours is None else colours[None],
              "texture": texture, "normals": None if mesh.normals is None else mesh.normals[None]}
    accepted = _accepted_kwargs(MESH)
    kwargs = {k: v for k, v in extras.items() if k in accepted and v is not None}
    core = MESH(mesh.vertices.float()[None], mesh.faces.long()[None], **kwargs)
    for k, v in extras.items():
        if k not in kwargs and v is not None:
            setattr(core, k, v)
    return core


def mesh_batch_size(mesh) -> int:
    """Number of items in a core MESH (1 for unbatched tensors)."""
    vertices = getattr(mesh, "vertices", None)
    return vertices.shape[0] if torch.is_tensor(vertices) and vertices.dim() == 3 else 1


def _item_fields(mesh, i: int) -> dict[str, Any]:
    """Batch item ``i`` of a core MESH as unbatched tensors (padding removed)."""
    _, get_item = core_mesh_batch_helpers()
    vertices = getattr(mesh, "vertices", None)
    faces = getattr(mesh, "faces", None)
    if not (torch.is_tensor(vertices) and torch.is_tensor(faces)):
        raise ValueError(f"expected a MESH with vertices and faces tensors, got {type(mesh).__name__}")
    if vertices.dim() == 2:  # unbatched (another pack's object)
        fields = {k: getattr(mesh, k, None) for k in ("uvs", "vertex_colors", "normals", "texture")}
        if torch.is_tensor(fields["texture"]) and fields["texture"].dim() == 4:
            fields["texture"] = fields["texture"][0]
        return dict(vertices=vertices, faces=faces, **fields)
    if get_item is not None and isinstance(mesh, MESH):
        v, f, colours, uvs, normals = get_item(mesh, i)
    else:
        counts_v, counts_f = getattr(mesh, "vertex_counts", None), getattr(mesh, "face_counts", None)
        nv = int(counts_v[i]) if torch.is_tensor(counts_v) else vertices.shape[1]
        nf = int(counts_f[i]) if torch.is_tensor(counts_f) else faces.shape[1]
        per_vertex = {k: getattr(mesh, k, None) for k in ("vertex_colors", "uvs", "normals")}
        per_vertex = {k: (t[i, :nv] if torch.is_tensor(t) and t.dim() == 3 else None) for k, t in per_vertex.items()}
        v, f = vertices[i, :nv], faces[i, :nf]
        colours, uvs, normals = per_vertex["vertex_colors"], per_vertex["uvs"], per_vertex["normals"]
    texture = getattr(mesh, "texture", None)
    texture = texture[min(i, texture.shape[0] - 1)] if torch.is_tensor(texture) and texture.dim() == 4 else None
    return dict(vertices=v, faces=f, uvs=uvs, vertex_colors=colours, normals=normals, texture=texture)


def mesh_from_core(mesh, i: int = 0):
    """Batch item ``i`` of a core MESH (ours or any node's: SplatToMesh, TRELLIS, Hunyuan3D ...) ->
    ``lgm_core.Mesh`` (OBJ-style UVs, sRGB colours; per-vertex fields of the wrong length dropped)."""
    from lgm_core.mesh import Mesh
    from lgm_core.mesh.texturing import linear_to_srgb

    f = _item_fields(mesh, i)
    n = f["vertices"].shape[0]
    for k in ("uvs", "vertex_colors", "normals"):
        if f[k] is not None and f[k].shape[0] != n:
            f[k] = None
    if f["texture"] is not None and f["uvs"] is None:
        f["texture"] = None
    cpu = lambda t: None if t is None else t.detach().float().cpu()  # noqa: E731
    return Mesh(vertices=cpu(f["vertices"]), faces=f["faces"].detach().long().cpu(), uvs=cpu(_flip_v(f["uvs"])),
                vertex_colors=cpu(_colours(f["vertex_colors"], linear_to_srgb)), texture=cpu(f["texture"]),
                normals=cpu(f["normals"]))

