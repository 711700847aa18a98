"""The one hub resolver: registry, repo-id rule, offline rule (cache or one line), downloads into a
folder (as the ComfyUI loaders do) and into the hub cache — all without network."""

from __future__ import annotations

import pytest

from lgm_core import hub
from lgm_core.mvdiffusion import loading


def test_registry_is_the_one_source_of_official_names():
    from lgm_core import weights

    assert (weights.DEFAULT_REPO, weights.DEFAULT_FILENAME) == (hub.LGM_WEIGHTS.repo_id, hub.LGM_WEIGHTS.filename)
    assert loading.HUB_REPOS == {"mvdream": hub.MVDREAM.repo_id, "imagedream": hub.IMAGEDREAM.repo_id}
    assert hub.IMAGEDREAM.name == "imagedream-ipmv-diffusers" and "image_encoder/" in hub.IMAGEDREAM.files
    assert hub.snapshot_files(hub.MVDREAM.repo_id) == hub.DIFFUSERS_LAYOUT
    assert "feature_extractor/" in hub.snapshot_files("someone/my-imagedream")


@pytest.mark.parametrize("source, is_repo", [
    ("ashawkey/LGM", True), ("ashawkey/mvdream-sd2.1-diffusers", True), ("someone/LGM-mirror", True),
    ("models/missing.safetensors", False), ("./a/b", False), ("/abs/path", False), ("~/x", False),
    ("model.safetensors", False), ("a/b/c", False),
])
def test_repo_id_rule(source, is_repo):
    assert hub.is_repo_id(source) is is_repo


def test_existing_paths_are_never_repo_ids(tmp_path, monkeypatch):
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not hub.is_repo_id("owner/name")


def test_offline_uses_the_local_copy_or_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "models" / "lgm"
    with pytest.raises(hub.HubUnavailable) as info:
        hub.fetch_file("ashawkey/LGM", "model_fp16_fixrot.safetensors", what="LGM weights", local_dir=folder,
                       place_hint=folder)
    msg = str(info.value)
    assert "\n" not in msg and f"not in {folder}" in msg and "HF_HUB_OFFLINE" in msg
    assert hub.file_url("ashawkey/LGM", "model_fp16_fixrot.safetensors") in msg
    folder.mkdir(parents=True)
    (folder / "model_fp16_fixrot.safetensors").write_bytes(b"x")
    assert hub.fetch_file("ashawkey/LGM", "model_fp16_fixrot.safetensors", what="LGM weights",
                          local_dir=folder) == folder / "model_fp16_fixrot.safetensors"
    with pytest.raises(hub.HubUnavailable, match=r"model_index.json, unet/.*Hugging Face cache"):
        loading.resolve_source(hub.MVDREAM.repo_id)
    with pytest.raises(hub.HubUnavailable, match="local_files_only"):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        hub.fetch_snapshot(hub.MVDREAM.repo_id, what="multi-view model", files=hub.MVDREAM.files,
                           cache_dir=tmp_path / "cache", local_files_only=True)


def test_downloads_go_through_huggingface_hub_with_safe_patterns(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, tuple(allow_patterns), kwargs))
        return str(kwargs.get("local_dir") or tmp_path / "snap")

    def failing_file(repo_id, filename, **kwargs):
        raise OSError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_file)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)  # as if online
    dest = tmp_path / "models" / "diffusers" / hub.MVDREAM.name
    assert hub.fetch_snapshot(hub.MVDREAM.repo_id, what="multi-view model", files=hub.MVDREAM.files,
                              local_dir=dest) == dest
    assert calls == [(hub.MVDREAM.repo_id, hub.SNAPSHOT_PATTERNS, {"local_dir": str(dest)})]
    assert not any(p.endswith(".py") for p in hub.SNAPSHOT_PATTERNS)
    with pytest.raises(hub.HubDownloadError) as info:
        hub.fetch_file("ashawkey/LGM", "model_fp16_fixrot.safetensors", what="LGM weights", place_hint=dest)
    assert "\n" not in str(info.value) and "401 Client Error" in str(info.value) and str(dest) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_lgm_from_pretrained_round_trip(tmp_path):
    import torch

    from lgm_core.models.lgm import LGM
    from lgm_core.testing import tiny_lgm_config

    model = LGM(tiny_lgm_config())
    path = model.save_pretrained(tmp_path / "mine.safetensors")
    loaded = LGM.from_pretrained(path, device="cpu")
    assert loaded.config == model.config and loaded.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
