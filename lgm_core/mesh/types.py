"""The :class:`Mesh` container and its file formats (.glb, .obj + .mtl + .png, .ply).

Fields line up with ComfyUI core's ``MESH`` type, without the batch axis:

==================  ============  ==========================================================
field               shape         meaning
==================  ============  ==========================================================
``vertices``        ``[V, 3]``    float32 positions, same frame as the Gaussians they came from
``faces``           ``[F, 3]``    int64 vertex indices, counter-clockwise seen from outside
``uvs``             ``[V, 2]``    float32 texture coordinates in [0, 1], (0, 0) = bottom-left
                                  of the texture image (OBJ/OpenGL convention), or None
``texture``         ``[H, W, 3]`` float32 RGB in [0, 1], row 0 = top of the image, or None
``vertex_colors``   ``[V, 3|4]``  float32 RGB(A) in [0, 1], or None
``normals``         ``[V, 3]``    float32 unit vertex normals pointing outwards, or None
==================  ============  ==========================================================

All tensors live on the CPU. Files are written atomically (a temporary file in the same
folder renamed over the target); a textured OBJ is published as a set (see :meth:`Mesh.export`).
A mesh with NaN/Inf values is refused by :meth:`Mesh.export` (docs/robustness.md). The LGM frame (+y up, front on +z) is already glTF's, so
.glb files need no axis change; :meth:`Mesh.flip_yz` turns a y-down (3DGS/COLMAP) mesh upright.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..fileio import atomic_paths, atomic_write_bytes

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

    # ------------------------------------------------------------------ trimesh
    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (texture as a PBR base-colour image, else vertex colours)."""
        import trimesh
        from PIL import Image

        kwargs = {}
        if self.normals is not None:
            kwargs["vertex_normals"] = self.normals.numpy()
        tm = trimesh.Trimesh(self.vertices.numpy(), self.faces.numpy(), process=False, **kwargs)
        if self.texture is not None:
            image = Image.fromarray(_to_uint8(self.texture))
            material = trimesh.visual.material.PBRMaterial(
                name="material0", baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0)
            tm.visual = trimesh.visual.TextureVisuals(uv=self.uvs.numpy(), material=material)
        elif self.vertex_colors is not None:
            tm.visual = trimesh.visual.ColorVisuals(tm, vertex_colors=_to_uint8(self.vertex_colors))
        return tm

    @classmethod
    def from_trimesh(cls, tm) -> "Mesh":
        """From a ``trimesh.Trimesh`` (or a Scene, whose geometry is concatenated)."""
        import trimesh

        if isinstance(tm, trimesh.Scene):
            geoms = [g for g in tm.dump() if isinstance(g, trimesh.Trimesh)] if hasattr(tm, "dump") else []
            if not geoms:
                raise ValueError("the scene holds no triangle mesh")
            tm = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
        uvs = texture = colors = None
        visual = tm.visual
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            uvs = np.asarray(visual.uv, dtype=np.float32)
            image = None
            mat = visual.material
            for attr in ("baseColorTexture", "image"):
                image = getattr(mat, attr, None)
                if image is not None:
                    break
            if image is not None:
                texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        elif getattr(visual, "kind", None) == "vertex":
            colors = np.asarray(visual.vertex_colors, dtype=np.float32) / 255.0
            if colors.shape[1] == 4 and np.all(colors[:, 3] >= 1.0):
                colors = colors[:, :3]
        if texture is None and uvs is not None and colors is None:
            uvs = uvs  # keep UVs even without an image
        normals = None
        if "vertex_normals" in tm._cache.cache:
            normals = np.asarray(tm.vertex_normals, dtype=np.float32)
        return cls(np.asarray(tm.vertices, dtype=np.float32), np.asarray(tm.faces, dtype=np.int64),
                   uvs=uvs, texture=texture, vertex_colors=colors, normals=normals)

    # ------------------------------------------------------------------ files
    def export(self, path: PathLike, *, flip_yz: bool = False) -> Path:
        """Write the mesh; the format follows the extension:

        - ``.glb``: binary glTF with an embedded PNG base-colour texture (or vertex colours);
        - ``.obj``: Wavefront OBJ, plus ``<stem>.mtl`` and ``<stem>.<hash>.png`` when textured
          (vertex colours go into ``v x y z r g b`` lines otherwise). The three files are one set:
          all are written completely before any is renamed into place (png, mtl, then the obj,
          under a folder lock against concurrent writers); the texture name and the material name
          carry a hash of the set's content, so an .obj never silently pairs with another
          export's texture, and the texture the new set replaces is deleted;
        - ``.ply``: binary PLY with vertex colours (a texture is not stored; bake vertex colours).

        ``flip_yz`` applies :meth:`flip_yz` first. Every file is written atomically. Raises
        ``ValueError`` for a mesh with NaN/Inf values (nothing is written).
        """
        path = Path(path)
        self.check_finite(path)
        mesh = self.flip_yz() if flip_yz else self
        if mesh.normals is None:
            mesh = mesh.compute_normals()
        ext = path.suffix.lower()
        if ext == ".glb":
            data = mesh.to_trimesh().export(file_type="glb")
            atomic_write_bytes(path, data)
        elif ext == ".obj":
            mesh._write_obj(path)
        elif ext == ".ply":
            m = mesh
            if m.vertex_colors is None and m.texture is not None:
                m = dataclasses.replace(m, vertex_colors=m.sample_texture(m.uvs))
            tm = dataclasses.replace(m, texture=None, uvs=None).to_trimesh()
            atomic_write_bytes(path, tm.export(file_type="ply", encoding="binary"))
        else:
            raise ValueError(f"unsupported mesh format {ext!r}: use .glb, .obj or .ply")
        return path

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
        import trimesh

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such mesh file: {path}")
        return cls.from_trimesh(trimesh.load(str(path), process=False))

    def sample_texture(self, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup at ``uv`` [N, 2] (OBJ convention) -> RGB [N, 3]."""
        if self.texture is None:
            raise ValueError("the mesh has no texture")
        tex = self.texture.permute(2, 0, 1)[None]
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]
        out = torch.nn.functional.grid_sample(tex, grid.float(), mode="bilinear", padding_mode="border",
                                              align_corners=False)
        return out[0, :, 0].T.contiguous()

    def _write_obj(self, path: Path) -> None:
        from PIL import Image

        stem = path.stem
        textured = self.texture is not None
        png = b""
        if textured:
            buf = io.BytesIO()
            Image.fromarray(_to_uint8(self.texture)).save(buf, format="PNG")
            png = buf.getvalue()
        lines = []
        v = self.vertices.numpy()
        if self.vertex_colors is not None and not textured:
            c = self.vertex_colors[:, :3].numpy()
            lines += [f"v {a:.6f} {b:.6f} {d:.6f} {r:.4f} {g:.4f} {bl:.4f}" for (a, b, d), (r, g, bl) in zip(v, c)]
        else:
            lines += [f"v {a:.6f} {b:.6f} {d:.6f}" for a, b, d in v]
        if textured:
            lines += [f"vt {a:.6f} {b:.6f}" for a, b in self.uvs.numpy()]
        lines += [f"vn {a:.5f} {b:.5f} {d:.5f}" for a, b, d in self.normals.numpy()]
        f = self.faces.numpy() + 1
        if textured:
            lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in f]
        else:
            lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in f]
        body = "\n".join(lines) + "\n"
        if not textured:
            atomic_write_bytes(path, ("# written by lgm_core\n" + body).encode())
            return
        import hashlib

        tag = hashlib.sha256(body.encode() + png).hexdigest()[:12]
        material, texture_name = f"material_{tag}", f"{stem}.{tag}.png"
        obj = f"# written by lgm_core\nmtllib {stem}.mtl\nusemtl {material}\n" + body
        mtl = (f"# written by lgm_core\nnewmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
               f"map_Kd {texture_name}\n")
        targets = [path.with_name(texture_name), path.with_suffix(".mtl"), path]
        superseded = re.compile(re.escape(stem) + r"\.[0-9a-f]{12}\.png")

        def drop_superseded():  # runs under the folder lock, after the new set is in place
            for old in path.parent.glob(f"{glob.escape(stem)}.*.png"):
                if superseded.fullmatch(old.name) and old.name != texture_name:
                    old.unlink(missing_ok=True)

        with atomic_paths(targets, after_publish=drop_superseded) as (tmp_png, tmp_mtl, tmp_obj):
            tmp_png.write_bytes(png)
            tmp_mtl.write_bytes(mtl.encode())
            tmp_obj.write_bytes(obj.encode())


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
