"""LGM architecture and numerics against the manifests and the original's tiny reference."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lgm_core.testing import tiny_lgm_config
from lgm_core import LGM, LGMConfig
from lgm_core.cameras import default_input_cameras, plucker_rays
from lgm_core.models.lgm import PRESETS, preset_name
from lgm_core.models.unet import GroupNorm32
from ref_utils import expand_compact_weights

ATOL = 1e-4
MICRO = tiny_lgm_config()  # ~1 M parameters, same blocks as the presets


@pytest.mark.parametrize("name", ["big", "small", "lrm", "tiny"])
def test_state_dict_matches_manifest(name, spec_dir):
    manifest = json.loads((spec_dir / f"lgm_state_dict_{name}.json").read_text())
    with torch.device("meta"):
        model = LGM.from_preset(name)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == manifest["keys"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["num_params"]


@pytest.mark.parametrize("name", ["big", "small", "tiny"])
def test_config_inferred_from_state_dict(name):
    with torch.device("meta"):
        sd = LGM.from_preset(name).state_dict()
    config = LGMConfig.from_state_dict(sd)
    assert config.same_architecture(PRESETS[name])
    assert preset_name(config) == name
    assert config.splat_size == PRESETS[name].splat_size


def test_custom_config_inferred():
    cfg = MICRO
    with torch.device("meta"):
        sd = LGM(cfg).state_dict()
    inferred = LGMConfig.from_state_dict(sd)
    assert inferred.same_architecture(cfg) and preset_name(inferred) is None


def test_bad_configs_rejected():
    with pytest.raises(ValueError, match="splat_size"):
        LGMConfig(splat_size=128)  # lrm layout gives 64
    with pytest.raises(ValueError, match="multiple of 32"):
        LGMConfig(down_channels=(48, 128, 256, 512, 1024, 1024))
    with pytest.raises(ValueError, match="unknown LGM preset"):
        LGM.from_preset("huge")


@pytest.fixture(scope="module")
def tiny(ref_dir):
    folder = ref_dir / "lgm_tiny"
    model = LGM.from_preset("tiny")
    model.load_state_dict(expand_compact_weights(folder), strict=True)
    model.eval().requires_grad_(False)
    inputs = load_file(str(folder / "input.safetensors"))
    outputs = load_file(str(folder / "output.safetensors"))
    return model, inputs, outputs


def test_cameras_and_rays_match_reference(tiny):
    _, inputs, _ = tiny
    poses = default_input_cameras()
    assert torch.allclose(poses, inputs["cam_poses"], atol=1e-7)
    rays = plucker_rays(poses, 256, 49.1)
    assert rays.shape == (4, 6, 256, 256)
    assert torch.allclose(rays, inputs["rays"], atol=1e-6)


def test_prepare_inputs_matches_reference(tiny):
    model, inputs, _ = tiny
    x = model.prepare_inputs(inputs["images"][None])
    assert torch.allclose(x, inputs["input"], atol=1e-6)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_forward_gaussians_matches_reference(tiny, backend):
    model, inputs, outputs = tiny
    model.set_attention(backend)
    with torch.no_grad():
        out = model.forward_gaussians(inputs["input"])
        raw = model.conv(model.unet(inputs["input"][0]))
    model.set_attention("sdpa")
    assert out.shape == (1, 16384, 14) and out.dtype == torch.float32
    assert (out - outputs["gaussians"]).abs().max() <= ATOL
    assert (raw - outputs["raw"]).abs().max() <= ATOL


def test_reconstruct_resizes_and_returns_gaussians(tiny):
    model, inputs, outputs = tiny
    big_images = F.interpolate(inputs["images"], size=(512, 512), mode="nearest")  # exact 2x upscale
    g = model.reconstruct(big_images[None])
    # bilinear 512 -> 256 of a nearest 2x upscale averages identical pixels: same input as the reference
    assert g.positions.shape == (1, 16384, 3) and g.normalized_rotations
    assert (g.to_lgm_tensor() - outputs["gaussians"]).abs().max() <= 1e-3
    with pytest.raises(ValueError, match="exactly 4 views"):
        model.reconstruct(torch.rand(1, 3, 3, 256, 256))
    with pytest.raises(ValueError, match="square"):
        model.reconstruct(torch.rand(1, 4, 3, 256, 200))
    with pytest.raises(ValueError, match="cameras"):
        model.reconstruct(torch.rand(1, 4, 3, 64, 64), cameras=torch.eye(4).expand(3, 4, 4))


def test_reconstruct_custom_cameras_equal_default(tiny):
    _, inputs, _ = tiny
    torch.manual_seed(0)
    model = LGM(MICRO).eval()
    images = inputs["images"][None][..., ::4, ::4].contiguous()
    a = model.reconstruct(images)
    b = model.reconstruct(images, cameras=default_input_cameras(0.0))
    assert torch.equal(a.positions, b.positions)
    c = model.reconstruct(images, elevation=20.0)
    assert not torch.equal(a.positions, c.positions)


def test_legacy_rotation_mode(tiny):
    model, inputs, outputs = tiny
    legacy = LGM.from_preset("tiny", rotation_mode="legacy")
    legacy.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = legacy.eval().forward_gaussians(inputs["input"])
        raw = legacy.conv(legacy.unet(inputs["input"][0]))
    raw = raw.reshape(1, 4, 14, 64, 64).permute(0, 1, 3, 4, 2).reshape(1, -1, 14)
    expected = F.normalize(raw[..., 7:11], dim=1)  # across Gaussians, the pre-fix behaviour
    assert torch.allclose(out[..., 7:11], expected, atol=1e-6)
    assert torch.allclose(out[..., :7], outputs["gaussians"][..., :7], atol=ATOL)
    assert out[..., 7:11].norm(dim=-1).max() < 0.1  # tiny quaternions, as the spec says
    with pytest.raises(ValueError):
        LGM.from_preset("tiny", rotation_mode="sideways")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_groupnorm_computes_in_fp32(dtype):
    torch.manual_seed(0)
    gn = GroupNorm32(64)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = (torch.randn(2, 64, 8, 8) * 50 + 300).to(dtype)  # large mean: fp16 statistics would be off
    gn = gn.to(dtype)
    expected = F.group_norm(x.float(), 32, gn.weight.float(), gn.bias.float(), 1e-5).to(dtype)
    got = gn(x)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_low_precision_forward_close_to_fp32():
    torch.manual_seed(0)
    cfg = MICRO
    model = LGM(cfg).eval()
    x = torch.randn(1, 4, 9, 256, 256)
    with torch.no_grad():
        ref = model.forward_gaussians(x)
        low = LGM(cfg).eval()
        low.load_state_dict(model.state_dict())
        out = low.to(torch.bfloat16).forward_gaussians(x)
    assert out.dtype == torch.float32
    err = (out - ref).abs()
    assert err.median() < 5e-3  # bf16 rounding noise
    non_rot = torch.cat([err[..., :7], err[..., 11:]], -1)
    assert non_rot.max() < 0.1  # rotations of near-zero quaternions can flip far; everything else stays close
    assert torch.allclose(out[..., 7:11].norm(dim=-1), torch.ones(1), atol=1e-5)  # normalised in fp32
