"""Gaussians -> textured triangle mesh in seconds, pip-only (see docs/mesh_extraction.md).

Pipeline (on CUDA when present, else the CPU). On CUDA every stage is pure PyTorch on the device
(no SciPy, scikit-image, fast-simplification or xatlas needed); on the CPU the compiled
scikit-image marching cubes, fast-simplification decimation and SciPy labelling are used when
installed, as they are faster there (:func:`resolve_methods`; ``mc_method`` / ``decimation`` /
``uv_method`` choose explicitly):

0. bound the object: Gaussians whose centre lies outside fences around the centres (the
   opacity-weighted quartiles, widened by 6 times the largest inter-quartile range: twice
   Tukey's far-out fence, so only far strays are cut), and
   Gaussians wider than the whole allowed box, are ignored with a warning that counts them, so a
   few stray Gaussians cannot stretch the grid (and collapse the object into a few voxels); so are
   Gaussians piled on LGM's position clamp (a centre within ``CLAMP_TOLERANCE`` of +-1 on an axis,
   when every centre lies in [-1, 1]^3 as LGM's do), unless ``keep_clamped``;
1. splat the Gaussians' opacity density, colour and centre fields into a voxel grid
   (:mod:`lgm_core.mesh.field`);
2. mark voxels with density > ``level`` (``"auto"``: :func:`calibrated_level`) as occupied,
   flood-fill the outside from the grid border and fill every enclosed cavity (so the shell of
   surface Gaussians becomes a solid, and marching cubes sees one outer surface instead of an
   outer and an inner one);
3. marching cubes at ``level`` (:mod:`lgm_core.mesh.mc`, welded; or scikit-image's); keep every
   significant connected part; quadric decimation to ``target_faces``
   (:mod:`lgm_core.mesh.decimate`, parallel edge-collapse rounds; or fast-simplification's);
   repair (faces on non-manifold edges removed, stray islands dropped, the small holes closed);
   drop degenerate faces;
4. snap: move each vertex along its normal onto the locally weighted mean of the Gaussian
   centres (the iso-surface of a blurred shell sits about two sigma outside the centres);
5. colours: vertex colours and (with ``texture``) a UV atlas (:mod:`lgm_core.mesh.charts`: axis
   charts, shelf-packed; or xatlas') whose texels are baked from the locally weighted Gaussian
   colour at the texel's surface point, with gutters padded.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from ..gaussians import Gaussians, check_finite
from .field import VoxelGrid, gaussian_frames, splat_fields
from .raster import rasterize
from .types import Mesh, vertex_normals

ProgressFn = Callable[[str, float], None]

log = logging.getLogger("lgm_core")

MAX_RESOLUTION = 1024
MAX_TEXTURE_SIZE = 16384
CUDA_RESOLUTION = 256
CPU_RESOLUTION = 192
"""Default ``resolution`` per device: the CPU default keeps 65,536 Gaussians under ~30 s on 2 cores."""
DEFAULT_LEVEL = 0.6
"""Default iso-level (1 = the peak of one opaque Gaussian). 0.6 rather than 0.7 (the default before
2026-12-02): on the demo LGM's held-out outputs the mesh renders come within 2 dB of the splat's
(1.85 vs 2.14 dB against the ground truth) at an unchanged F-score, and the synthetic surfel scenes
keep F@0.02 >= 0.96 (docs/mesh_extraction.md)."""
COMPONENT_RATIO = 0.02
MIN_ISLAND_FACES = 16
OUTLIER_FENCE = 6.0
"""Centres more than this many inter-quartile ranges (the largest over the axes) outside the
opacity-weighted quartiles of the centres are strays (twice Tukey's far-out fence)."""
CLAMP_BOUND = 1.0
CLAMP_TOLERANCE = 1e-3
"""LGM clamps its positions to [-CLAMP_BOUND, CLAMP_BOUND]^3; a centre within CLAMP_TOLERANCE of the
bound on any axis was clamped there (no real surface of LGM's normalised objects reaches the bound)."""


def default_resolution(device) -> int:
    """The grid resolution ``extract_mesh`` uses on ``device`` when none is given."""
    return CUDA_RESOLUTION if torch.device(device).type == "cuda" else CPU_RESOLUTION


def _resolve_device(device, g: Gaussians) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def extract_mesh(
    gaussians: Gaussians,
    *,
    resolution: Optional[int] = None,
    target_faces: int = 50_000,
    texture_size: int = 1024,
    texture: bool = True,
    device=None,
    progress: Optional[ProgressFn] = None,
    level: Union[float, str] = DEFAULT_LEVEL,
    max_level: Optional[float] = None,
    min_opacity: float = 0.005,
    component_ratio: Optional[float] = COMPONENT_RATIO,
    snap: bool = False,
    min_island_faces: int = MIN_ISLAND_FACES,
    fill_cavities: bool = True,
    flip_yz: bool = False,
    keep_clamped: bool = False,
    mc_method: str = "auto",
    decimation: str = "auto",
    uv_method: str = "auto",
) -> Mesh:
    """Turn batch item 0 of ``gaussians`` (a batch of size 1) into a :class:`Mesh`.

    ``resolution``: voxels along the longest side of the Gaussians' bounding box (cost grows with
    its cube); None = 256 on CUDA, 192 on the CPU (:func:`default_resolution`). ``target_faces``: upper bound on the face count (quadric decimation).
    ``texture_size``: side of the square texture; ``texture=False`` gives vertex colours only.
    ``device``: None/"auto" = CUDA when available, else CPU. ``progress(message, fraction)`` is
    called at each stage. ``level``: iso-level of the opacity density sum_i o_i exp(-m_i^2/2)
    (1 = the peak of one fully opaque Gaussian); ``"auto"`` calibrates it on the splat's own
    renders (:func:`calibrated_level`: the median density at the Gaussians' rendered depth, so the
    mesh sits where the splat's surface is seen). ``max_level``: with ``level="auto"``, the calibrated
    level is lowered to this one if it comes out higher (the surface may then swell out to what a
    faint splat shows, never shrink inside this level's), and used as it is when the calibration
    finds too few covered pixels; None: no bound. ``component_ratio``: every connected part with at
    least this fraction of the largest part's area is kept (default 0.02: separate parts of the
    object stay, floaters go; 0 keeps all; None keeps only the largest). ``min_island_faces``:
    parts with fewer faces are dropped whatever their area (stray islands after decimation). ``snap``: move vertices onto the Gaussian centres.
    ``fill_cavities``: treat enclosed empty space as solid. ``flip_yz``: output (x, -y, -z),
    i.e. turn Gaussians in the y-down 3DGS/COLMAP convention into glTF's y-up frame (LGM's own
    frame is already y-up with the front on +z, as glTF wants, so leave it off for LGM output).
    The mesh is in the Gaussians' frame, faces wind counter-clockwise seen from outside.
    Stray Gaussians far from the object are ignored (step 0 of the module docstring; the count is
    logged and passed to ``progress``), and so are those piled on LGM's position clamp (a centre
    within 1e-3 of +-1 on any axis, checked only when all centres lie in [-1, 1]^3) unless
    ``keep_clamped``. Backends (module docstring): ``mc_method`` "torch" | "skimage", ``decimation``
    "torch" | "fast_simplification", ``uv_method`` "charts" | "xatlas"; "auto" picks the pure-PyTorch
    stage on CUDA and the faster installed one on the CPU (UV: "charts" on both) (:func:`resolve_methods`). Raises ValueError for bad arguments, NaN/Inf Gaussians
    (docs/robustness.md), and empty or degenerate input.
    """
    t0 = time.perf_counter()

    def report(msg: str, frac: float) -> None:
        if progress is not None:
            progress(f"{msg} ({time.perf_counter() - t0:.1f}s)", frac)

    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"expected lgm_core.Gaussians, got {type(gaussians).__name__}")
    if gaussians.batch_size != 1:
        raise ValueError(f"extract_mesh takes one object (batch size 1), got a batch of "
                         f"{gaussians.batch_size}: pass gaussians[i]")
    dev = _resolve_device(device, gaussians)
    if resolution is None:
        resolution = default_resolution(dev)
    check_arguments(resolution, target_faces, texture_size, level, min_opacity, component_ratio, max_level)
    mc_method, decimation, uv_method = resolve_methods(dev, mc_method, decimation, uv_method)  # before any work
    g = check_finite(gaussians.to(dev).float(), "extract_mesh")
    keep = g.valid_mask() & (g.opacities[..., 0] >= min_opacity)
    n_vis = int(keep.sum())
    if n_vis == 0:
        raise ValueError("no visible Gaussians: every Gaussian is transparent (opacity < "
                         f"{min_opacity}) or padding, so there is no surface to mesh")
    if n_vis < 4:
        raise ValueError(f"only {n_vis} visible Gaussian(s): too few to define a surface")
    g = g.select(keep)

    # 0. bound the object
    clamped = torch.zeros(g.positions.shape[1], dtype=torch.bool, device=dev)
    if not keep_clamped:
        clamped = _on_position_clamp(g)
    inside = ~clamped  # the fences are computed without the clamp pile
    if int(inside.sum()) >= 4:
        inside[inside.clone()] = _within_object(g.select(inside))
    n_out = int((~inside).sum())
    if n_out:
        n_clamped = int(clamped.sum())
        why = []
        if n_out > n_clamped:
            why.append(f"{n_out - n_clamped} far outside the object (strays beyond {OUTLIER_FENCE:g} "
                       "inter-quartile ranges of the centres, or wider than that box)")
        if n_clamped:
            why.append(f"{n_clamped} piled on the position clamp (a centre at +-{CLAMP_BOUND:g}; "
                       "keep_clamped=True keeps them)")
        message = f"ignored {n_out} of {n_vis} visible Gaussians: " + " and ".join(why)
        log.warning("extract_mesh: %s", message)
        report(message, 0.0)
        if n_vis - n_out < 4:
            raise ValueError(f"only {n_vis - n_out} Gaussian(s) left after ignoring strays: too few to define a surface")
        g = g.select(inside)

    # 1. fields
    report("splatting Gaussians into the voxel grid", 0.0)
    grid = splat_fields(g, resolution=resolution, centres=snap)
    density = grid.density
    if level == "auto":
        report("calibrating the level on the splat's own renders", 0.1)
        level = _auto_level(g, grid, max_level)
        report(f"calibrated level {level:.3g} on the splat's rendered depth", 0.15)
    occupied = density > level
    if not bool(occupied.any()):
        raise ValueError(
            f"the Gaussians' opacity density never reaches level={level} (max "
            f"{float(density.max()):.3g}): too few or too transparent Gaussians to form a surface")

    # 2. fill cavities
    report("filling enclosed space", 0.2)
    vol = _filled_volume(density, level, fill_cavities)

    # 3. marching cubes + clean-up
    report("marching cubes", 0.3)
    if mc_method == "torch":
        from .mc import marching_cubes

        v, f = marching_cubes(vol, level)
    else:
        from skimage.measure import marching_cubes

        v_np, f_np, _, _ = marching_cubes(vol.cpu().numpy(), level=level, allow_degenerate=False)
        v, f = torch.from_numpy(v_np).to(dev), torch.from_numpy(f_np.astype(np.int64)).to(dev)
    v = grid.origin.to(dev).double() + v.double() * grid.voxel_size
    v, f = _keep_components(v, f, component_ratio, min_island_faces)
    report(f"marching cubes: {len(f)} faces kept", 0.45)
    n_mc = len(f)
    if len(f) > target_faces:
        if decimation == "torch":
            from .decimate import decimate

            v, f = decimate(v, f, int(target_faces))
            v, f = _clean(v, f)
        else:
            v, f = _decimate(v, f, int(target_faces))
    report(f"decimated to {len(f)} faces ({decimation})" if len(f) < n_mc else "no decimation needed", 0.55)
    v, f = _repair(v, f, component_ratio, min_island_faces)
    if len(f) == 0:
        raise ValueError("the extracted surface is empty after clean-up (too few Gaussians?)")

    v, f = v.float(), f.long()
    if _signed_volume(v, f) < 0:
        f = f[:, [0, 2, 1]]
    # 4. snap onto the Gaussian centres
    if snap:
        v = _snap(v, f, grid, max_step=4.0 * grid.voxel_size + 3.0 * float(g.scales.median()))
    nrm = vertex_normals(v, f)
    colors = _field_color(grid, v)
    mesh_v, mesh_f, mesh_n, mesh_c = v, f, nrm, colors
    uvs = tex = None
    if not bool(torch.isfinite(v).all()):  # never hand xatlas a broken mesh (it asserts or hangs)
        raise ValueError("the extracted surface has non-finite vertices (degenerate input)")
    if texture:
        report(f"UV unwrapping ({uv_method})", 0.65)
        if uv_method == "charts":
            from .charts import chart_atlas

            vmap_t, mesh_f, uvs_t = chart_atlas(v, f, texture_size)
        else:
            vmap, f_uv, uvs_np = _unwrap(v.cpu().numpy(), f.cpu().numpy(), texture_size)
            vmap_t, mesh_f, uvs_t = (torch.from_numpy(a).to(dev) for a in (vmap, f_uv, uvs_np))
        mesh_v, mesh_n, mesh_c = v[vmap_t], nrm[vmap_t], colors[vmap_t]
        report("baking the texture", 0.85)
        tex = _bake_texture(grid, mesh_v, mesh_f, uvs_t, texture_size)
        uvs = uvs_t.cpu()
    mesh = Mesh(mesh_v.cpu(), mesh_f.cpu(), uvs=uvs, texture=None if tex is None else tex.cpu(),
                vertex_colors=mesh_c.cpu(), normals=mesh_n.cpu())
    if flip_yz:
        mesh = mesh.flip_yz()
    report(f"done: {mesh.num_vertices} vertices, {mesh.num_faces} faces", 1.0)
    return mesh


# ---------------------------------------------------------------------------------- stages
def check_arguments(resolution=CUDA_RESOLUTION, target_faces=50_000, texture_size=1024, level=DEFAULT_LEVEL, min_opacity=0.005,
                    component_ratio=None, max_level=None) -> None:
    """Raise ValueError (one line, naming the argument) for :func:`extract_mesh` arguments out of range."""
    def number(x) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    def integer(x) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if not (integer(resolution) and 16 <= resolution <= MAX_RESOLUTION):
        raise ValueError(f"resolution must be an integer in [16, {MAX_RESOLUTION}], got {resolution}")
    if not (integer(target_faces) and target_faces >= 4):
        raise ValueError(f"target_faces must be an integer >= 4, got {target_faces}")
    if not (integer(texture_size) and 16 <= texture_size <= MAX_TEXTURE_SIZE):
        raise ValueError(f"texture_size must be an integer in [16, {MAX_TEXTURE_SIZE}] pixels, got {texture_size}")
    if not (level == "auto" or (number(level) and level > 0)):
        raise ValueError(f"level must be a positive number (1 = peak of one opaque Gaussian) or 'auto', got {level!r}")
    if max_level is not None and not (number(max_level) and max_level > 0):
        raise ValueError(f"max_level must be None or a positive number, got {max_level!r}")
    if max_level is not None and level != "auto":
        raise ValueError(f"max_level bounds only level='auto'; with a fixed level ({level!r}) leave it None")
    if not (number(min_opacity) and 0.0 <= min_opacity <= 1.0):
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    if component_ratio is not None and not (number(component_ratio) and 0.0 <= component_ratio <= 1.0):
        raise ValueError(f"component_ratio must be None or in [0, 1], got {component_ratio}")


def _weighted_quantiles(x: torch.Tensor, w: torch.Tensor, q: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-column weighted quantiles (q, 1 - q) of ``x`` [N, D] with weights ``w`` [N]."""
    xs, idx = x.sort(dim=0)
    cw = w[idx].cumsum(0)  # [N, D]
    total = cw[-1:].clamp_min(1e-30)
    lo_i = torch.searchsorted((cw / total).T.contiguous(), torch.full((x.shape[1], 1), q, device=x.device))
    hi_i = torch.searchsorted((cw / total).T.contiguous(), torch.full((x.shape[1], 1), 1 - q, device=x.device))
    n = x.shape[0] - 1
    cols = torch.arange(x.shape[1], device=x.device)
    return xs[lo_i[:, 0].clamp(0, n), cols], xs[hi_i[:, 0].clamp(0, n), cols]


def _on_position_clamp(g: Gaussians) -> torch.Tensor:
    """[N] bool: Gaussians of item 0 whose centre sits on LGM's position clamp.

    Only when every centre lies within [-1, 1]^3 (+ tolerance), i.e. the output looks clamped;
    other scenes (3DGS captures, unnormalised objects) are left alone."""
    pos = g.positions[0].float().abs()
    if not bool((pos <= CLAMP_BOUND + CLAMP_TOLERANCE).all()):
        return torch.zeros(pos.shape[0], dtype=torch.bool, device=pos.device)
    return (pos >= CLAMP_BOUND - CLAMP_TOLERANCE).any(-1)


def _within_object(g: Gaussians) -> torch.Tensor:
    """[N] bool: Gaussians of item 0 that belong to the object (step 0 of the module docstring)."""
    pos = g.positions[0].float()
    w = g.opacities[0, :, 0].float().clamp_min(0)
    if not bool(w.sum() > 0):
        w = torch.ones_like(w)
    _, sigma_max = gaussian_frames(g)
    lo, hi = _weighted_quantiles(pos, w, 0.25)
    margin = OUTLIER_FENCE * float((hi - lo).max()) + 3.0 * float(sigma_max.median())
    lo, hi = lo - margin, hi + margin
    inside = ((pos >= lo) & (pos <= hi)).all(-1)
    return inside & (3.0 * sigma_max <= float((hi - lo).max()))



CALIBRATION_VIEWS = 12
CALIBRATION_SIZE = 128


class TooFaintToCalibrate(ValueError):
    """:func:`calibrated_level` found too few pixels where the splat is opaque enough to calibrate on."""


def _auto_level(g: Gaussians, grid: VoxelGrid, max_level: Optional[float]) -> float:
    """``level="auto"``: :func:`calibrated_level`, at most ``max_level`` (which also stands in when the
    splat is too faint to calibrate on)."""
    try:
        level = calibrated_level(g, grid)
    except TooFaintToCalibrate as exc:
        if max_level is None:
            raise
        log.warning("extract_mesh: %s; using level %g", exc, max_level)
        return float(max_level)
    return level if max_level is None else min(level, float(max_level))


def calibrated_level(g: Gaussians, grid: VoxelGrid, *, views: int = CALIBRATION_VIEWS, size: int = CALIBRATION_SIZE,
                     min_alpha: float = 0.5) -> float:
    """The iso-level whose surface passes through what the splat shows: render ``g`` (batch of 1) from
    ``views`` orbit cameras around the grid's centre (elevations -20/10/40 degrees, LGM's field of view,
    far enough for the whole grid to fit), back-project each pixel with alpha > ``min_alpha`` at its
    expected depth, and return the median of ``grid``'s density at those points."""
    from ..cameras import LGM_FOVY, Cameras, orbit_cameras
    from ..geometry import intrinsics, opengl_to_opencv
    from ..render import render
    from .refine import REFINE_ELEVATIONS

    dev = grid.data.device
    ext = torch.tensor(grid.shape, dtype=torch.float32, device=dev) * grid.voxel_size
    centre = grid.origin.to(dev) + 0.5 * ext
    radius = float(0.5 * ext.norm()) / math.sin(math.radians(LGM_FOVY) / 2) * 1.05
    az = np.arange(views) * (360.0 / views)
    c2w = orbit_cameras(np.resize(np.asarray(REFINE_ELEVATIONS), views), az, radius).to(dev)
    c2w[:, :3, 3] += centre
    cams = Cameras(c2w, LGM_FOVY, size, size)
    out = render(g, cams)
    K = intrinsics(size, size, LGM_FOVY, device=dev)[0]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32, device=dev),
                            torch.arange(size, dtype=torch.float32, device=dev), indexing="ij")
    pts = []
    for i in range(views):
        z = out.depth[0, i, ..., 0].to(dev)
        m = (out.alpha[0, i, ..., 0].to(dev) > min_alpha) & (z > 0)
        cam = torch.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], -1)[m]
        pose = opengl_to_opencv(c2w[i])
        pts.append(cam @ pose[:3, :3].T + pose[:3, 3])
    pts = torch.cat(pts)
    if pts.shape[0] < 16:
        raise TooFaintToCalibrate("level='auto': the splat covers almost no pixel of its own renders (too faint)")
    return float(grid.sample(pts, slice(0, 1))[:, 0].median())


METHODS = {"mc_method": ("torch", "skimage"), "decimation": ("torch", "fast_simplification"),
           "uv_method": ("charts", "xatlas")}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def resolve_methods(device, mc_method: str = "auto", decimation: str = "auto", uv_method: str = "auto"):
    """(mc_method, decimation, uv_method) that :func:`extract_mesh` runs on ``device``.

    "auto": the pure-PyTorch stage on CUDA; on the CPU, scikit-image's marching cubes and
    fast-simplification's decimation when installed (compiled, faster there than the PyTorch
    stages), else the PyTorch ones; UV charts are the PyTorch ``"charts"`` everywhere."""
    cuda = torch.device(device).type == "cuda"
    picked = []
    for name, value, fallback_module in (("mc_method", mc_method, "skimage"),
                                         ("decimation", decimation, "fast_simplification"),
                                         ("uv_method", uv_method, None)):
        if value == "auto":
            ours, other = METHODS[name]
            value = ours if cuda or fallback_module is None or not _installed(fallback_module) else other
        if value not in METHODS[name]:
            raise ValueError(f"{name} must be 'auto' or one of {', '.join(METHODS[name])}, got {value!r}")
        picked.append(value)
    return tuple(picked)


def _filled_volume(density: torch.Tensor, level: float, fill: bool) -> torch.Tensor:
    """The density with a one-voxel empty border (every surface closes) and, with ``fill``, every
    enclosed empty region (not 6-connected to the border) raised to 2 x ``level``; on the
    density's device (SciPy's labelling on the CPU when installed, a PyTorch flood fill else)."""
    vol = density.float().clone()
    vol[0], vol[-1] = 0, 0
    vol[:, 0], vol[:, -1] = 0, 0
    vol[:, :, 0], vol[:, :, -1] = 0, 0
    if fill:
        empty = ~(vol > level)
        if vol.device.type == "cpu" and _installed("scipy"):
            from scipy import ndimage

            labels, _ = ndimage.label(empty.numpy())  # 6-connected empty regions
            outside = torch.from_numpy(labels == labels[0, 0, 0])
        else:
            from .topology import outside_mask

            outside = outside_mask(empty)
        cavity = empty & ~outside
        vol[cavity] = torch.clamp_min(vol[cavity], 2.0 * level)
    return vol


def _clean(verts: torch.Tensor, faces: torch.Tensor):
    """Drop faces with repeated or zero-area corners and unreferenced vertices."""
    if len(faces):
        ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        faces = faces[ok]
    if len(faces):
        a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
        area2 = torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
        scale = max(float((verts.amax(0) - verts.amin(0)).max()), 1e-12)
        faces = faces[area2 > 1e-12 * scale * scale]
    used = torch.zeros(len(verts), dtype=torch.bool, device=verts.device)
    used[faces.reshape(-1)] = True
    remap = torch.cumsum(used.long(), 0) - 1
    return verts[used], remap[faces]


def _decimate(verts: torch.Tensor, faces: torch.Tensor, target: int):
    """Quadric decimation (fast-simplification, one pass, on the CPU) to at most ``target`` faces."""
    import fast_simplification

    v, f = fast_simplification.simplify(verts.cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.int32),
                                        target_count=target, agg=7.0)
    return _clean(torch.from_numpy(v).to(verts), torch.from_numpy(f.astype(np.int64)).to(faces.device))


def _repair(verts: torch.Tensor, faces: torch.Tensor, ratio: Optional[float], min_faces: int, rounds: int = 3):
    """Remove what decimation can leave behind: faces on non-manifold edges (shared by more than
    two faces; the pinch is opened into a small hole) and stray islands (parts below ``ratio`` of
    the largest part's area or with fewer than ``min_faces`` faces); the small holes left are closed."""
    from .topology import unique_edges

    for _ in range(rounds):
        if len(faces) == 0:
            break
        _, counts, side = unique_edges(faces, len(verts))
        bad = (counts[side] > 2).any(1)
        if not bool(bad.any()):
            break
        faces = faces[~bad]
    verts, faces = _keep_components(verts, faces, ratio, min_faces)
    v, f = _fill_holes(verts.cpu().numpy(), faces.cpu().numpy())
    v, f = _split_pinched_vertices(v, f)
    return torch.from_numpy(v).to(verts), torch.from_numpy(f).to(faces.device)


PINCH_OFFSET = 1e-3
"""A split-off copy of a pinched vertex moves this fraction of the way to its own fan's centroid (micrometres
at LGM's scale), so that welding by position cannot join the fans again."""


def _split_pinched_vertices(verts: np.ndarray, faces: np.ndarray):
    """Give every fan of faces around a vertex its own vertex: where two fans meet at one vertex only
    (a pinch: two sheets touching at a point, or two hole fills meeting at a rim vertex) the mesh is
    not a manifold there, and Blender's "select non-manifold" flags it. Corners of one face are joined
    to the corners of the face across each edge of two consistently wound faces; a vertex
    whose corners fall into k > 1 groups gets k - 1 copies (moved by ``PINCH_OFFSET`` towards their fan)."""
    from .topology import connected_components, unique_edges

    if len(faces) == 0:
        return verts, faces
    n, nf = len(verts), len(faces)
    corner_vertex = faces.reshape(-1)  # corner 3f + k is vertex faces[f, k]

    def nxt(corner):  # the next corner of the same face: side ``corner`` runs from it to this one
        return corner - corner % 3 + (corner % 3 + 1) % 3

    _, counts, side = unique_edges(torch.from_numpy(faces), n)
    side = side.numpy().reshape(-1)  # edge id of the side that starts at each corner
    inner = np.flatnonzero(counts.numpy()[side] == 2)
    inner = inner[np.argsort(side[inner], kind="stable")]
    h, t = inner[0::2], inner[1::2]  # the two sides of each edge with two faces
    consistent = corner_vertex[h] == corner_vertex[nxt(t)]  # h runs u -> v, t v -> u: one orientation
    h, t = h[consistent], t[consistent]
    links = np.concatenate([np.stack([h, nxt(t)], 1), np.stack([nxt(h), t], 1)])  # same vertex, across the edge
    label = connected_components(3 * nf, torch.from_numpy(links)).numpy()
    groups, first = np.unique(label, return_index=True)  # corner groups (fans), each with one corner
    fan_vertex = corner_vertex[first]
    by_vertex = np.argsort(fan_vertex, kind="stable")
    extra = np.ones(len(groups), dtype=bool)
    extra[by_vertex[np.r_[True, fan_vertex[by_vertex][1:] != fan_vertex[by_vertex][:-1]]]] = False  # first fan keeps it
    if not extra.any():
        return verts, faces
    new_id = np.full(len(groups), -1, dtype=np.int64)
    new_id[extra] = n + np.arange(int(extra.sum()))
    group_of_corner = np.searchsorted(groups, label)
    remap = new_id[group_of_corner]
    out_faces = np.where(remap >= 0, remap, corner_vertex).reshape(nf, 3).astype(faces.dtype)
    centroid = verts[faces].mean(1)  # [F, 3]
    sums = np.zeros((len(groups), 3))
    np.add.at(sums, group_of_corner, centroid[np.arange(3 * nf) // 3])
    counts = np.bincount(group_of_corner, minlength=len(groups))[:, None]
    base = verts[fan_vertex[extra]]
    copies = base + PINCH_OFFSET * (sums[extra] / counts[extra] - base)
    return np.concatenate([verts, copies.astype(verts.dtype)]), out_faces


def _boundary_loops(boundary: np.ndarray):
    """Split the boundary half-edges [E, 2] (u -> v, each without a twin) into simple closed loops
    (vertex lists, no vertex twice): a walk that comes back to a vertex it already passed (a pinch,
    where two holes or two lobes of one hole touch) cuts the loop it closed off there. Open chains
    (an inconsistent boundary) are dropped."""
    out = {}
    for u, v in boundary.tolist():
        out.setdefault(u, []).append(v)
    loops = []
    for start in list(out):
        while out.get(start):
            path, pos, u = [start], {start: 0}, start
            while out.get(u):
                v = out[u].pop()
                if v in pos:  # closed a loop: path[pos[v]:]
                    i = pos[v]
                    loops.append(path[i:])
                    for w in path[i + 1:]:
                        del pos[w]
                    del path[i + 1:]
                    if len(path) == 1:
                        break
                else:
                    pos[v] = len(path)
                    path.append(v)
                u = v
    return loops


def _fill_holes(verts: np.ndarray, faces: np.ndarray, max_loop: int = 200):
    """Close boundary loops (up to ``max_loop`` edges) with a fan around a new vertex at the loop's
    centroid, wound to match the neighbouring faces; a hole whose boundary touches itself (or
    another hole's) at a vertex is closed as one fan per simple loop (:func:`_boundary_loops`)."""
    if len(faces) == 0:
        return verts, faces
    from .topology import unique_edges

    n = len(verts)
    _, counts, side = unique_edges(torch.from_numpy(faces), n)
    # sides (u -> v, side k from corner k to k + 1) of edges with one face only: an edge of two faces is no
    # rim, even where their winding disagrees, and a rim of a wrongly wound face breaks its loop into a dropped chain
    rim = (counts[side] == 1).numpy()
    sides = np.stack([faces, np.roll(faces, -1, axis=1)], -1)  # [F, 3, 2]
    boundary = sides.transpose(1, 0, 2)[rim.T]  # side-major, as the walk has always met them
    if len(boundary) == 0:
        return verts, faces
    new_verts, new_faces = [], []
    for loop in _boundary_loops(boundary):
        if not 3 <= len(loop) <= max_loop:
            continue
        c = n + len(new_verts)
        new_verts.append(verts[loop].mean(0))
        # the twin of each boundary half-edge loop[k] -> loop[k + 1]
        new_faces += [[b, a, c] for a, b in zip(loop, loop[1:] + loop[:1])]
    if not new_faces:
        return verts, faces
    return np.concatenate([verts, np.asarray(new_verts)]), np.concatenate([faces, np.asarray(new_faces, dtype=faces.dtype)])


def _keep_components(verts: torch.Tensor, faces: torch.Tensor, ratio: Optional[float], min_faces: int = 0):
    """Keep the connected parts with at least ``ratio`` x the largest part's area (None: only the
    largest) and at least ``min_faces`` faces (PyTorch, on the mesh's device)."""
    from .topology import connected_components

    verts, faces = _clean(verts, faces)
    if len(faces) == 0 or (ratio is not None and ratio <= 0 and min_faces <= 0):
        return verts, faces
    lab = connected_components(len(verts), torch.cat([faces[:, [0, 1]], faces[:, [1, 2]]]))
    _, lab = torch.unique(lab, return_inverse=True)
    ncomp = int(lab.max()) + 1
    if ncomp == 1:
        return verts, faces
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * torch.cross(b - a, c - a, dim=-1).norm(dim=-1).double()
    fl = lab[faces[:, 0]]
    comp_area = torch.zeros(ncomp, dtype=torch.float64, device=verts.device).index_add_(0, fl, area)
    if ratio is None:
        keep_comp = torch.zeros(ncomp, dtype=torch.bool, device=verts.device)
        keep_comp[int(comp_area.argmax())] = True
    else:
        keep_comp = comp_area >= min(float(ratio), 1.0) * comp_area.max()
        comp_faces = torch.bincount(fl, minlength=ncomp)
        keep_comp &= (comp_faces >= min_faces) | (comp_faces == comp_faces.max())
    return _clean(verts, faces[keep_comp[fl]])


def _signed_volume(v: torch.Tensor, f: torch.Tensor) -> float:
    v = v.double()
    return float((v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=-1)).sum() / 6.0)


def _snap(v: torch.Tensor, f: torch.Tensor, grid: VoxelGrid, max_step: float) -> torch.Tensor:
    """Move vertices along their normals onto the density-weighted mean of nearby centres."""
    nrm = vertex_normals(v, f)
    s = grid.sample(v, slice(0, 7))
    w = s[:, :1]
    centre = s[:, 4:7] / w.clamp_min(1e-8)
    step = ((centre - v) * nrm).sum(-1, keepdim=True).clamp(-max_step, max_step)
    step = torch.where(w > 1e-4, step, torch.zeros_like(step))
    return v + step * nrm


def _field_color(grid: VoxelGrid, points: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    out = []
    for i in range(0, points.shape[0], chunk):
        s = grid.sample(points[i:i + chunk], slice(0, 4))
        out.append((s[:, 1:4] / s[:, :1].clamp_min(1e-8)).clamp(0, 1))
    return torch.cat(out) if out else points.new_zeros(0, 3)


def _unwrap(verts: np.ndarray, faces: np.ndarray, texture_size: int):
    """xatlas UV atlas -> (vertex map [V'], faces [F, 3] into the split vertices, uvs [V', 2])."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(verts.astype(np.float32), faces.astype(np.uint32))
    co = xatlas.ChartOptions()
    po = xatlas.PackOptions()
    # A bounded chart area keeps chart growing cheap (xatlas is slow on big smooth charts).
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    co.max_chart_area = area / 256.0
    co.max_iterations = 0  # no chart-growing refinement: 20x faster on decimated iso-surfaces
    po.resolution = int(texture_size)
    po.padding = 3  # atlas texels; xatlas' atlas comes out ~1.5x texture_size, so ~2 px in the end
    po.bilinear = True
    po.blockAlign = True
    atlas.generate(co, po)
    vmap, f_uv, uvs = atlas[0]
    return vmap.astype(np.int64), f_uv.astype(np.int64), uvs.astype(np.float32)


def _bake_texture(grid: VoxelGrid, v: torch.Tensor, f: torch.Tensor, uvs: torch.Tensor, size: int,
                  pad: int = 4) -> torch.Tensor:
    """Texture [size, size, 3]: each covered texel gets the field colour at its surface point."""
    xy = torch.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], -1)
    frag = rasterize(xy, torch.ones(xy.shape[0], device=v.device), f, (size, size))
    # texels no triangle centre covers but that bilinear lookups reach: dilate charts by a bit
    mask = frag.mask
    hit = mask.reshape(-1).nonzero().squeeze(1)
    tex = torch.zeros(size * size, 3, device=v.device)
    if hit.numel():
        tri = f[frag.face.reshape(-1)[hit]]
        p = (v[tri] * frag.bary.reshape(-1, 3)[hit][..., None]).sum(1)
        tex[hit] = _field_color(grid, p)
        fill = tex[hit].mean(0)
    else:
        fill = torch.full((3,), 0.5, device=v.device)
    tex = tex.view(size, size, 3).permute(2, 0, 1)[None]
    m = mask.float()[None, None]
    for _ in range(pad):  # push colours into the gutters around each chart
        s = torch.nn.functional.avg_pool2d(tex * m, 3, 1, 1)
        cnt = torch.nn.functional.avg_pool2d(m, 3, 1, 1)
        grown = (cnt > 0) & (m == 0)
        tex = torch.where(grown, s / cnt.clamp_min(1e-8), tex)
        m = torch.where(grown, torch.ones_like(m), m)
    tex = torch.where(m > 0, tex, fill.view(1, 3, 1, 1))
    return tex[0].permute(1, 2, 0).clamp(0, 1).contiguous()
