"""prepare-data: mesh files -> dataset layout (images, stored poses, manifest), on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lgm_core.geometry import focal_length
from lgm_core.cli import main as cli_main
from lgm_core.training import layout
from lgm_core.training.prepare import (MeshLoadError, RenderMesh, SourceMesh, ViewPlan, load_render_mesh,
                                       normalize_mesh, prepare_dataset, render_mesh_views)

trimesh = pytest.importorskip("trimesh")


def _marker_scene(path):
    """A grey box with a red ball on its +x side and a green ball on top (asymmetric, coloured)."""
    box = trimesh.creation.box((0.8, 0.4, 0.4))
    box.visual.vertex_colors = np.tile([128, 128, 128, 255], (len(box.vertices), 1))
    red = trimesh.creation.icosphere(2, radius=0.12)
    red.apply_translation((0.55, 0.0, 0.0))
    red.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(red.vertices), 1))
    green = trimesh.creation.icosphere(2, radius=0.12)
    green.apply_translation((0.0, 0.35, 0.0))
    green.visual.vertex_colors = np.tile([0, 255, 0, 255], (len(green.vertices), 1))
    trimesh.util.concatenate([box, red, green]).export(path)


def _textured_quad(folder):
    """A unit quad facing +z whose texture is red on the left half and blue on the right half."""
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[:, :8] = (255, 0, 0)
    tex[:, 8:] = (0, 0, 255)
    Image.fromarray(tex).save(folder / "quad.png")
    (folder / "quad.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd quad.png\n")
    (folder / "quad.obj").write_text(
        "mtllib quad.mtl\nv -0.5 -0.5 0\nv 0.5 -0.5 0\nv 0.5 0.5 0\nv -0.5 0.5 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nusemtl m\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")
    return folder / "quad.obj"


def test_pose_round_trip_and_convention():
    from lgm_core.cameras import orbit_camera

    c2w = orbit_camera(25.0, 70.0, 1.5)
    stored = layout.opengl_to_stored(c2w)
    assert torch.allclose(layout.stored_to_opengl(stored), c2w, atol=1e-6)
    # stored world is Blender's (z up): the camera above the object has positive z there
    assert stored[2, 3] > 0.5 and abs(float(stored[1, 3]) + float(c2w[2, 3])) < 1e-6
    # stored camera is OpenCV's: its +z axis (3rd column) points from the camera towards the origin
    forward = stored[:3, 2]
    assert float(forward @ -stored[:3, 3]) > 0


def test_prepare_cli_layout_ring_and_skips(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    _marker_scene(meshes / "markers.ply")
    sphere = trimesh.creation.icosphere(2)
    sphere.visual.face_colors = (40, 160, 200, 255)
    sphere.export(meshes / "sphere.glb")
    (meshes / "broken.obj").write_text("this is not a mesh\n")
    out = tmp_path / "data"
    rc = cli_main(["prepare-data", str(meshes), "-o", str(out), "--views", "8", "--ring", "4", "--size", "48",
                   "--device", "cpu"])
    assert rc == 0
    manifest = layout.DatasetManifest.read(out)
    assert manifest.size == 48 and manifest.ring == 4
    assert sorted(o.id for o in manifest.objects) == ["markers", "sphere"]  # broken one skipped
    for obj in manifest.objects:
        assert obj.num_views == 8 and len(obj.views) == 8
        ring_az = [v.azimuth for v in obj.views[:4]]
        assert all(v.elevation == 0.0 for v in obj.views[:4])
        steps = np.diff(np.unwrap(np.radians(ring_az)))
        np.testing.assert_allclose(np.degrees(steps), 90.0, atol=1e-3)
        for i in range(8):
            img = np.asarray(Image.open(layout.rgb_path(out / obj.id, i)))
            assert img.shape == (48, 48, 4) and img[..., 3].max() == 255 and img[0, 0, 3] == 0
            pose = layout.stored_to_opengl(layout.read_pose(layout.pose_path(out / obj.id, i)))
            assert abs(float(pose[:3, 3].norm()) - 1.5) < 1e-4
    # a second run keeps what is complete and renders nothing again
    rc = cli_main(["prepare-data", str(meshes), "-o", str(out), "--views", "8", "--ring", "4", "--size", "48",
                   "--device", "cpu"])
    assert rc == 0
    assert len(layout.DatasetManifest.read(out).objects) == 2


def _three_balls(path):
    balls = []
    for centre, colour in (((0.45, 0, 0), (255, 0, 0)), ((0, 0.4, 0), (0, 255, 0)), ((0, 0, 0.45), (0, 0, 255))):
        b = trimesh.creation.icosphere(2, radius=0.07)
        b.apply_translation(centre)
        b.visual.vertex_colors = np.tile([*colour, 255], (len(b.vertices), 1))
        balls.append(b)
    trimesh.util.concatenate(balls).export(path)


def test_marker_lands_where_the_stored_pose_projects_it(tmp_path):
    """The red ball (+x) appears at the pixel the stored pose says, after the loader's conversion."""
    _three_balls(tmp_path / "m.ply")
    out = tmp_path / "d"
    rep = prepare_dataset([SourceMesh(tmp_path / "m.ply")], out, plan=ViewPlan(views=8, ring=4, elevations=(-30, 40)),
                          size=96, device="cpu", supersample=1)
    assert rep.written == 1
    mesh = normalize_mesh(load_render_mesh(tmp_path / "m.ply"))
    red = (mesh.colors[:, 0, 0] > 0.9) & (mesh.colors[:, 0, 1] < 0.1)
    red_centre = mesh.corners[red].reshape(-1, 3).mean(0)
    f = focal_length(96, 49.1)
    hits = 0
    for i in range(8):
        img = np.asarray(Image.open(layout.rgb_path(out / "m", i))).astype(np.float32) / 255
        mask = (img[..., 0] > 0.3) & (img[..., 1] < 0.1) & (img[..., 2] < 0.1) & (img[..., 3] > 0.5)
        c2w = layout.stored_to_opengl(layout.read_pose(layout.pose_path(out / "m", i)))
        p = torch.linalg.inv(c2w) @ torch.cat([red_centre, torch.ones(1)])
        if mask.sum() < 20:  # hidden behind another ball
            continue
        u = f * p[0] / -p[2] + 48
        v = 48 - f * p[1] / -p[2]
        ys, xs = np.nonzero(mask)
        assert abs(xs.mean() + 0.5 - float(u)) < 1.5 and abs(ys.mean() + 0.5 - float(v)) < 1.5
        hits += 1
    assert hits >= 6


def test_textured_obj_colours(tmp_path):
    obj = _textured_quad(tmp_path)
    mesh = normalize_mesh(load_render_mesh(obj), 0.5)
    assert len(mesh.textures) == 1
    from lgm_core.cameras import Cameras

    rgb, alpha = render_mesh_views(mesh, Cameras.orbit(0.0, [0.0], size=64), shading=False, supersample=1)
    left = rgb[0, 32, 20]
    right = rgb[0, 32, 44]
    assert alpha[0, 32, 20] == 1 and alpha[0, 32, 44] == 1
    assert left[0] > 0.9 and left[2] < 0.1  # red on the left (the +x side is on the right from the front)
    assert right[2] > 0.9 and right[0] < 0.1


def test_bad_inputs(tmp_path):
    with pytest.raises(MeshLoadError):
        load_render_mesh(tmp_path / "missing.obj")
    flat = RenderMesh(torch.zeros(2, 3, 3), torch.ones(2, 3, 3))
    with pytest.raises(MeshLoadError, match="zero size"):
        normalize_mesh(flat)
    with pytest.raises(ValueError, match="multiple of 4"):
        ViewPlan(views=8, ring=6)
    with pytest.raises(ValueError, match="two values"):
        ViewPlan(views=8, ring=4, elevations=(10.0, 20.0, 30.0))


def test_sources_file_carries_licences(tmp_path):
    _marker_scene(tmp_path / "a.ply")
    (tmp_path / "sources.json").write_text(json.dumps([
        {"path": "a.ply", "id": "chair#1", "name": "Chair", "license": "CC0-1.0", "author": "Someone", "split": "test"}]))
    out = tmp_path / "d"
    rc = cli_main(["prepare-data", "--sources", str(tmp_path / "sources.json"), "-o", str(out), "--views", "4",
                   "--ring", "4", "--size", "32", "--device", "cpu"])
    assert rc == 0
    (entry,) = layout.DatasetManifest.read(out).objects
    assert entry.id == "chair_1" and entry.license == "CC0-1.0" and entry.author == "Someone" and entry.split == "test"


def test_merge_shards(tmp_path):
    from lgm_core.training.prepare import merge_datasets

    _three_balls(tmp_path / "a.ply")
    _marker_scene(tmp_path / "b.ply")
    plan = ViewPlan(views=4, ring=4)
    prepare_dataset([SourceMesh(tmp_path / "a.ply")], tmp_path / "s0", plan=plan, size=32, device="cpu")
    prepare_dataset([SourceMesh(tmp_path / "b.ply")], tmp_path / "s1", plan=plan, size=32, device="cpu")
    merged = merge_datasets([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    assert sorted(o.id for o in merged.objects) == ["a", "b"]
    assert layout.rgb_path(tmp_path / "all" / "b", 3).is_file()
    assert layout.DatasetManifest.read(tmp_path / "all").objects == merged.objects
