"""Mesh extraction (lgm_core.mesh): shapes, hygiene, colours, errors, exports, rasterizer, CLI.

Scenes are tiny (a few thousand fat Gaussians, 48-64 voxels) so the whole file stays fast on CPU.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians
from lgm_core.mesh import Mesh, extract_mesh, rasterize, render_mesh
from lgm_core.mesh.synthetic import make_scene
from lgm_core.ply import save_ply

TINY = dict(scale_range=(0.02, 0.04), normal_scale_range=(0.008, 0.015))
FAST = dict(resolution=48, target_faces=3000, texture_size=128, device="cpu")


def tiny(name="sphere", n=3000, **kw):
    return make_scene(name, n, **{**TINY, **kw})


def uniform_color(g: Gaussians, rgb) -> Gaussians:
    c = torch.tensor(rgb, dtype=torch.float32).expand(1, g.num_gaussians, 3)
    return Gaussians.from_rgb(g.positions, g.scales, g.rotations, g.opacities, c)


@pytest.fixture(scope="module")
def sphere_mesh():
    g = uniform_color(tiny("sphere"), (0.8, 0.3, 0.2))
    return extract_mesh(g, **FAST)


@pytest.fixture(scope="module")
def sphere_plain():
    return extract_mesh(tiny("sphere"), texture=False, **FAST)


def edge_counts(faces: np.ndarray):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return counts


# ------------------------------------------------------------------ shapes and hygiene
def test_shapes_and_types(sphere_mesh):
    m = sphere_mesh
    V = m.num_vertices
    assert m.vertices.dtype == torch.float32 and m.vertices.shape == (V, 3)
    assert m.faces.dtype == torch.int64 and m.faces.shape[1] == 3
    assert m.uvs.shape == (V, 2) and float(m.uvs.min()) >= 0 and float(m.uvs.max()) <= 1
    assert m.texture.shape == (128, 128, 3)
    assert float(m.texture.min()) >= 0 and float(m.texture.max()) <= 1
    assert m.vertex_colors.shape == (V, 3)
    assert torch.allclose(m.normals.norm(dim=-1), torch.ones(V), atol=1e-4)
    assert 0 < m.num_faces <= 3000


def test_hygiene_closed_outward_single_component(sphere_plain):
    m = sphere_plain
    f = m.faces.numpy()
    assert m.num_faces <= 3000
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    assert float(m.face_areas().min()) > 0
    counts = edge_counts(f)
    # closed: no boundary edges; quadric decimation may leave a rare non-manifold edge
    assert np.all(counts >= 2) and (counts != 2).sum() <= 2
    assert m.signed_volume() > 0
    # outward: normals point away from the centre of a sphere
    v = m.vertices
    assert float(((m.normals * v).sum(-1) > 0).float().mean()) > 0.99
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    n = m.num_vertices
    ncomp, _ = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)))
    assert ncomp == 1
    # geometry: near the sphere of radius 0.4 (the visible surface sits a little outside)
    r = v.norm(dim=-1)
    assert 0.39 < float(r.mean()) < 0.45 and float(r.std()) < 0.01


def test_snap_moves_surface_onto_centres():
    g = tiny("sphere")
    plain = extract_mesh(g, texture=False, **FAST)
    snapped = extract_mesh(g, texture=False, snap=True, **FAST)
    err_plain = (plain.vertices.norm(dim=-1) - 0.4).abs().mean()
    err_snap = (snapped.vertices.norm(dim=-1) - 0.4).abs().mean()
    assert err_snap < err_plain and err_snap < 0.01


def test_colors_follow_gaussians(sphere_mesh):
    target = torch.tensor([0.8, 0.3, 0.2])
    assert torch.allclose(sphere_mesh.vertex_colors.mean(0), target, atol=0.02)
    assert torch.allclose(sphere_mesh.texture.reshape(-1, 3).median(0).values, target, atol=0.02)


def test_face_budget_and_no_texture():
    m = extract_mesh(tiny("torus"), resolution=48, target_faces=500, texture=False, device="cpu")
    assert m.num_faces <= 500 and m.uvs is None and m.texture is None and m.vertex_colors is not None
    counts = edge_counts(m.faces.numpy())
    assert np.all(counts >= 2) and (counts != 2).sum() <= 2


def test_components_and_flip():
    a = tiny("sphere", n=2000)
    b = a.transform(translation=(0.0, 0.0, 0.0), scale=0.5)
    b = b.transform(translation=(0.8, 0.0, 0.0))
    two = Gaussians.cat([a, b], dim=1)
    both = extract_mesh(two, texture=False, **FAST)  # default: every significant part stays
    one = extract_mesh(two, texture=False, component_ratio=None, **FAST)
    bigger = extract_mesh(two, texture=False, component_ratio=0.5, **FAST)
    assert float(both.vertices[:, 0].max()) > 0.9
    assert float(one.vertices[:, 0].max()) < 0.6 and float(bigger.vertices[:, 0].max()) < 0.6  # big sphere only
    # a floater far below 2 % of the main part's area goes
    speck = tiny("sphere", n=300).transform(scale=0.08).transform(translation=(-0.8, 0.0, 0.0))
    cleaned = extract_mesh(Gaussians.cat([two, speck], dim=1), texture=False, **FAST)
    assert float(cleaned.vertices[:, 0].min()) > -0.7
    flipped = extract_mesh(two, texture=False, flip_yz=True, **FAST)
    assert torch.allclose(flipped.vertices, both.vertices * torch.tensor([1.0, -1.0, -1.0]))
    assert flipped.signed_volume() > 0


def test_legacy_rotations_do_not_crash():
    g = tiny("sphere", n=1500)
    g.normalized_rotations = False
    m = extract_mesh(g, texture=False, **FAST)
    assert m.num_faces > 0


# ------------------------------------------------------------------ errors
def test_all_transparent_is_a_clear_error():
    g = tiny("sphere", n=500)
    g.opacities = torch.zeros_like(g.opacities)
    with pytest.raises(ValueError, match="no visible Gaussians"):
        extract_mesh(g, **FAST)


def test_single_gaussian_is_a_clear_error():
    g = tiny("sphere", n=1)
    with pytest.raises(ValueError, match="too few"):
        extract_mesh(g, **FAST)


def test_sparse_faint_gaussians_are_a_clear_error():
    g = tiny("sphere", n=20)
    g.opacities = torch.full_like(g.opacities, 0.3)
    with pytest.raises(ValueError, match="never reaches level"):
        extract_mesh(g, **FAST)


def test_batch_is_rejected():
    g = Gaussians.cat([tiny("sphere", n=100), tiny("sphere", n=100)], dim=0)
    with pytest.raises(ValueError, match="batch"):
        extract_mesh(g, **FAST)


def test_mesh_validation():
    with pytest.raises(ValueError):
        Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]))
    with pytest.raises(ValueError):
        Mesh(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="uvs"):
        Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), texture=torch.zeros(4, 4, 3))


# ------------------------------------------------------------------ export round trips
def test_export_glb_roundtrip(tmp_path, sphere_mesh):
    import trimesh

    path = sphere_mesh.export(tmp_path / "m.glb")
    assert sorted(os.listdir(tmp_path)) == ["m.glb"]  # nothing temporary left behind
    loaded = Mesh.load(path)
    assert loaded.num_faces == sphere_mesh.num_faces
    assert torch.allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-5)
    assert loaded.texture is not None and loaded.texture.shape == sphere_mesh.texture.shape
    assert torch.allclose(loaded.uvs, sphere_mesh.uvs, atol=1e-4)
    scene = trimesh.load(path)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 1


def test_export_obj_roundtrip(tmp_path, sphere_mesh):
    path = sphere_mesh.export(tmp_path / "m.obj")
    names = sorted(os.listdir(tmp_path))  # companions are versioned: m.<content hash>.mtl|png
    assert len(names) == 3 and names[2] == "m.obj" and re.fullmatch(r"m\.[0-9a-f]{12}\.mtl", names[0])
    assert names[1] == names[0][:-4] + ".png"
    assert f"map_Kd {names[1]}" in (tmp_path / names[0]).read_text()
    assert f"mtllib {names[0]}" in (tmp_path / "m.obj").read_text()
    loaded = Mesh.load(path)
    assert loaded.num_faces == sphere_mesh.num_faces
    assert loaded.texture is not None
    # same surface (trimesh may re-index vertices)
    assert abs(float(loaded.face_areas().sum()) - float(sphere_mesh.face_areas().sum())) < 1e-3


def test_export_ply_roundtrip_vertex_colors(tmp_path, sphere_plain, sphere_mesh):
    path = sphere_plain.export(tmp_path / "m.ply")
    loaded = Mesh.load(path)
    assert loaded.num_vertices == sphere_plain.num_vertices and loaded.num_faces == sphere_plain.num_faces
    assert torch.allclose(loaded.vertex_colors[:, :3], sphere_plain.vertex_colors, atol=1 / 255 + 1e-6)
    # a textured mesh bakes its texture into vertex colours for .ply
    loaded2 = Mesh.load(sphere_mesh.export(tmp_path / "t.ply"))
    assert torch.allclose(loaded2.vertex_colors[:, :3].mean(0), torch.tensor([0.8, 0.3, 0.2]), atol=0.03)


def test_trimesh_conversion_and_bad_extension(tmp_path, sphere_plain):
    tm = sphere_plain.to_trimesh()
    back = Mesh.from_trimesh(tm)
    assert torch.equal(back.faces, sphere_plain.faces)
    assert tm.volume > 0 and len(tm.faces) == sphere_plain.num_faces
    with pytest.raises(ValueError, match="unsupported"):
        sphere_plain.export(tmp_path / "m.stl")


# ------------------------------------------------------------------ rasterizer
def test_rasterizer_coverage_and_depth_order():
    # two overlapping screen-space triangles; the nearer (depth 1) must win where they overlap
    xy = torch.tensor([[2.0, 2.0], [30.0, 2.0], [2.0, 30.0], [4.0, 4.0], [32.0, 4.0], [4.0, 32.0]])
    depth = torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frag = rasterize(xy, depth, faces, (32, 32))
    assert int(frag.face[10, 10]) == 1  # overlap: nearer triangle
    assert int(frag.face[2, 2]) == 0  # only the far one
    assert int(frag.face[31, 31]) == -1
    covered = int((frag.face == 0).sum() + (frag.face == 1).sum())
    assert abs(covered - (392 + 392 - 288)) < 40  # union of the two triangles' areas
    b = frag.bary[frag.mask]
    assert torch.allclose(b.sum(-1), torch.ones(b.shape[0]), atol=1e-5)


def test_render_mesh_matches_gaussians():
    from lgm_core.render import render

    g = tiny("sphere", n=3000)
    m = extract_mesh(g, **FAST)
    cams = Cameras.orbit([0.0, 30.0], [0.0, 120.0], size=96)
    out = render_mesh(m, cams, supersample=2)
    ref = render(g, cams, backend="torch").image[0]
    assert out.image.shape == (2, 96, 96, 3) and out.alpha.shape == (2, 96, 96)
    mse = float(((out.image - ref) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 22


# ------------------------------------------------------------------ CLI
def test_cli_mesh(tmp_path):
    from lgm_core.cli import main

    src = tmp_path / "g.ply"
    save_ply(tiny("torus", n=3000), src)
    out = tmp_path / "m.glb"
    rc = main(["mesh", str(src), "-o", str(out), "--resolution", "48", "--texture-size", "64",
               "--target-faces", "2000", "--device", "cpu"])
    assert rc == 0 and out.is_file()
    assert Mesh.load(out).num_faces <= 2000
    assert main(["mesh", str(src), "-o", str(tmp_path / "m.stl")]) == 2
    assert main(["mesh", str(src), "--level", "auto", "--max-level", "0"]) == 2  # refused before any work
    assert main(["mesh", str(src), "--max-level", "0.7"]) == 2  # it bounds only --level auto


@pytest.mark.gpu
def test_cuda_matches_cpu():
    g = tiny("torus")
    torch_stages = dict(mc_method="torch", decimation="torch")  # CUDA's defaults
    a = extract_mesh(g, texture=False, **FAST, **torch_stages)
    b = extract_mesh(g, texture=False, **{**FAST, "device": "cuda"})
    assert abs(a.num_faces - b.num_faces) <= 0.02 * a.num_faces
    assert abs(a.signed_volume() - b.signed_volume()) < 1e-3
    c = extract_mesh(g, **{**FAST, "device": "cuda"})  # textured, charts on the GPU
    assert c.texture.shape == (128, 128, 3) and float(c.uvs.min()) >= 0 and float(c.uvs.max()) <= 1


def test_refine_texture_fits_the_splat_renders(sphere_mesh):
    from lgm_core.mesh.refine import refine_texture, refinement_cameras
    from lgm_core.render import render

    g = uniform_color(tiny("sphere"), (0.8, 0.3, 0.2))  # the Gaussians sphere_mesh came from
    grey = Mesh(sphere_mesh.vertices, sphere_mesh.faces, uvs=sphere_mesh.uvs,
                texture=torch.full_like(sphere_mesh.texture, 0.5), normals=sphere_mesh.normals)
    cams = refinement_cameras(views=4, size=48)
    refined = refine_texture(grey, g, steps=3, cameras=cams)  # back-projection + 3 Adam steps
    target = render(g, cams).image[0]
    before = render_mesh(grey, cams)
    covered = before.alpha > 0
    err_before = (before.image - target).abs()[covered].mean()
    err_after = (render_mesh(refined, cams).image - target).abs()[covered].mean()
    assert err_after < 0.5 * err_before
    assert refined.texture.shape == grey.texture.shape and torch.equal(refined.faces, grey.faces)


def test_auto_level_puts_the_surface_where_the_splat_is_seen():
    from lgm_core.mesh.extract import check_arguments

    g = tiny("sphere")
    default = extract_mesh(g, texture=False, **FAST)
    msgs = []
    auto = extract_mesh(g, texture=False, level="auto", progress=lambda m, f: msgs.append(m), **FAST)
    level = float(re.search(r"calibrated level ([0-9.]+)", " ".join(msgs)).group(1))
    assert level > 0.7  # these opaque surfels are seen nearer their centres than the default level's surface
    r_default, r_auto = float(default.vertices.norm(dim=-1).mean()), float(auto.vertices.norm(dim=-1).mean())
    assert 0.395 < r_auto < r_default
    check_arguments(level="auto")
    with pytest.raises(ValueError, match="level"):
        check_arguments(level="high")


def test_max_level_bounds_the_calibrated_level(monkeypatch, caplog):
    """``max_level`` lowers a calibrated level above it (the mesh is then the fixed level's mesh), leaves
    one below it alone, stands in when the splat is too faint to calibrate on, and is validated."""
    from lgm_core.mesh import extract as ex

    g = tiny("sphere")
    msgs = []
    bounded = extract_mesh(g, texture=False, level="auto", max_level=0.5, progress=lambda m, f: msgs.append(m), **FAST)
    assert "calibrated level 0.5 " in " ".join(msgs)  # this sphere calibrates above 0.7 (test above)
    fixed = extract_mesh(g, texture=False, level=0.5, **FAST)
    assert torch.equal(bounded.faces, fixed.faces) and torch.allclose(bounded.vertices, fixed.vertices)
    msgs.clear()
    extract_mesh(g, texture=False, level="auto", max_level=5.0, progress=lambda m, f: msgs.append(m), **FAST)
    assert float(re.search(r"calibrated level ([0-9.]+)", " ".join(msgs)).group(1)) < 5.0

    def too_faint(*_a, **_k):
        raise ex.TooFaintToCalibrate("level='auto': the splat covers almost no pixel of its own renders (too faint)")

    monkeypatch.setattr(ex, "calibrated_level", too_faint)
    with caplog.at_level("WARNING", logger="lgm_core"):
        fallback = extract_mesh(g, texture=False, level="auto", max_level=0.5, **FAST)
    assert "using level 0.5" in caplog.text and torch.equal(fallback.faces, fixed.faces)
    with pytest.raises(ValueError, match="too faint"):
        extract_mesh(g, texture=False, level="auto", **FAST)
    for bad in (0, -1.0, "low", float("nan")):
        with pytest.raises(ValueError, match="max_level"):
            ex.check_arguments(level="auto", max_level=bad)
    with pytest.raises(ValueError, match="max_level bounds only level='auto'"):
        ex.check_arguments(level=0.6, max_level=0.7)  # a fixed level would silently ignore it

    def broken(*_a, **_k):
        raise ValueError("some other failure")

    monkeypatch.setattr(ex, "calibrated_level", broken)  # only "too faint" falls back to max_level
    with pytest.raises(ValueError, match="some other failure"):
        extract_mesh(g, texture=False, level="auto", max_level=0.5, **FAST)


def _edge_face_counts(faces: np.ndarray) -> np.ndarray:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)[1]


def _singular_vertices(faces: np.ndarray) -> int:
    """Vertices whose faces do not form one fan (their link is not a single cycle)."""
    links = {}
    for a, b, c in faces.tolist():
        for v, e in ((a, (b, c)), (b, (c, a)), (c, (a, b))):
            links.setdefault(v, []).append(e)
    bad = 0
    for edges in links.values():
        nbr = {}
        for x, y in edges:
            nbr.setdefault(x, []).append(y)
            nbr.setdefault(y, []).append(x)
        if any(len(ys) != 2 for ys in nbr.values()):
            bad += 1
            continue
        start = next(iter(nbr))
        seen, prev, cur = {start}, None, start
        while True:
            nxt = [y for y in nbr[cur] if y != prev][0]
            if nxt == start:
                break
            seen.add(nxt)
            prev, cur = cur, nxt
        bad += len(seen) != len(nbr)
    return bad


def test_pinched_vertices_are_split_into_one_vertex_per_fan():
    """Two closed tetrahedra sharing one vertex (a pinch): that vertex gets a copy for the second fan, a
    micrometre-scale step into it, so every vertex is one closed fan; a regular mesh is left as it is."""
    from lgm_core.mesh.extract import PINCH_OFFSET, _split_pinched_vertices

    tet = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], float)
    second = np.array([[0, 4, 5], [0, 6, 4], [0, 5, 6], [4, 6, 5]])  # shares only vertex 0
    f = np.concatenate([tet, second])
    assert _singular_vertices(f) == 1
    v2, f2 = _split_pinched_vertices(v, f)
    assert len(v2) == len(v) + 1 and _singular_vertices(f2) == 0
    assert (f2[:4] == tet).all() and set(f2[4:].reshape(-1).tolist()) == {4, 5, 6, 7}  # the first fan keeps 0
    step = np.linalg.norm(v2[7] - v[0])
    assert 0 < step < 2 * PINCH_OFFSET
    v3, f3 = _split_pinched_vertices(v[:4], tet)
    assert v3 is v[:4] or np.array_equal(v3, v[:4])
    assert np.array_equal(f3, tet)


def test_fill_holes_leaves_wrongly_wound_faces_alone():
    """A face wound against its neighbours has no rim (each of its edges has two faces): nothing is filled
    and no edge gets more than two faces."""
    trimesh = pytest.importorskip("trimesh")
    from lgm_core.mesh.extract import _fill_holes

    sphere = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces).copy()
    f[5] = f[5, [0, 2, 1]]
    v2, f2 = _fill_holes(v, f)
    assert len(f2) == len(f) and (_edge_face_counts(f2) == 2).all()


def test_fill_holes_closes_holes_that_touch_at_a_vertex():
    """Two holes of an icosphere that share one vertex (a pinch, as decimation's repair leaves them) are
    closed, one fan each: every edge then has two faces, the surface is genus 0 and consistently wound."""
    trimesh = pytest.importorskip("trimesh")
    from lgm_core.mesh.extract import _boundary_loops, _fill_holes

    sphere = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    pinch = int(f[0, 0])
    others = [i for i in range(1, len(f)) if pinch in f[i] and not (set(f[i]) - {pinch}) & set(f[0])]
    keep = np.ones(len(f), bool)
    keep[[0, others[0]]] = False  # two triangles meeting only at `pinch`: a figure-of-eight boundary
    v2, f2 = _fill_holes(v, f[keep])
    assert len(v2) == len(v) + 2 and len(f2) == len(f) - 2 + 6  # one centre and 3 faces per hole
    counts = _edge_face_counts(f2)
    assert (counts == 2).all()
    assert len(v2) - len(counts) + len(f2) == 2  # Euler characteristic of a sphere
    assert _singular_vertices(f2) == 0  # every vertex, the pinch too, is one closed fan again
    closed = trimesh.Trimesh(v2, f2, process=False)
    assert closed.is_winding_consistent and closed.is_watertight
    half = np.concatenate([f[keep][:, [0, 1]], f[keep][:, [1, 2]], f[keep][:, [2, 0]]])
    n = len(v)
    boundary = half[~np.isin(half[:, 0] * n + half[:, 1], half[:, 1] * n + half[:, 0])]
    loops = _boundary_loops(boundary)
    assert sorted(len(loop) for loop in loops) == [3, 3] and all(len(set(loop)) == len(loop) for loop in loops)
