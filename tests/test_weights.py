"""Checkpoint loading: strictness, preset detection, rotation mode, safety, clear errors."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from lgm_core.testing import tiny_lgm_config
from lgm_core import LGM, load_lgm
from lgm_core.weights import CheckpointError, hub_url, read_safetensors_header, save_lgm
from ref_utils import expand_compact_weights

MICRO = tiny_lgm_config()  # ~1 M parameters, same blocks as the presets


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "micro_fixrot.safetensors"
    model = LGM(MICRO)
    save_lgm(model, path, dtype=torch.float16)
    return path, model


def test_load_tiny_reference_checkpoint_reproduces_output(ref_dir, tmp_path):
    folder = ref_dir / "lgm_tiny"
    path = tmp_path / "model_fp16_fixrot.safetensors"  # official name -> fixrot behaviour
    save_file(expand_compact_weights(folder), str(path))
    model = load_lgm(path, device="cpu")
    assert model.preset == "tiny" and model.rotation_mode == "per_gaussian" and model.dtype == torch.float32
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = load_file(str(folder / "input.safetensors"))["input"]
    expected = load_file(str(folder / "output.safetensors"))["gaussians"]
    with torch.no_grad():
        assert (model.forward_gaussians(x) - expected).abs().max() <= 1e-4
    assert load_lgm(tmp_path, device="cpu").preset == "tiny"  # folder source finds the official name


def test_custom_architecture_and_dtype(micro_file):
    path, model = micro_file
    loaded = load_lgm(path, device="cpu", dtype=torch.bfloat16)
    assert loaded.config.same_architecture(MICRO) and loaded.preset is None
    assert loaded.dtype == torch.bfloat16
    sd = loaded.state_dict()
    assert list(sd) == list(model.state_dict())
    assert torch.equal(sd["conv.weight"], model.conv.weight.detach().half().to(torch.bfloat16))


def test_rotation_mode_from_names_and_metadata(tmp_path, micro_file, caplog):
    path, model = micro_file
    state = load_file(str(path))
    for name, mode in [("model_fp16.safetensors", "legacy"), ("model.safetensors", "legacy"),
                       ("model_fixrot.safetensors", "per_gaussian")]:
        save_file(state, str(tmp_path / name))
        assert load_lgm(tmp_path / name, device="cpu").rotation_mode == mode
    assert load_lgm(path, device="cpu").rotation_mode == "per_gaussian"  # metadata written by save_lgm
    save_file(state, str(tmp_path / "mystery.safetensors"))
    with caplog.at_level(logging.WARNING, logger="lgm_core"):
        assert load_lgm(tmp_path / "mystery.safetensors", device="cpu").rotation_mode == "per_gaussian"
    assert "cannot tell" in caplog.text
    assert load_lgm(tmp_path / "mystery.safetensors", device="cpu", rotation_mode="legacy").rotation_mode == "legacy"


def test_wrong_keys_are_named(tmp_path, micro_file):
    path, _ = micro_file
    state = load_file(str(path))
    broken = dict(state)
    del broken["unet.conv_out.weight"]
    broken["unet.extra.weight"] = torch.zeros(3)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_lgm(tmp_path / "broken.safetensors", device="cpu")
    msg = str(info.value)
    assert "unet.conv_out.weight" in msg and "unet.extra.weight" in msg and "closest preset" in msg
    with pytest.raises(CheckpointError, match="'big' preset"):
        load_lgm(path, preset="big", device="cpu")
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an LGM checkpoint"):
        load_lgm(tmp_path / "foreign.safetensors", device="cpu")


def test_bad_files_refused(tmp_path, micro_file):
    path, _ = micro_file
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_lgm(tmp_path / "trunc.safetensors", device="cpu")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_safetensors_header(tmp_path / "garbage.safetensors")
    (tmp_path / "model.pt").write_bytes(b"pickle!")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        load_lgm(tmp_path / "model.pt")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="model_fp16_fixrot.safetensors"):
        load_lgm(empty)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lgm(tmp_path / "nope.safetensors")


def test_offline_hub_error_says_what_to_download_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        load_lgm("ashawkey/LGM", cache_dir=tmp_path / "cache", place_hint=tmp_path / "models" / "lgm")
    msg = str(info.value)
    assert hub_url() in msg and str(tmp_path / "models" / "lgm" / "model_fp16_fixrot.safetensors") in msg
    assert "offline" in msg


def test_hub_download_path_uses_cache(tmp_path, monkeypatch, micro_file):
    """A repo id goes through huggingface_hub's cache (pre-seeded here, offline)."""
    import huggingface_hub

    path, _ = micro_file
    calls = {}

    def fake_download(repo_id, filename, cache_dir=None, local_files_only=False):
        calls.update(repo_id=repo_id, filename=filename, cache_dir=cache_dir)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("lgm_core.hub.offline_reason", lambda: None)  # as if online
    model = load_lgm("someone/LGM-mirror", filename="micro_fixrot.safetensors", cache_dir=tmp_path, device="cpu")
    assert calls == {"repo_id": "someone/LGM-mirror", "filename": "micro_fixrot.safetensors", "cache_dir": tmp_path}
    assert model.config.same_architecture(MICRO)
