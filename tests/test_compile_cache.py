"""lgm_core.compile_cache: keyed, persistent torch.compile artifacts (CPU, a tiny model).

The process-start tests run real ``torch.compile`` (Inductor) in subprocesses: a cold start builds and
saves the artifact, a corrupt artifact is ignored with one warning and rebuilt, and a fresh process
with an empty Inductor cache of its own (only the C++ toolchain probes copied, none of Inductor's
graph caches) gets its compiled graph from our artifact alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from lgm_core import compile_cache as cc

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from lgm_core.compile_cache import compile_cached
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, bias=False),
                            torch.nn.Conv2d(8, 4, 1, bias=False)).eval()
x = torch.randn(1, 4, 8, 8)
with torch.no_grad():
    fast = compile_cached(model, (x,), "toy", {"channels": [4, 8]}, module=model)
    y = fast(x)
    ref = model(x)
e = fast.last
print("RESULT " + json.dumps(dict(status=e.status, seconds=e.seconds, cached=e.cached_graphs,
      compiled=e.compiled_graphs, path=str(e.path), process_s=time.perf_counter() - t0,
      err=float((y - ref).abs().max()))))
"""


def _run(cache_dir: Path, inductor_dir: Path):
    env = dict(os.environ, LGM_CACHE_DIR=str(cache_dir), TORCHINDUCTOR_CACHE_DIR=str(inductor_dir),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True,
                          timeout=600, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), proc.stderr


def _toolchain_only_copy(src: Path, dst: Path) -> None:
    """A copy of an Inductor cache folder without its graph caches (fxgraph, aotautograd), so that a
    process using it can only get compiled graphs from our artifact."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("fxgraph", "aotautograd"), dirs_exist_ok=True)


def test_process_start_hits_the_persistent_cache(tmp_path):
    cache = tmp_path / "compiled"
    # Inductor's C++ toolchain probes are slow on a busy 2-core machine: share them between runs
    inductor = Path(tempfile.gettempdir()) / f"lgm_test_inductor_{os.getuid() if hasattr(os, 'getuid') else 0}"

    cold, _ = _run(cache, inductor)
    assert cold["status"] == "built" and cold["err"] < 1e-5
    path = Path(cold["path"])
    assert path.parent == cache and path.name.startswith("toy-") and path.suffix == ".lgmcc"
    assert path.read_bytes().startswith(cc.MAGIC)

    # corrupt the payload: ignored with one warning line, compiled again, replaced by a valid file
    data = bytearray(path.read_bytes())
    data[-10:] = b"\x00" * 10
    path.write_bytes(bytes(data))
    again, err = _run(cache, inductor)
    assert again["status"] == "rebuilt"
    warnings = [ln for ln in err.splitlines() if "compile cache: ignoring" in ln]
    assert len(warnings) == 1 and "corrupt" in warnings[0], err[-2000:]
    assert path.read_bytes() != bytes(data)

    # a fresh process whose own Inductor cache holds no graphs: the compiled graph comes from our file
    fresh = tmp_path / "inductor_fresh"
    _toolchain_only_copy(inductor, fresh)
    warm, err = _run(cache, fresh)
    assert warm["status"] == "hit", err[-2000:]
    assert warm["cached"] >= 1 and warm["compiled"] == 0 and warm["err"] < 1e-5
    print(f"\ncold first call {cold['seconds']:.1f} s, warm first call {warm['seconds']:.1f} s "
          f"(process start to ready {warm['process_s']:.1f} s)")


def test_key_changes_with_dtype_shape_config_and_mode():
    model = torch.nn.Conv2d(4, 4, 3)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        base = cc.make_key("lgm", {"c": 1}, (x,), model)
        assert cc.make_key("lgm", {"c": 1}, (x,), model) == base
        variants = [
            cc.make_key("lgm", {"c": 1}, (x.half(),), model),  # input dtype
            cc.make_key("lgm", {"c": 1}, (torch.randn(2, 4, 8, 8),), model),  # shape
            cc.make_key("lgm", {"c": 2}, (x,), model),  # config
            cc.make_key("unet", {"c": 1}, (x,), model),  # model name
            cc.make_key("lgm", {"c": 1}, (x.contiguous(memory_format=torch.channels_last),), model),  # layout
            cc.make_key("lgm", {"c": 1}, (x,), torch.nn.Conv2d(4, 4, 3).half()),  # weights dtype
            cc.make_key("lgm", {"c": 1}, (x,), model, {"mode": "max-autotune"}),  # options
        ]
    variants.append(cc.make_key("lgm", {"c": 1}, (x,), model))  # grad mode (enabled here)
    with torch.inference_mode():
        variants.append(cc.make_key("lgm", {"c": 1}, (x,), model))
    digests = {k.digest() for k in variants}
    assert base.digest() not in digests and len(digests) == len(variants)
    assert "float32" in base.weights and base.device.startswith("cpu:")
    assert base.software.startswith(f"torch {torch.__version__}")


def test_entry_roundtrip_and_rejections(tmp_path):
    x = torch.randn(2, 3)
    key = cc.make_key("m", None, (x,))
    other = cc.make_key("m", None, (x.half(),))
    path = tmp_path / key.filename()
    cc.write_entry(path, key, b"payload bytes")
    assert cc.read_entry(path, key) == b"payload bytes"
    with pytest.raises(cc.CacheFileError, match="another key"):
        cc.read_entry(path, other)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(cc.CacheFileError, match="truncated or corrupt"):
        cc.read_entry(path, key)
    path.write_bytes(b"garbage")
    with pytest.raises(cc.CacheFileError, match="not a compile-cache file"):
        cc.read_entry(path, key)
    with pytest.raises(FileNotFoundError):
        cc.read_entry(tmp_path / "missing.lgmcc", key)
    cc.write_entry(path, key, b"payload bytes")
    assert path.stat().st_mode & 0o777 == 0o600
    if os.name == "posix":  # loaded with torch's pickle-based reader: only files nobody else could write
        path.chmod(0o666)
        with pytest.raises(cc.CacheFileError, match="writable by others"):
            cc.read_entry(path, key)
    assert not [p for p in tmp_path.iterdir() if ".lgm-tmp" in p.name]  # atomic write left nothing


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "x"))
    assert cc.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LGM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.default_cache_dir() == tmp_path / "xdg" / "lgm_core" / "compiled"
