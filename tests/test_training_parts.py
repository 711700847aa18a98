"""Training building blocks: augmentation (spec definitions), views and split, samples, losses,
metrics, schedule, checkpoints, configs, and config metadata in saved weights."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from lgm_core.cameras import LGM_RADIUS, default_input_cameras, orbit_camera, plucker_rays, plucker_rays_batched
from lgm_core.training import augment
from lgm_core.training.config import TrainConfig, load_config
from lgm_core.training.dataset import MultiViewDataset, SampleStream, choose_views, load_objects, split_objects
from lgm_core.training.layout import ObjectEntry, opengl_to_stored, stored_to_opengl
from training_fixtures import synthetic_dataset  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------- augmentation
def test_warp_coordinates_follow_the_definition():
    gen = torch.Generator().manual_seed(0)
    for size in (64, 256, 37):
        for K in (8, 12, 16):
            xs = augment.warp_coordinates(size, K, 0.5, gen)
            assert xs.shape == (size,)
            assert (xs[1:] >= xs[:-1]).all(), "the warp must be monotone"
            assert xs[0] == -1.0 and xs[-1] == 1.0 and xs.abs().max() <= 1.0
    # strength 0: knots at round-down of the even spacing; each span runs between even grid values
    xs = augment.warp_coordinates(64, 9, 0.0)
    knots = (torch.linspace(0, 1, 9) * 64).long()
    knots[-1] = 64
    grid = torch.linspace(-1, 1, 9)
    for i in range(8):
        span = xs[knots[i]:knots[i + 1]]
        assert torch.allclose(span, torch.linspace(float(grid[i]), float(grid[i + 1]), len(span)))


def test_warp_knot_jitter_bound():
    """Each knot moves by at most strength/2 of a knot spacing, so pixel spans keep their order."""
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        xs = augment.warp_coordinates(256, 8, 0.5, gen)
        # values at the even grid levels sit where the jittered knots are
        grid = torch.linspace(-1, 1, 8)
        for g in grid[1:-1]:
            where = torch.nonzero(torch.isclose(xs, g)).flatten().float()
            nominal = (g + 1) / 2 * 256
            assert (where - nominal).abs().min() <= 0.25 * 256 / 7 + 1.5


def test_grid_distortion_shapes_and_identity_like_range():
    img = torch.rand(3, 3, 64, 64)
    gen = torch.Generator().manual_seed(1)
    out = augment.grid_distortion(img, 0.5, gen)
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, img)
    grids = augment.distortion_grids(3, 64, 48, 0.5, torch.Generator().manual_seed(2))
    assert grids.shape == (3, 64, 48, 2)
    assert (grids[..., 0][:, :, 1:] >= grids[..., 0][:, :, :-1]).all()  # x warp monotone along columns
    assert (grids[..., 1][:, 1:] >= grids[..., 1][:, :-1]).all()  # y warp monotone along rows


def test_rotvec_to_matrix():
    R = augment.rotvec_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert torch.allclose(R, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6)
    assert torch.allclose(augment.rotvec_to_matrix(torch.zeros(3)), torch.eye(3))


def test_camera_jitter_bounds():
    poses = default_input_cameras()[1:].repeat(200, 1, 1)
    out = augment.orbit_camera_jitter(poses, 0.1, torch.Generator().manual_seed(0))
    R = out[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(out[:, :3, 3].norm(dim=-1), torch.full((600,), LGM_RADIUS), atol=1e-5)  # about the origin
    rel = R @ poses[:, :3, :3].transpose(1, 2)  # the applied rotation
    angle = torch.rad2deg(torch.acos(((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= math.hypot(18.0, 9.0) + 1e-3 and angle.max() > 10.0
    # the position moves on the orbit sphere: azimuth change ≤ 18° (up axis), elevation change ≤ 9°
    p0, p1 = poses[:, :3, 3], out[:, :3, 3]
    el = torch.rad2deg(torch.asin((p1[:, 1] / LGM_RADIUS).clamp(-1, 1)))
    assert el.abs().max() <= 9.0 + 1e-3
    d_az = torch.rad2deg(torch.atan2(p1[:, 0], p1[:, 2]) - torch.atan2(p0[:, 0], p0[:, 2]))
    d_az = (d_az + 180) % 360 - 180
    assert d_az.abs().max() <= 18.0 + 0.5


def test_sample_augmentation_never_touches_view0(synthetic_dataset):
    run = load_config("tiny-test", {"prob_grid_distortion": 1.0, "prob_cam_jitter": 1.0})
    objects = load_objects(synthetic_dataset)
    train = MultiViewDataset(synthetic_dataset, objects, run.model, run.train, training=True)
    plain = MultiViewDataset(synthetic_dataset, objects, run.model,
                             TrainConfig(**{**run.train.__dict__, "prob_grid_distortion": 0.0, "prob_cam_jitter": 0.0}))
    a, b = train[(0, 7)], plain[(0, 7)]
    assert torch.equal(a.input_images[0], b.input_images[0]) and torch.equal(a.input_c2w[0], b.input_c2w[0])
    assert not torch.allclose(a.input_images[1:], b.input_images[1:])
    assert not torch.allclose(a.input_c2w[1:], b.input_c2w[1:])
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.images, b.images)  # supervision untouched
    again = train[(0, 7)]
    assert torch.equal(again.input_images, a.input_images)  # reproducible from the seed


# ---------------------------------------------------------------------------------------- views, split, order
def test_choose_views_faithful_and_orbit():
    rng = random.Random(0)
    v = choose_views(range(100), 12, "faithful", rng=rng)
    assert len(set(v[:4])) == 4 and all(36 <= i <= 72 for i in v[:4])
    assert sorted(v[4:]) == list(range(100))
    assert choose_views(range(100), 12, "faithful")[:5] == [36, 40, 44, 48, 52]
    small = choose_views(range(20), 8, "faithful", rng=rng)  # range 36..72 absent: any views
    assert len(set(small[:4])) == 4 and all(0 <= i < 20 for i in small)
    for _ in range(20):
        o = choose_views(range(32), 8, "orbit", ring=16, rng=rng)
        k = o[0]
        assert o[:4] == [k, k + 4, k + 8, k + 12] and 0 <= k < 4
        assert sorted(o[4:]) == sorted(set(range(32)) - set(o[:4]))
    assert choose_views(range(16), 8, "orbit", ring=16)[:4] == [0, 4, 8, 12]
    with pytest.raises(ValueError):
        choose_views(range(10), 8, "orbit", ring=10)


def test_split_is_seeded_and_respects_fixed_splits():
    objs = [ObjectEntry(id=f"o{i}", num_views=8) for i in range(40)]
    objs[0].split, objs[1].split, objs[2].split = "test", "val", "train"
    t1, v1 = split_objects(objs, 0.1, seed=3)
    t2, v2 = split_objects(list(reversed(objs)), 0.1, seed=3)
    assert {o.id for o in v1} == {o.id for o in v2} and {o.id for o in t1} == {o.id for o in t2}
    ids_t, ids_v = {o.id for o in t1}, {o.id for o in v1}
    assert "o0" not in ids_t | ids_v and "o1" in ids_v and "o2" in ids_t
    assert len(ids_v) == 1 + math.ceil(0.1 * 37) and not ids_t & ids_v and len(ids_t | ids_v) == 39
    assert {o.id for o in split_objects(objs, 0.1, seed=4)[1]} != ids_v
    t, v = split_objects(objs[3:5], 0.05)
    assert len(v) == 1 and len(t) == 1


def test_sample_stream_shards_and_resumes():
    single = SampleStream(5, 4, seed=1)
    ranks = [SampleStream(5, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for m in range(6):
        assert single.batch(m) == ranks[0].batch(m) + ranks[1].batch(m)
    later = SampleStream(5, 4, seed=1, start=3, stop=6)
    assert list(later) == [single.batch(m) for m in range(3, 6)]
    epoch0 = sorted(i for m in range(5) for i, _ in single.batch(m)[:1])  # 20 items = 4 epochs of 5
    assert len({s for m in range(5) for _, s in single.batch(m)}) == 20  # a seed per position
    assert sorted(i for i, _ in [single.item(p) for p in range(5)]) == list(range(5))
    assert epoch0


def test_samples_are_canonical_and_on_white(synthetic_dataset):
    run = load_config("tiny-test")
    ds = MultiViewDataset(synthetic_dataset, load_objects(synthetic_dataset), run.model, run.train, training=False)
    assert ds.mode == "orbit" and ds.ring == 16
    s = ds[1]
    assert s.input_images.shape == (4, 3, 64, 64) and s.images.shape == (6, 3, 64, 64) and s.masks.shape == (6, 1, 64, 64)
    assert torch.allclose(s.c2w[0], default_input_cameras()[0], atol=1e-5)
    assert torch.allclose(s.input_c2w, default_input_cameras(), atol=1e-4)  # ring views 0, 4, 8, 12
    corner = s.images[:, :, 0, 0]
    assert torch.allclose(corner, torch.ones_like(corner)) and s.masks[:, :, 0, 0].max() == 0
    assert torch.equal(s.input_images, s.images[:4])  # same size, no augmentation


def test_stored_pose_round_trip():
    c2w = orbit_camera(20.0, 35.0, 1.5)
    assert torch.allclose(stored_to_opengl(opengl_to_stored(c2w)), c2w, atol=1e-6)


def test_batched_rays_equal_reference_rays():
    c2w = torch.stack([orbit_camera(e, a, 1.5) for e, a in [(0, 0), (10, 90), (-20, 33), (45, 271)]])
    ref = plucker_rays(c2w, 32)
    out = plucker_rays_batched(c2w[None].expand(2, -1, -1, -1), 32)
    assert out.shape == (2, 4, 6, 32, 32)
    assert torch.allclose(out[0], ref, atol=1e-6) and torch.allclose(out[1], ref, atol=1e-6)


# ---------------------------------------------------------------------------------------- losses, metrics
def test_lpips_structure_and_weights_round_trip(tmp_path):
    from lgm_core.training.losses import LPIPS, load_lpips, save_lpips_weights

    torch.manual_seed(0)
    model = LPIPS()
    for lin in model.lins:
        lin.weight.data.abs_()
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    d = model(a, b)
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(model(a, a), torch.zeros(2), atol=1e-6)
    path = save_lpips_weights(model, tmp_path / "lpips.safetensors")
    loaded = load_lpips(path)
    assert torch.allclose(loaded(a, b), d)
    with pytest.raises(FileNotFoundError):
        load_lpips(tmp_path / "nothing.safetensors")


def test_lpips_missing_weights_says_so_once(tmp_path, monkeypatch, caplog):
    from lgm_core.training import losses

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(losses, "_lpips_package_lin", lambda: None)
    with caplog.at_level(logging.WARNING, logger="lgm_core.training"):
        assert losses.load_lpips(None) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "lambda_lpips = 0" in lines[0]


def test_lpips_warmup_schedule():
    from lgm_core.training.losses import lpips_weight

    assert [lpips_weight(s, 1.0, 3, 0) for s in (0, 2, 3, 10)] == [0.0, 0.0, 1.0, 1.0]
    assert [lpips_weight(s, 2.0, 2, 4) for s in (1, 2, 3, 5, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]


def test_reconstruction_loss_terms():
    from lgm_core.training.losses import reconstruction_loss

    pred, gt = torch.full((1, 2, 3, 8, 8), 0.5), torch.ones(1, 2, 3, 8, 8)
    t = reconstruction_loss(pred, torch.zeros(1, 2, 1, 8, 8), gt, torch.ones(1, 2, 1, 8, 8))
    assert math.isclose(float(t["mse"]), 0.25) and math.isclose(float(t["mse_alpha"]), 1.0)
    assert math.isclose(float(t["loss"]), 1.25) and float(t["lpips"]) == 0.0


def test_ssim_matches_scikit_image_and_psnr():
    from skimage.metrics import structural_similarity

    from lgm_core.training.metrics import psnr, ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 48, generator=g)
    b = (a + 0.1 * torch.randn(3, 40, 48, generator=g)).clamp(0, 1)
    ref = structural_similarity(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=2,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert abs(float(ssim(a, b)) - ref) < 1e-4
    assert math.isclose(float(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1))), 20.0, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------- schedule
def test_onecycle_schedule_matches_the_original():
    from lgm_core.training.schedule import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=4e-4, betas=(0.9, 0.95), weight_decay=0.05)
    sched = build_scheduler(opt, TrainConfig(warmup_steps=30), 100)
    lrs, b1 = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        b1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0], 4e-4 / 25, rel_tol=1e-6) and math.isclose(max(lrs), 4e-4, rel_tol=1e-6)
    assert int(np.argmax(lrs)) == 29 and math.isclose(lrs[-1], 4e-4 / 25 / 1e4, rel_tol=1e-3)
    assert math.isclose(b1[0], 0.95) and math.isclose(min(b1), 0.85) and math.isclose(b1[-1], 0.95, rel_tol=1e-3)
    assert opt.param_groups[0]["betas"][1] == 0.95


# ---------------------------------------------------------------------------------------- configs, weights
def test_config_presets_and_json(tmp_path):
    assert load_config("big").train.num_views == 8 and load_config("small").train.num_views == 12
    assert load_config("tiny").train.batch_size == 16
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps({"preset": "tiny", "input_size": 128, "output_size": 96, "splat_size": 32,
                               "batch_size": 3, "down_channels": [32, 64, 128, 256, 512]}))
    run = load_config(str(cfg), {"lr": 1e-4})
    assert run.model.input_size == 128 and run.model.output_size == 96 and run.model.down_channels[-1] == 512
    assert run.train.batch_size == 3 and run.train.lr == 1e-4 and run.name == "mine"
    cfg.write_text(json.dumps({"input_sise": 128}))
    with pytest.raises(ValueError, match="unknown config fields"):
        load_config(str(cfg))
    with pytest.raises(ValueError, match="splat_size"):
        load_config("tiny-test", {"splat_size": 16})
    with pytest.raises(ValueError, match="unknown config"):
        load_config("nonexistent")


def test_custom_config_survives_save_and_load(tmp_path):
    from lgm_core import load_lgm
    from lgm_core.models.lgm import LGM
    from lgm_core.weights import read_safetensors_header, save_lgm

    cfg = load_config("tiny-test").model
    model = LGM(cfg)
    path = save_lgm(model, tmp_path / "custom.safetensors")
    _, meta = read_safetensors_header(path)
    assert "lgm_config" in meta
    loaded = load_lgm(path, device="cpu")
    assert loaded.config == cfg and loaded.config.input_size == 64 and loaded.config.output_size == 64
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
