"""The pure-PyTorch mesh stages (the GPU path, also run on the CPU here): marching cubes against
scikit-image's, the parallel QEM decimation against fast-simplification's, the axis-chart UV atlas,
the graph helpers against SciPy's, and extract_mesh with every PyTorch stage forced."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lgm_core.mesh import extract_mesh
from lgm_core.mesh.charts import chart_atlas
from lgm_core.mesh.decimate import decimate
from lgm_core.mesh.extract import resolve_methods
from lgm_core.mesh.mc import case_table, marching_cubes
from lgm_core.mesh.raster import rasterize
from lgm_core.mesh.synthetic import make_scene
from lgm_core.mesh.topology import connected_components, outside_mask, unique_edges

N = 48


def _grid():
    return torch.stack(torch.meshgrid(*[torch.arange(N, dtype=torch.float32)] * 3, indexing="ij"), -1)


def sphere_volume():
    return 15.0 - (_grid() - torch.tensor([23.3, 22.7, 24.1])).norm(dim=-1)


def torus_volume():
    p = _grid() - 23.5
    q = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - 14.0
    return 5.0 - torch.sqrt(q ** 2 + p[..., 2] ** 2)


def noise_volume(seed=0):
    """Smoothed noise: many blobs, thin necks and ambiguous cube faces; zero border."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 1, N, N, N, generator=gen)
    for _ in range(3):
        v = torch.nn.functional.avg_pool3d(v, 5, 1, 2)
    v = v[0, 0]
    v = (v - v.mean()) / v.std()
    v[0] = v[-1] = v[:, 0] = v[:, -1] = v[:, :, 0] = v[:, :, -1] = -10
    return v


VOLUMES = {"sphere": (sphere_volume, 0.0), "torus": (torus_volume, 0.0), "noise": (noise_volume, 0.3)}


def area_volume(v, f):
    v = v.double()
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return (float(0.5 * torch.cross(b - a, c - a, dim=-1).norm(dim=-1).sum()),
            float((a * torch.cross(b, c, dim=-1)).sum() / 6))


def closed_and_oriented(f: torch.Tensor, n: int) -> bool:
    """Every directed edge once, and its reverse present: closed, manifold edges, consistent winding."""
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key, rev = e[:, 0] * n + e[:, 1], e[:, 1] * n + e[:, 0]
    return torch.unique(key).numel() == key.numel() and bool(torch.isin(rev, key).all())


def test_case_table_is_generated_and_bounded():
    table, count = case_table()
    assert table.shape == (256, 5, 3) and int(count[0]) == 0 and int(count[255]) == 0
    assert int(count.max()) <= 5 and int(count[1]) == 1 and int(count[3]) == 2  # one corner, one cube edge


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_marching_cubes_matches_skimage(name):
    skimage = pytest.importorskip("skimage.measure")
    pytest.importorskip("scipy")
    from scipy.spatial import cKDTree

    make, level = VOLUMES[name]
    vol = make()
    v, f = marching_cubes(vol, level)
    vs, fs, _, _ = skimage.marching_cubes(vol.numpy(), level=level, allow_degenerate=False)
    # the same surface: vertices on the same crossed grid edges, same area and enclosed volume
    assert cKDTree(vs).query(v.numpy())[0].max() < 2e-3
    back = cKDTree(v.numpy()).query(vs)[0]  # Lewiner adds a few cube-centre points in ambiguous cases
    assert back.max() < 0.87 and (back > 2e-3).mean() < 1e-3
    area, volume = area_volume(v, f)
    area_sk, volume_sk = area_volume(torch.from_numpy(vs.copy()), torch.from_numpy(fs.astype(np.int64)))
    assert abs(area - area_sk) < 2e-3 * area_sk
    assert abs(volume - abs(volume_sk)) < 2e-3 * abs(volume_sk)
    # welded, watertight, outward (positive volume = counter-clockwise seen from outside)
    assert closed_and_oriented(f, len(v)) and volume > 0
    assert len(torch.unique(v, dim=0)) == len(v)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    assert float(torch.cross(b - a, c - a, dim=-1).norm(dim=-1).min()) > 0


def test_marching_cubes_edge_cases():
    v, f = marching_cubes(torch.zeros(8, 8, 8), 0.5)
    assert v.shape == (0, 3) and f.shape == (0, 3)
    one = torch.zeros(5, 5, 5)
    one[2, 2, 2] = 1.0
    v, f = marching_cubes(one, 0.5)  # an octahedron around the one inside sample
    assert len(v) == 6 and len(f) == 8 and closed_and_oriented(f, 6) and area_volume(v, f)[1] > 0
    with pytest.raises(ValueError):
        marching_cubes(torch.zeros(1, 4, 4), 0.5)


def sphere_mesh():
    v, f = marching_cubes(sphere_volume(), 0.0)
    return v, f


def test_decimation_keeps_a_closed_faithful_surface():
    v, f = sphere_mesh()
    vd, fd = decimate(v, f, 2000)
    assert 1900 <= len(fd) <= 2000
    assert closed_and_oriented(fd, len(vd))
    _, counts, _ = unique_edges(fd, len(vd))
    assert bool((counts == 2).all())
    r = (vd.double() - torch.tensor([23.3, 22.7, 24.1], dtype=torch.float64)).norm(dim=-1)
    assert float((r - 15.0).abs().max()) < 0.25  # voxels
    assert abs(area_volume(vd, fd)[1] - area_volume(v, f)[1]) < 0.01 * area_volume(v, f)[1]


def test_decimation_error_is_close_to_fast_simplification():
    fs = pytest.importorskip("fast_simplification")
    pytest.importorskip("scipy")
    from scipy.spatial import cKDTree

    v, f = marching_cubes(noise_volume(1), 0.3)
    target = len(f) // 8
    vd, fd = decimate(v, f, target)
    vf, ff = fs.simplify(v.numpy(), f.numpy().astype(np.int32), target_count=target, agg=7.0)
    assert len(fd) <= target
    tree = cKDTree(v.numpy())

    def err(verts, faces):  # mean distance of face centroids to the dense surface's vertices
        verts = np.asarray(verts, dtype=np.float64)
        return tree.query(verts[np.asarray(faces)].mean(1))[0].mean()

    assert err(vd.numpy(), fd.numpy()) < 1.25 * err(vf, ff)
    _, counts, _ = unique_edges(fd, len(vd))
    assert int((counts > 2).sum()) == 0  # the link condition: never a non-manifold edge


def test_chart_atlas_is_a_valid_uniform_atlas():
    v, f = decimate(*sphere_mesh(), 3000)
    size = 512
    vmap, faces, uvs = chart_atlas(v, f, size)
    assert faces.shape == f.shape and uvs.shape == (len(vmap), 2)
    assert torch.equal(vmap[faces], f)  # the split vertices are copies of the right ones
    assert float(uvs.min()) >= 0 and float(uvs.max()) <= 1
    xy = torch.stack([uvs[:, 0] * size, (1 - uvs[:, 1]) * size], -1)
    a, b, c = uvs[faces[:, 0]], uvs[faces[:, 1]], uvs[faces[:, 2]]
    uv_area = 0.5 * ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
    assert bool((uv_area > 0).all())  # counter-clockwise in UV space: nothing mirrored
    # orthographic, one texel density for all charts: uv area = density^2 * area * |n . axis|, with
    # the chart's axis one of the coordinate axes
    p = v.double()[f]
    n = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
    cosines = n.abs() / n.norm(dim=-1, keepdim=True)  # [F, 3]
    dens2 = uv_area.double()[:, None] / (0.5 * n.norm(dim=-1, keepdim=True) * cosines.clamp_min(1e-6))
    d = dens2.gather(1, cosines.argmax(1, keepdim=True)).median()
    assert float(((dens2 - d).abs().min(1).values / d).max()) < 1e-2
    # no overlaps: the rasterised coverage equals the total UV area (in texels)
    covered = int(rasterize(xy, torch.ones(len(xy)), faces, (size, size)).mask.sum())
    assert abs(covered - float(uv_area.sum()) * size * size) < 0.01 * covered


def test_tiny_texture_still_packs():
    v, f = decimate(*sphere_mesh(), 3000)
    _, _, uvs = chart_atlas(v, f, 16)
    assert float(uvs.min()) >= 0 and float(uvs.max()) <= 1


def test_graph_helpers_match_scipy():
    pytest.importorskip("scipy")
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    gen = torch.Generator().manual_seed(3)
    edges = torch.randint(0, 3000, (2500, 2), generator=gen)
    lab = connected_components(3000, edges)
    n_sp, lab_sp = cc(coo_matrix((np.ones(2500), (edges[:, 0].numpy(), edges[:, 1].numpy())), shape=(3000, 3000)),
                      directed=False)
    assert len(torch.unique(lab)) == n_sp
    # the same partition: equal labels exactly where SciPy's are equal
    pairs = torch.randint(0, 3000, (20000, 2), generator=gen)
    assert torch.equal(lab[pairs[:, 0]] == lab[pairs[:, 1]],
                       torch.from_numpy(lab_sp[pairs[:, 0].numpy()] == lab_sp[pairs[:, 1].numpy()]))
    perm = torch.randperm(50_000, generator=gen)  # a long path in random order: the slow case for propagation
    assert len(torch.unique(connected_components(50_000, torch.stack([perm[:-1], perm[1:]], 1)))) == 1
    empty = noise_volume(2) < 0.2
    labels, _ = ndimage.label(empty.numpy())
    assert torch.equal(outside_mask(empty), torch.from_numpy(labels == labels[0, 0, 0]))


def test_method_choice():
    assert resolve_methods("cuda") == ("torch", "torch", "charts")
    assert resolve_methods("cpu", "torch", "torch", "xatlas") == ("torch", "torch", "xatlas")
    with pytest.raises(ValueError, match="uv_method"):
        resolve_methods("cpu", uv_method="bogus")


def test_extract_mesh_with_every_torch_stage():
    g = make_scene("torus", 3000, scale_range=(0.02, 0.04), normal_scale_range=(0.008, 0.015))
    kw = dict(resolution=48, target_faces=3000, texture_size=128, device="cpu")
    ours = extract_mesh(g, mc_method="torch", decimation="torch", **kw)
    welded = extract_mesh(g, texture=False, mc_method="torch", decimation="torch", **kw)
    assert closed_and_oriented(welded.faces, welded.num_vertices) and welded.num_faces <= 3000
    if importlib.util.find_spec("skimage") and importlib.util.find_spec("fast_simplification"):
        ref = extract_mesh(g, texture=False, mc_method="skimage", decimation="fast_simplification", **kw)
        assert abs(welded.signed_volume() - ref.signed_volume()) < 0.02 * ref.signed_volume()
        assert 0.9 * ref.num_faces <= welded.num_faces
    assert ours.texture.shape == (128, 128, 3) and float(ours.uvs.min()) >= 0
    # the texture holds the colours: textured lookups agree with the vertex colours
    from lgm_core.mesh.texturing import sample_texture

    got = sample_texture(ours.texture, ours.uvs)
    assert float((got - ours.vertex_colors).abs().mean()) < 0.03


def test_bad_method_name_fails_before_any_work(monkeypatch):
    """A misspelt backend is reported at once, before the Gaussians are splatted."""
    import lgm_core.mesh.extract as extract

    g = make_scene("sphere", n=512, seed=0)

    def no_splat(*args, **kwargs):
        raise AssertionError("splatted before checking the method names")

    monkeypatch.setattr(extract, "splat_fields", no_splat)
    with pytest.raises(ValueError, match="mc_method"):
        extract_mesh(g, mc_method="marching", device="cpu")
    with pytest.raises(ValueError, match="uv_method"):
        extract_mesh(g, uv_method="xatlass", device="cpu")
