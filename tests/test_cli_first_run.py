"""What a first-time user meets on the command line: one-line errors for a device this torch cannot use
and for models that are neither local nor downloadable (offline, fast), help without doubled defaults,
the right program name, CPU-sized turntable defaults and progress lines with an ETA."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import REPO_ROOT
from lgm_core.cli import build_parser, main
from lgm_core.cli.common import StageProgress


def _subparsers():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub.choices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    ply = tmp_path / "x.ply"
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    save_ply(make_scene("sphere", n=64, seed=0), ply)
    for argv in (["render", str(ply), "--views", "0", "-o", str(tmp_path / "v.png"), "--device", "cuda"],
                 ["mesh", str(ply), "--device", "cuda:1"],
                 ["reconstruct", "a.png", "b.png", "c.png", "d.png", "-o", "o.ply", "--device", "cuda"],
                 ["render", str(ply), "--views", "0", "-o", str(tmp_path / "v.png"), "--device", "tpu9"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: --device "), err
        assert "Traceback" not in err


def test_help_states_each_default_once():
    for name, sub in _subparsers().items():
        text = sub.format_help()
        assert "(default: None)" not in text, name
        for action in sub._actions:
            shown = sub._get_formatter()._expand_help(action) if action.help else ""
            assert shown.lower().count("default") <= 1, (name, shown)


def test_program_name_matches_how_it_was_started(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: lgm ")
    out = subprocess.run([sys.executable, "-m", "lgm_core", "render", "--help"], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120).stdout
    assert out.startswith("usage: python -m lgm_core render")


def test_turntable_defaults_are_bounded_on_cpu():
    from lgm_core.cli import generate

    t = _subparsers()["text-to-3d"]
    args = t.parse_args(["x", "-o", "o"])
    assert args.turntable_frames is None and args.turntable_size is None  # resolved per device
    assert generate.TURNTABLE_FRAMES["cpu"] * generate.TURNTABLE_SIZE["cpu"] ** 2 <= \
        generate.TURNTABLE_FRAMES["cuda"] * generate.TURNTABLE_SIZE["cuda"] ** 2 / 16


def test_mesh_level_default_is_the_library_default():
    import inspect

    from lgm_core.mesh import extract_mesh
    from lgm_core.mesh.extract import DEFAULT_LEVEL

    lib = inspect.signature(extract_mesh).parameters["level"].default
    assert lib == DEFAULT_LEVEL
    assert _subparsers()["mesh"].parse_args(["x.ply"]).level == lib
    assert _subparsers()["mesh"].parse_args(["x.ply", "--level", "auto", "--max-level", "0.7"]).max_level == 0.7
    node_source = (REPO_ROOT / "nodes" / "mesh.py").read_text()  # the ComfyUI node's default, without ComfyUI
    assert "from lgm_core.mesh.extract import DEFAULT_LEVEL" in node_source
    assert 'io.Float.Input("level", default=DEFAULT_LEVEL,' in node_source


def test_stage_progress_shows_an_eta():
    stream = io.StringIO()
    bar = StageProgress("diffusion", 4, " steps", stream=stream, every=0.0)
    bar.start -= 10.0  # as if 10 s had passed
    bar.update(1)
    bar.update(4)
    first, last = stream.getvalue().splitlines()
    assert first.startswith("diffusion 1/4 steps  25%") and "ETA 0:30" in first
    assert last.startswith("diffusion 4/4 steps 100%") and "ETA" not in last


_OFFLINE_RUNS = textwrap.dedent("""
    import json, os, sys, time
    from lgm_core.cli import main
    cases = json.loads(sys.argv[1])
    out = []
    for env, argv in cases:
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("HF_ENDPOINT", None)
        os.environ.update(env)
        t0 = time.perf_counter()
        rc = main(argv)
        out.append({"rc": rc, "seconds": time.perf_counter() - t0})
    print("RESULTS" + json.dumps(out))
""")


def test_missing_models_offline_end_in_one_line_quickly(tmp_path):
    """No local weights + no network: one line naming the files, the folder, the flag and the demo, within
    seconds (HF_HUB_OFFLINE=1, and an endpoint that refuses connections), never the hub's retry loop."""
    from lgm_core.image_io import write_image

    image = write_image(torch.rand(64, 64, 3), tmp_path / "photo.png")  # a 2x2 grid of 32x32 views for reconstruct
    offline = {"HF_HUB_OFFLINE": "1"}
    refused = {"HF_ENDPOINT": "http://127.0.0.1:9"}
    cases = [
        (offline, ["text-to-3d", "an owl", "-o", str(tmp_path / "t")]),
        (refused, ["text-to-3d", "an owl", "-o", str(tmp_path / "t")]),
        (refused, ["image-to-3d", str(image), "-o", str(tmp_path / "i")]),
        (offline, ["reconstruct", str(image), "-o", str(tmp_path / "r.ply")]),
    ]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_RUNS, json.dumps(cases)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)
    results = json.loads(proc.stdout.split("RESULTS", 1)[1])
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == len(cases), proc.stderr  # exactly one line per run, no traceback, no hub retries
    cache = str(tmp_path / "hf" / "hub")
    for (env_, argv), res, line in zip(cases, results, errors):
        assert res["rc"] == 2 and res["seconds"] < 5.0, (argv, res, line)
        assert line.startswith("error: cannot get the model files (") and f"Hugging Face cache ({cache})" in line
        assert "python -m lgm_core demo" in line
        reason = "HF_HUB_OFFLINE" if "HF_HUB_OFFLINE" in env_ else "http://127.0.0.1:9 cannot be reached"
        assert reason in line, line
        if argv[0] == "reconstruct":
            assert "--weights FOLDER" in line and "ashawkey/LGM [model_fp16_fixrot.safetensors]" in line
        else:
            assert "--lgm-weights FOLDER" in line and "ashawkey/LGM [model_fp16_fixrot.safetensors]" in line
            assert "--mv-model FOLDER" in line and "[model_index.json, unet/" in line
            repo = "mvdream-sd2.1-diffusers" if argv[0] == "text-to-3d" else "imagedream-ipmv-diffusers"
            assert f"ashawkey/{repo}" in line
    assert not (tmp_path / "t").exists()  # nothing written before the check
