"""The :class:`Mesh` container (a plain dataclass; files in :mod:`lgm_core.mesh.files`).

Fields line up with ComfyUI core's ``MESH`` type, without the batch axis:

==================  ============  ==========================================================
field               shape         meaning
==================  ============  ==========================================================
``vertices``        ``[V, 3]``    float32 positions, same frame as the Gaussians they came from
``faces``           ``[F, 3]``    int64 vertex indices, counter-clockwise seen from outside
``uvs``             ``[V, 2]``    float32 texture coordinates in [0, 1], (0, 0) = bottom-left
                                  of the texture image (OBJ/OpenGL convention), or None
``texture``         ``[H, W, 3]`` float32 RGB in [0, 1], row 0 = top of the image, or None
``vertex_colors``   ``[V, 3|4]``  float32 display (sRGB-encoded) RGB(A) in [0, 1], or None
``normals``         ``[V, 3]``    float32 unit vertex normals pointing outwards, or None
==================  ============  ==========================================================

All tensors live on the CPU. Files are written atomically (a temporary file in the same
folder renamed over the target); a textured OBJ is published as a set (see :meth:`Mesh.export`).
A mesh with NaN/Inf values is refused by :meth:`Mesh.export` (docs/robustness.md). The LGM frame (+y up, front on +z) is already glTF's, so
.glb files need no axis change; :meth:`Mesh.flip_yz` turns a y-down (3DGS/COLMAP) mesh upright.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]


def _as_tensor(x, dtype) -> Optional[torch.Tensor]:
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x).detach().to("cpu", dtype).contiguous()


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals [V, 3] (unit length; zero-area neighbourhoods give +z)."""
    v = vertices.float()
    f = faces.long()
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    fn = torch.cross(b - a, c - a, dim=-1)  # length = 2 * area
    n = torch.zeros_like(v)
    for k in range(3):
        n.index_add_(0, f[:, k], fn)
    length = n.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], dtype=v.dtype, device=v.device).expand_as(n)
    return torch.where(length > 1e-20, n / length.clamp_min(1e-20), fallback)


@dataclass
class Mesh:
    """A triangle mesh with optional UV texture and vertex colours. See the module docstring."""

    vertices: torch.Tensor
    faces: torch.Tensor
    uvs: Optional[torch.Tensor] = None
    texture: Optional[torch.Tensor] = None
    vertex_colors: Optional[torch.Tensor] = None
    normals: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        self.vertices = _as_tensor(self.vertices, torch.float32)
        self.faces = _as_tensor(self.faces, torch.int64)
        self.uvs = _as_tensor(self.uvs, torch.float32)
        self.texture = _as_tensor(self.texture, torch.float32)
        self.vertex_colors = _as_tensor(self.vertex_colors, torch.float32)
        self.normals = _as_tensor(self.normals, torch.float32)
        v = self.vertices
        if v.dim() != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {list(v.shape)}")
        if self.faces.dim() != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {list(self.faces.shape)}")
        n = v.shape[0]
        if self.faces.numel() and (int(self.faces.min()) < 0 or int(self.faces.max()) >= n):
            raise ValueError(f"faces index vertices outside [0, {n})")
        for name, width in (("uvs", (2,)), ("vertex_colors", (3, 4)), ("normals", (3,))):
            t = getattr(self, name)
            if t is not None and (t.dim() != 2 or t.shape[0] != n or t.shape[1] not in width):
                raise ValueError(f"{name} must be [V={n}, {'|'.join(map(str, width))}], got {list(t.shape)}")
        if self.texture is not None:
            if self.texture.dim() != 3 or self.texture.shape[2] != 3:
                raise ValueError(f"texture must be [H, W, 3], got {list(self.texture.shape)}")
            if self.uvs is None:
                raise ValueError("a texture needs uvs")

    # ------------------------------------------------------------------ properties
    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def __repr__(self) -> str:
        extra = []
        if self.texture is not None:
            extra.append(f"texture={self.texture.shape[1]}x{self.texture.shape[0]}")
        if self.vertex_colors is not None:
            extra.append("vertex_colors")
        return f"Mesh(vertices={self.num_vertices}, faces={self.num_faces}{', ' if extra else ''}{', '.join(extra)})"

    def face_areas(self) -> torch.Tensor:
        v, f = self.vertices, self.faces
        return 0.5 * torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1).norm(dim=-1)

    def signed_volume(self) -> float:
        """Signed enclosed volume (positive when faces wind counter-clockwise seen from outside)."""
        v, f = self.vertices.double(), self.faces
        return float((v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=-1)).sum() / 6.0)

    def compute_normals(self) -> "Mesh":
        """Return a copy with area-weighted vertex normals."""
        return dataclasses.replace(self, normals=vertex_normals(self.vertices, self.faces))

    def flip_yz(self) -> "Mesh":
        """Rotate 180 degrees about x: (x, y, z) -> (x, -y, -z). Turns a y-down (3DGS/COLMAP
        convention) mesh into glTF's y-up frame and back; winding and outward normals are kept."""
        s = torch.tensor([1.0, -1.0, -1.0])
        return dataclasses.replace(
            self, vertices=self.vertices * s, normals=None if self.normals is None else self.normals * s)

    # ------------------------------------------------------------------ files (lgm_core.mesh.files)
    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (texture as a non-metallic PBR base-colour image, else vertex colours)."""
        from .files import to_trimesh

        return to_trimesh(self)

    @classmethod
    def from_trimesh(cls, tm) -> "Mesh":
        """From a ``trimesh.Trimesh`` (or a Scene, whose geometry is concatenated)."""
        from .files import from_trimesh

        return from_trimesh(tm, cls)

    def export(self, path: PathLike, *, flip_yz: bool = False, unlit: bool = False,
               metadata: Optional[dict] = None) -> Path:
        """Write the mesh; the format follows the extension:

        - ``.glb``: binary glTF, an explicit non-metallic material (``unlit``: ``KHR_materials_unlit``,
          shown flat), an embedded PNG base-colour texture or else vertex colours as linear ``COLOR_0``;
        - ``.obj``: Wavefront OBJ, plus ``<stem>.<hash>.mtl`` and ``<stem>.<hash>.png`` when textured
          (vertex colours go into ``v x y z r g b`` lines otherwise), published as one set; the
          companions' names carry a hash of the set's content, so no file this call did not create
          is overwritten, and the companions of earlier exports to this .obj are deleted;
        - ``.ply``: binary PLY, vertices welded (UV-seam copies merged), normals, vertex colours
          (a texture is sampled into them).

        ``flip_yz`` applies :meth:`flip_yz` first; ``metadata`` (JSON, e.g. a ComfyUI workflow) goes
        into a GLB's ``asset.extras``. Every file is written atomically. Raises
        ``ValueError`` for a mesh with NaN/Inf values (nothing is written). See :mod:`lgm_core.mesh.files`.
        """
        from .files import export_mesh

        return export_mesh(self, path, flip_yz=flip_yz, unlit=unlit, metadata=metadata)

    def check_finite(self, name: PathLike = "mesh") -> "Mesh":
        """Raise ``ValueError`` naming ``name`` when any field holds NaN/Inf (the mesh otherwise)."""
        bad = [f"{k} {int((~torch.isfinite(t)).any(-1).sum()) if t.dim() == 2 else int((~torch.isfinite(t)).sum())}"
               for k in ("vertices", "uvs", "vertex_colors", "normals", "texture")
               if (t := getattr(self, k)) is not None and not bool(torch.isfinite(t).all())]
        if bad:
            raise ValueError(f"{name}: the mesh has NaN/Inf values ({', '.join(bad)}); refusing to write it")
        return self

    @classmethod
    def load(cls, path: PathLike) -> "Mesh":
        """Read a .glb/.gltf/.obj/.ply file through trimesh."""
        from .files import load_mesh

        return load_mesh(path, cls)

    def sample_texture(self, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup at ``uv`` [N, 2] (OBJ convention) -> RGB [N, 3]."""
        if self.texture is None:
            raise ValueError("the mesh has no texture")
        from .texturing import sample_texture

        return sample_texture(self.texture, uv)
