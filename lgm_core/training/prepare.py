"""Mesh files -> a multi-view training dataset in the layout of :mod:`lgm_core.training.layout`.

Each mesh (OBJ+MTL with image textures, GLB/GLTF, PLY/OFF/STL with vertex or face colours) is loaded
with trimesh into a :class:`RenderMesh` triangle soup, put into the LGM frame (+y up, front = +z,
centred on its bounding box and scaled so its bounding sphere has radius ``object_radius``), and
rendered with the project's own z-buffer rasterizer (:mod:`lgm_core.mesh.raster`, CPU or CUDA) from

* a **ring** of ``ring`` cameras at elevation 0 with equal azimuth steps from a random start (so four
  of them, 90 degrees apart, are LGM-style input views), then
* ``views - ring`` cameras at random azimuths and elevations drawn from ``elevations`` (a list of
  fixed values to cycle through, or a ``(low, high)`` range with ``random_elevation=True``),

all at ``radius`` with vertical field of view ``fovy`` (LGM: 1.5 and 49.1 degrees). Shading is
two-sided Lambert with two lights fixed in the object frame (view-independent appearance, as
Gaussians with degree-0 SH can represent it) on top of the texture or vertex colour; edges are
anti-aliased by ``supersample``-fold supersampling. Images are RGBA PNG with straight alpha; poses are
written in the stored (Blender world, OpenCV camera) convention.

A mesh that cannot be loaded or rendered is skipped with a one-line reason; objects already complete
in the output folder are kept (re-running continues an interrupted job). Every object folder is
written to a temporary name and renamed when complete, and the manifest is rewritten atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..cameras import LGM_FOVY, LGM_RADIUS, Cameras, orbit_cameras
from ..image_io import write_image
from ..runtime import default_device
from . import layout

log = logging.getLogger("lgm_core.training.prepare")

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
LIGHTS = ((0.35, 0.8, 0.5, 0.45), (-0.6, 0.25, -0.45, 0.2))
"""(x, y, z, strength) of the two directional lights in the object frame; ambient is 1 - sum."""
MAX_TEXTURE_SIZE = 1024


class MeshLoadError(ValueError):
    """A mesh file that cannot be turned into a renderable object (the message says why)."""


@dataclass
class RenderMesh:
    """A renderable triangle soup in world units.

    ``corners``: [F, 3, 3] float32 vertex positions of each triangle. ``colors``: [F, 3, 3] float32
    display RGB in [0, 1] of each corner (the material's base colour for textured faces).
    ``uvs``: [F, 3, 2] texture coordinates (OBJ/OpenGL convention: v = 0 at the image bottom) or
    None. ``face_texture``: [F] int64 index into ``textures`` (-1 = untextured). ``textures``: list of
    [H, W, 3] float32 images in [0, 1], row 0 = top.
    """

    corners: torch.Tensor
    colors: torch.Tensor
    uvs: Optional[torch.Tensor] = None
    face_texture: Optional[torch.Tensor] = None
    textures: List[torch.Tensor] = field(default_factory=list)

    @property
    def num_faces(self) -> int:
        return int(self.corners.shape[0])

    def to(self, device) -> "RenderMesh":
        return RenderMesh(self.corners.to(device), self.colors.to(device),
                          None if self.uvs is None else self.uvs.to(device),
                          None if self.face_texture is None else self.face_texture.to(device),
                          [t.to(device) for t in self.textures])


# ----------------------------------------------------------------------------------- loading
def _image_to_tensor(image) -> Optional[torch.Tensor]:
    if image is None:
        return None
    from PIL import Image

    img = image.convert("RGB")
    if max(img.size) > MAX_TEXTURE_SIZE:
        img.thumbnail((MAX_TEXTURE_SIZE, MAX_TEXTURE_SIZE), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


def _material_color_and_image(material) -> Tuple[np.ndarray, object]:
    """(base colour RGB in [0, 1], PIL image or None) of a trimesh material (Simple or PBR)."""
    color = np.ones(3)
    image = None
    if material is None:
        return color, None
    if hasattr(material, "baseColorFactor") or hasattr(material, "baseColorTexture"):  # PBRMaterial
        factor = getattr(material, "baseColorFactor", None)
        if factor is not None:
            f = np.asarray(factor, dtype=np.float64)[:3]
            color = f / 255.0 if f.max() > 1.0 else f
        image = getattr(material, "baseColorTexture", None)
    else:  # SimpleMaterial (OBJ/MTL)
        diffuse = getattr(material, "diffuse", None)
        if diffuse is not None:
            color = np.asarray(diffuse, dtype=np.float64)[:3] / 255.0
        image = getattr(material, "image", None)
    return np.clip(color, 0.0, 1.0), image


def _geometry_part(mesh, textures: List[torch.Tensor], texture_ids: Dict[int, int]) -> dict:
    faces = np.asarray(mesh.faces, dtype=np.int64)
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    nf = len(faces)
    corners = verts[faces]
    colors = np.full((nf, 3, 3), 0.7)
    uvs = np.zeros((nf, 3, 2))
    tex = np.full(nf, -1, dtype=np.int64)
    visual = mesh.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture" or hasattr(visual, "material"):
        base, image = _material_color_and_image(getattr(visual, "material", None))
        colors[:] = base
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None and len(uv) == len(verts):
            key = id(image)
            if key not in texture_ids:
                t = _image_to_tensor(image)
                texture_ids[key] = len(textures)
                textures.append(t)
            tex[:] = texture_ids[key]
            uvs = np.asarray(uv, dtype=np.float64)[faces]
    elif kind == "vertex":
        vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        colors = vc[faces]
    elif kind == "face":
        fc = np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
        colors = np.repeat(fc[:, None], 3, axis=1)
    return {"corners": corners, "colors": colors, "uvs": uvs, "tex": tex}


def load_render_mesh(path: Union[str, os.PathLike], rotation: Optional[Sequence[float]] = None) -> RenderMesh:
    """Load a mesh file (any format trimesh reads; scenes are flattened with their transforms) as a
    :class:`RenderMesh` in the file's own units and axes. ``rotation`` is an optional row-major 3x3
    matrix applied to the positions (e.g. a catalogue's model rotation). Raises
    :class:`MeshLoadError` with a one-line reason."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(f"{path}: no such file")
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as exc:  # trimesh raises many types for broken files
        raise MeshLoadError(f"{path.name}: cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    meshes = [g for g in scene.dump(concatenate=False) if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not meshes:
        raise MeshLoadError(f"{path.name}: contains no triangles")
    textures: List[torch.Tensor] = []
    ids: Dict[int, int] = {}
    parts = [_geometry_part(m, textures, ids) for m in meshes]
    corners = np.concatenate([p["corners"] for p in parts])
    if not np.isfinite(corners).all():
        raise MeshLoadError(f"{path.name}: vertex positions contain NaN or Inf")
    if rotation is not None:
        R = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        corners = corners @ R.T
    mesh = RenderMesh(
        corners=torch.from_numpy(corners.astype(np.float32)),
        colors=torch.from_numpy(np.concatenate([p["colors"] for p in parts]).astype(np.float32)),
        uvs=torch.from_numpy(np.concatenate([p["uvs"] for p in parts]).astype(np.float32)),
        face_texture=torch.from_numpy(np.concatenate([p["tex"] for p in parts])),
        textures=textures,
    )
    if not textures:
        mesh.uvs, mesh.face_texture = None, None
    return mesh


def normalize_mesh(mesh: RenderMesh, object_radius: float = 0.55) -> RenderMesh:
    """Centre on the bounding box and scale so the bounding sphere (about that centre) has radius
    ``object_radius``. Raises :class:`MeshLoadError` for a degenerate (zero-size) mesh."""
    pts = mesh.corners.reshape(-1, 3).double()
    lo, hi = pts.amin(0), pts.amax(0)
    centre = (lo + hi) / 2
    r = float((pts - centre).norm(dim=-1).amax())
    if not math.isfinite(r) or r < 1e-9:
        raise MeshLoadError("mesh has zero size")
    corners = ((mesh.corners.double() - centre) * (object_radius / r)).float()
    return RenderMesh(corners, mesh.colors, mesh.uvs, mesh.face_texture, mesh.textures)


# --------------------------------------------------------------------------------- rendering
def _shade(normals: torch.Tensor) -> torch.Tensor:
    """Two-sided Lambert factor [N] for unit normals [N, 3] already flipped towards the camera."""
    total = torch.zeros(normals.shape[0], device=normals.device)
    ambient = 1.0 - sum(light[3] for light in LIGHTS)
    for x, y, z, strength in LIGHTS:
        d = torch.tensor([x, y, z], device=normals.device)
        d = d / d.norm()
        total = total + strength * (normals @ d).clamp_min(0)
    return total + ambient


def render_mesh_views(
    mesh: RenderMesh,
    cameras: Cameras,
    *,
    supersample: int = 2,
    shading: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Render ``mesh`` from every camera: (rgb [V, H, W, 3] straight colour, alpha [V, H, W]), float32
    in [0, 1] on the mesh's device. Pixels with alpha 0 have rgb 0."""
    from ..mesh.raster import project, rasterize

    dev = mesh.corners.device
    s = max(int(supersample), 1)
    H, W = cameras.height * s, cameras.width * s
    cams = Cameras(cameras.c2w.to(dev), cameras.fovy, W, H, cameras.near)
    verts = mesh.corners.reshape(-1, 3)
    faces = torch.arange(verts.shape[0], device=dev).view(-1, 3)
    e1 = mesh.corners[:, 1] - mesh.corners[:, 0]
    e2 = mesh.corners[:, 2] - mesh.corners[:, 0]
    fn = torch.cross(e1, e2, dim=-1)
    fn = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    centroids = mesh.corners.mean(1)
    tex_nchw = [t.permute(2, 0, 1)[None] for t in mesh.textures]
    rgbs, alphas = [], []
    for i in range(len(cams)):
        xy, depth = project(verts, cams, i)
        frag = rasterize(xy, depth, faces, (H, W))
        flat_face = frag.face.reshape(-1)
        hit = (flat_face >= 0).nonzero().squeeze(1)
        rgb = torch.zeros(H * W, 3, device=dev)
        if hit.numel():
            fi = flat_face[hit]
            tri = faces[fi]
            lam = frag.bary.reshape(-1, 3)[hit] / depth[tri].clamp_min(1e-12)  # perspective-correct
            lam = lam / lam.sum(-1, keepdim=True).clamp_min(1e-20)
            color = (mesh.colors[fi] * lam[..., None]).sum(1)
            if mesh.face_texture is not None:
                tid = mesh.face_texture[fi]
                for t, tex in enumerate(tex_nchw):
                    sel = (tid == t).nonzero().squeeze(1)
                    if not sel.numel():
                        continue
                    uv = (mesh.uvs[fi[sel]] * lam[sel, :, None]).sum(1)
                    uv = uv - torch.floor(uv)  # repeat (tiling textures)
                    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)[None, None]
                    texel = torch.nn.functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                                                            align_corners=False)[0, :, 0].T
                    color[sel] = color[sel] * texel
            if shading:
                cam_pos = cams.c2w[i, :3, 3].to(dev)
                n = fn[fi]
                toward = ((cam_pos - centroids[fi]) * n).sum(-1, keepdim=True) < 0
                n = torch.where(toward, -n, n)
                color = color * _shade(n)[:, None]
            rgb[hit] = color.clamp(0, 1)
        a = (flat_face >= 0).float().view(1, 1, H, W)
        c = rgb.view(H, W, 3).permute(2, 0, 1)[None]
        if s > 1:  # box filter; colour stays straight (un-premultiplied)
            a_s = torch.nn.functional.avg_pool2d(a, s)
            c = torch.nn.functional.avg_pool2d(c * a, s) / a_s.clamp_min(1e-8)
            a = a_s
        rgbs.append(c[0].permute(1, 2, 0) * (a[0, 0, ..., None] > 0))
        alphas.append(a[0, 0])
    return torch.stack(rgbs).clamp(0, 1), torch.stack(alphas)


# ------------------------------------------------------------------------------- view choice
@dataclass
class ViewPlan:
    """How to place the cameras of every object (see the module docstring)."""

    views: int = 32
    ring: int = 16
    elevations: Sequence[float] = (-20.0, 45.0)
    random_elevation: bool = True
    radius: float = LGM_RADIUS
    fovy: float = LGM_FOVY

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"--views must be at least 1, got {self.views}")
        if self.ring < 0 or self.ring > self.views or self.ring % 4:
            raise ValueError(f"--ring must be a multiple of 4 between 0 and --views ({self.views}), got {self.ring}")
        if not self.elevations:
            raise ValueError("--elevations needs at least one value")
        if any(not -90.0 <= float(e) <= 90.0 for e in self.elevations):
            raise ValueError(f"elevations must lie in [-90, 90] degrees, got {list(self.elevations)}")
        if self.random_elevation and len(self.elevations) != 2:
            raise ValueError("a random elevation range needs exactly two values (low, high)")

    def angles(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """(elevations, azimuths) in degrees for one object, ring first."""
        start = rng.uniform(0.0, 360.0)
        ring_az = (start + np.arange(self.ring) * (360.0 / max(self.ring, 1))) % 360.0
        n = self.views - self.ring
        if self.random_elevation:
            lo, hi = sorted(float(e) for e in self.elevations)
            # uniform on the sphere between the two elevations (not uniform in angle)
            s = rng.uniform(math.sin(math.radians(lo)), math.sin(math.radians(hi)), n)
            el = np.degrees(np.arcsin(s))
        else:
            el = np.resize(np.asarray(self.elevations, dtype=np.float64), n)
        az = rng.uniform(0.0, 360.0, n)
        return np.concatenate([np.zeros(self.ring), el]), np.concatenate([ring_az, az])


# ------------------------------------------------------------------------------ the dataset
@dataclass
class SourceMesh:
    """A mesh to put into the dataset, with what the manifest should say about it."""

    path: Path
    id: str = ""
    name: str = ""
    license: str = ""
    author: str = ""
    split: str = ""
    rotation: Optional[Sequence[float]] = None


@dataclass
class PrepareReport:
    written: int = 0
    kept: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _object_seed(seed: int, object_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{object_id}".encode()).digest()[:8], "little")


def unique_ids(sources: Sequence[SourceMesh]) -> List[SourceMesh]:
    """Fill in missing ids from file stems (safe characters only) and make every id unique."""
    seen: Dict[str, int] = {}
    out = []
    for s in sources:
        base = s.id or Path(s.path).stem
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base).strip("._") or "object"
        oid = base
        while oid in seen:
            seen[base] += 1
            oid = f"{base}_{seen[base]}"
        seen.setdefault(oid, 0)
        out.append(SourceMesh(Path(s.path), oid, s.name, s.license, s.author, s.split, s.rotation))
    return out


def _complete(obj_dir: Path, n: int) -> bool:
    return all(layout.rgb_path(obj_dir, i).is_file() and layout.pose_path(obj_dir, i).is_file() for i in range(n))


def prepare_dataset(
    sources: Sequence[SourceMesh],
    output: Union[str, os.PathLike],
    *,
    plan: Optional[ViewPlan] = None,
    size: int = 512,
    object_radius: float = 0.55,
    supersample: int = 2,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    min_coverage: float = 0.002,
    progress: Optional[Callable[[str], None]] = None,
) -> PrepareReport:
    """Render every source mesh into ``output`` (see the module docstring); returns counts and the
    skipped meshes with their reasons. ``min_coverage``: a mesh whose mean alpha over all views is
    below this fraction of the image is skipped as empty."""
    plan = plan or ViewPlan()
    if size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {size}")
    dev = torch.device(device) if device is not None else default_device()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    old = layout.find_manifest(out)
    entries: Dict[str, layout.ObjectEntry] = {o.id: o for o in old.objects} if old else {}
    if old and (old.size != size or old.ring != plan.ring):
        raise ValueError(f"{out} already holds a dataset at size {old.size}, ring {old.ring}; "
                         "write to a new folder to change them")
    report = PrepareReport()
    t0 = time.perf_counter()
    sources = unique_ids(sources)
    say = progress or (lambda m: log.info("%s", m))
    for k, src in enumerate(sources):
        obj_dir = out / src.id
        if src.id in entries and _complete(obj_dir, entries[src.id].num_views):
            report.kept += 1
            continue
        rng = np.random.default_rng(_object_seed(seed, src.id))
        try:
            mesh = normalize_mesh(load_render_mesh(src.path, src.rotation), object_radius).to(dev)
            el, az = plan.angles(rng)
            cams = Cameras(orbit_cameras(el, az, plan.radius), plan.fovy, size, size)
            rgb, alpha = render_mesh_views(mesh, cams, supersample=supersample)
            if float(alpha.mean()) < min_coverage:
                raise MeshLoadError("renders are empty (mesh too thin or all faces degenerate)")
        except (MeshLoadError, ValueError, RuntimeError, OSError, IndexError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.skipped.append((str(src.path), reason))
            say(f"skipped {src.path}: {reason}")
            continue
        tmp = out / f".{src.id}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rgb").mkdir(parents=True)
        (tmp / "pose").mkdir(parents=True)
        rgba = torch.cat([rgb, alpha[..., None]], -1).cpu()
        for i in range(len(cams)):
            write_image(rgba[i], layout.rgb_path(tmp, i))
            layout.write_pose(layout.pose_path(tmp, i), layout.opengl_to_stored(cams.c2w[i]))
        shutil.rmtree(obj_dir, ignore_errors=True)
        os.replace(tmp, obj_dir)
        entries[src.id] = layout.ObjectEntry(
            id=src.id, num_views=len(cams), source=str(src.path), name=src.name, license=src.license,
            author=src.author, split=src.split,
            views=[layout.ViewInfo(round(float(e), 4), round(float(a), 4), plan.radius) for e, a in zip(el, az)])
        report.written += 1
        if report.written % 10 == 0 or k == len(sources) - 1:
            layout.DatasetManifest(size=size, fovy=plan.fovy, ring=plan.ring, objects=list(entries.values())).write(out)
        done = k + 1
        el_s = time.perf_counter() - t0
        eta = el_s / done * (len(sources) - done)
        say(f"[{done}/{len(sources)}] {src.id}: {len(cams)} views ({el_s:.0f} s, ETA {eta:.0f} s)")
    layout.DatasetManifest(size=size, fovy=plan.fovy, ring=plan.ring, objects=list(entries.values()),
                           notes="rendered by python -m lgm_core prepare-data").write(out)
    report.seconds = time.perf_counter() - t0
    return report


def read_sources_file(path: Union[str, os.PathLike]) -> List[SourceMesh]:
    """Read a JSON list of ``{"path", "id", "name", "license", "author", "split", "rotation"}`` objects
    (paths relative to the file's folder); used by ``prepare-data --sources``."""
    path = Path(path)
    items = json.loads(path.read_text())
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of mesh entries")
    out = []
    for it in items:
        if not isinstance(it, dict) or "path" not in it:
            raise ValueError(f"{path}: every entry needs a 'path'")
        p = Path(it["path"])
        out.append(SourceMesh(p if p.is_absolute() else path.parent / p, str(it.get("id", "")),
                              str(it.get("name", "")), str(it.get("license", "")), str(it.get("author", "")),
                              str(it.get("split", "")), it.get("rotation")))
    return out


def merge_datasets(parts: Sequence[Union[str, os.PathLike]], output: Union[str, os.PathLike]) -> layout.DatasetManifest:
    """Move the objects of several datasets made with the same size and ring (e.g. shards rendered in
    parallel) into ``output`` and write one manifest. Object ids must not repeat."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    manifests = [layout.DatasetManifest.read(p) for p in parts]
    if not manifests:
        raise ValueError("nothing to merge")
    first = manifests[0]
    merged: Dict[str, layout.ObjectEntry] = {}
    for part, m in zip(parts, manifests):
        if (m.size, m.ring, m.fovy) != (first.size, first.ring, first.fovy):
            raise ValueError(f"{part}: size/ring/fovy differ from {parts[0]}")
        for obj in m.objects:
            if obj.id in merged:
                raise ValueError(f"object id {obj.id!r} is in two datasets")
            if Path(part).resolve() != out.resolve():
                os.replace(Path(part) / obj.id, out / obj.id)
            merged[obj.id] = obj
    result = layout.DatasetManifest(size=first.size, fovy=first.fovy, ring=first.ring, objects=list(merged.values()),
                                    notes=first.notes)
    result.write(out)
    return result
