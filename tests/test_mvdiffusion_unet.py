"""MultiViewUNet: checkpoint-exact state dicts (real configs on the meta device), parity with the tiny
references of the original code, and the MVDream camera conditioning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lgm_core.cameras import default_input_cameras
from lgm_core.mvdiffusion.cameras import mv_camera_matrices, mv_view_poses
from lgm_core.views import Views, ViewsError, to_lgm_order
from lgm_core.mvdiffusion.unet import MultiViewUNet, timestep_embedding

KINDS = ["mvdream", "imagedream"]


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_matches_manifest(spec_dir, kind):
    manifest = json.loads((spec_dir / f"mv_unet_state_dict_{kind}.json").read_text())
    with torch.device("meta"):
        model = MultiViewUNet(**manifest["config"])
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == manifest["keys"]  # same keys, same shapes, same order
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["num_params"]


def test_hub_config_files_construct(spec_dir):
    """The hub unet/config.json (with its _class_name/_diffusers_version keys) is accepted as is."""
    cfg = json.loads((spec_dir / "mvdream_configs" / "imagedream-ipmv-diffusers" / "unet" / "config.json").read_text())
    with torch.device("meta"):
        model = MultiViewUNet(**cfg)
    assert model.ip_dim == 16 and model.camera_dim == 16


def _load_ref(ref_dir, kind):
    folder = ref_dir / f"mv_unet_tiny_{kind}"
    cfg = json.loads((folder / "config.json").read_text())
    model = MultiViewUNet(**cfg["unet_config"])
    model.load_state_dict(load_file(str(folder / "weights.safetensors")), strict=True)
    return (model.eval(), cfg, load_file(str(folder / "inputs.safetensors")),
            load_file(str(folder / "output.safetensors"))["output"],
            load_file(str(folder / "intermediates.safetensors")))


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_reference_parity(ref_dir, kind):
    model, cfg, inp, expected, inter = _load_ref(ref_dir, kind)
    captured = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, a, o, name=name: captured.__setitem__(name, o)) for name in ("time_embed", "camera_embed")]
    for i, blk in enumerate(model.input_blocks):
        hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(f"input_blocks.{i}", o)))
    hooks.append(model.middle_block.register_forward_hook(lambda m, a, o: captured.__setitem__("middle_block", o)))
    if kind == "imagedream":
        hooks.append(model.image_embed.register_forward_hook(lambda m, a, o: captured.__setitem__("image_embed", o)))
    x_before = inp["x"].clone()
    with torch.no_grad():
        out = model(inp["x"], inp["timesteps"], inp["context"], camera=inp["camera"],
                    num_frames=cfg["num_frames"], ip=inp.get("ip"), ip_img=inp.get("ip_img"))
    for h in hooks:
        h.remove()
    assert torch.equal(inp["x"], x_before), "forward must not modify x in place"
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() < 1e-4
    torch.testing.assert_close(timestep_embedding(inp["timesteps"], 32), inter["t_emb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(captured["time_embed"], inter["time_embed_out"], atol=1e-4, rtol=0)
    torch.testing.assert_close(captured["camera_embed"], inter["camera_embed_out"], atol=1e-4, rtol=0)
    for i in range(len(model.input_blocks)):
        torch.testing.assert_close(captured[f"input_blocks.{i}"], inter[f"input_blocks.{i}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(captured["middle_block"], inter["middle_block"], atol=1e-4, rtol=0)
    if kind == "imagedream":
        torch.testing.assert_close(captured["image_embed"], inter["image_embed_out"], atol=1e-4, rtol=0)


def test_prepared_forward_equals_forward(ref_dir):
    model, cfg, inp, expected, _ = _load_ref(ref_dir, "imagedream")
    with torch.no_grad():
        cam_emb, ctx = model.prepare_conditions(inp["context"], inp["camera"], inp["ip"])
        out = model.forward_prepared(inp["x"], inp["timesteps"], cam_emb, ctx, cfg["num_frames"], inp["ip_img"])
    assert (out - expected).abs().max().item() < 1e-4


def test_joint_attention_matters(ref_dir):
    """Running with num_frames=1 (per-frame attention) must give a clearly different result."""
    model, cfg, inp, expected, _ = _load_ref(ref_dir, "mvdream")
    with torch.no_grad():
        out = model(inp["x"], inp["timesteps"], inp["context"], camera=inp["camera"], num_frames=1)
    assert (out - expected).abs().max().item() > 1e-2


def test_bad_arguments(ref_dir):
    model, cfg, inp, _, _ = _load_ref(ref_dir, "imagedream")
    with pytest.raises(ValueError, match="ip"):
        model(inp["x"], inp["timesteps"], inp["context"], camera=inp["camera"], num_frames=5)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        model(inp["x"][:7], inp["timesteps"][:7], inp["context"][:7], camera=inp["camera"][:7], num_frames=5,
              ip=inp["ip"][:7], ip_img=inp["ip_img"])
    with pytest.raises(ValueError, match="transformer_depth"):
        MultiViewUNet(model_channels=32, channel_mult=[1], context_dim=8, num_head_channels=16, transformer_depth=2)


# ---------------------------------------------------------------------------------------------- cameras


def test_camera_references(ref_dir):
    ref = load_file(str(ref_dir / "mv_cameras.safetensors"))
    close = dict(atol=1e-6, rtol=0)
    torch.testing.assert_close(mv_camera_matrices(4, 0.0), ref["mvdream_f4_elev0_azi0"], **close)
    torch.testing.assert_close(mv_camera_matrices(4, 0.0, extra_view=True), ref["imagedream_f4_elev0_azi0_extra_view"], **close)
    torch.testing.assert_close(mv_camera_matrices(8, 0.0), ref["lgm_copy_f8_elev0_azi0"], **close)
    torch.testing.assert_close(mv_camera_matrices(4, 0.0, blender_coord=False), ref["lgm_copy_f4_elev0_azi0_noblender"], **close)
    # sign mapping: our positive elevation = above = the hub copy's convention; LGM's copy is negated
    torch.testing.assert_close(mv_camera_matrices(4, 15.0), ref["hub_copy_f4_elev15_azi0"], **close)
    torch.testing.assert_close(mv_camera_matrices(4, -15.0), ref["lgm_copy_f4_elev15_azi0"], **close)
    assert mv_camera_matrices(4, 15.0).view(4, 4, 4)[0, 2, 3] > 0  # blender z of the camera: above


@pytest.mark.parametrize("elevation", [0.0, 20.0, -10.0])
def test_lgm_handoff_cameras(elevation):
    poses = mv_view_poses(4, elevation)
    torch.testing.assert_close(to_lgm_order(poses), default_input_cameras(elevation), atol=1e-6, rtol=0)
    imgs = torch.rand(8, 32, 32, 3)
    views = Views.from_multiview(imgs, elevation)
    assert views.images.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(views.images[1, 0], imgs[4 + 1].permute(2, 0, 1))
    torch.testing.assert_close(views.images[0, 3], imgs[0].permute(2, 0, 1))
    torch.testing.assert_close(views.cameras, default_input_cameras(elevation))
    with pytest.raises(ViewsError):
        Views.from_multiview(torch.rand(6, 32, 32, 3))
