"""The trainer end to end on CPU: loss falls, checkpoints load strictly, resume is bit-for-bit, a
wall-clock stop resumes, fine-tuning with frozen parts, atomic checkpoints, 2-process DDP (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("accelerate", reason="training needs accelerate (pip install -e .[train])")

from lgm_core.cli import main as cli_main
from lgm_core.training import checkpoint as ckpt
from lgm_core.training.config import load_config
from lgm_core.training.trainer import TrainOptions, train
from training_fixtures import synthetic_dataset  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]


def _metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _options(data, out, steps, **kw) -> TrainOptions:
    overrides = kw.pop("overrides", {})
    return TrainOptions(data=Path(data), output=Path(out), run=load_config("tiny-test", overrides), steps=steps,
                        progress=False, **kw)


def test_train_cli_loss_falls_and_model_loads_strictly(synthetic_dataset, tmp_path):
    from lgm_core import load_lgm
    from lgm_core.models.lgm import LGM

    run = tmp_path / "run"
    rc = cli_main(["train", "--data", str(synthetic_dataset), "--output", str(run), "--config", "tiny-test",
                   "--steps", "30", "--no-progress", "--preview-every", "15"])
    assert rc == 0
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all({"loss", "mse", "mse_alpha", "psnr", "lr", "grad_norm"} <= set(r) for r in rows)
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    model = load_lgm(run / "model.safetensors", device="cpu")  # strict, config from the metadata
    assert model.config == load_config("tiny-test").model
    ref = LGM(model.config)
    assert set(model.state_dict()) == set(ref.state_dict())  # the official key layout
    assert (run / "checkpoints" / "step_30" / "state.json").is_file()
    assert (run / "previews" / "step_15.png").is_file() and (run / "previews" / "val_step_30.png").is_file()
    val = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert val[-1]["step"] == 30 and {"psnr", "ssim", "psnr_novel"} <= set(val[-1])
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["name"] == "tiny-test" and saved["effective_batch"] == 2


def test_resume_is_bit_for_bit(synthetic_dataset, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(_options(synthetic_dataset, straight, 6))
    first = train(_options(synthetic_dataset, split, 6, stop_at=3))
    assert first.step == 3 and (split / "checkpoints" / "step_3").is_dir()
    second = train(_options(synthetic_dataset, split, 6, resume=True))
    assert second.step == 6
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = load_file(str(straight / "checkpoints" / "step_6" / "optimizer.safetensors"))
    ob = load_file(str(split / "checkpoints" / "step_6" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    assert _metrics(straight) == _metrics(split)  # same losses, step for step


def test_wall_clock_budget_saves_and_resumes(synthetic_dataset, tmp_path):
    out = tmp_path / "budget"
    res = train(_options(synthetic_dataset, out, 50, max_minutes=1e-6))
    assert res.stopped_early and res.step == 1
    assert ckpt.latest_checkpoint(out).name == "step_1" and (out / "model.safetensors").is_file()
    res = train(_options(synthetic_dataset, out, 3, resume=True, overrides={"validate_every": 0}))
    assert res.step == 3 and not res.stopped_early and [r["step"] for r in _metrics(out)] == [1, 2, 3]


def test_finetune_from_weights_with_frozen_encoder(synthetic_dataset, tmp_path):
    from lgm_core.models.lgm import LGM
    from lgm_core.weights import save_lgm

    torch.manual_seed(123)
    init = save_lgm(LGM(load_config("tiny-test").model), tmp_path / "init.safetensors", dtype=torch.float16)
    out = tmp_path / "ft"
    train(_options(synthetic_dataset, out, 2, init=str(init), freeze=("encoder",), overrides={"validate_every": 0}))
    before, after = load_file(str(init)), load_file(str(out / "model.safetensors"))
    enc = [k for k in before if k.startswith(("unet.conv_in.", "unet.down_blocks."))]
    dec = [k for k in before if k.startswith(("unet.up_blocks.", "unet.conv_out.", "conv."))]
    assert enc and all(torch.equal(before[k].float(), after[k]) for k in enc)
    assert any(not torch.equal(before[k].float(), after[k]) for k in dec)
    with pytest.raises(ValueError, match="matches no parameter"):
        train(_options(synthetic_dataset, tmp_path / "bad", 1, freeze=("unet.nothing",)))


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    from lgm_core.models.lgm import LGM

    model = LGM(load_config("tiny-test").model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, 9, 64, 64)).sum().backward()
    opt.step()
    good = ckpt.save_checkpoint(tmp_path, 5, model, opt, None)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "atomic_write_bytes", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 6, model, opt, None)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_5"]  # nothing half-written
    fresh = LGM(load_config("tiny-test").model)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    state = ckpt.load_checkpoint(good, fresh, opt2)
    assert state["step"] == 5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)
    for step in (6, 7, 8):
        ckpt.save_checkpoint(tmp_path, step, model, opt, None, keep=2)
    assert list(ckpt.list_checkpoints(tmp_path)) == [7, 8]


def test_cli_help_and_errors(synthetic_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--output", "--config", "--steps", "--batch-size", "--resume", "--init", "--freeze",
                 "--lpips-weights", "--max-minutes", "--grad-accum", "--view-mode", "--render-backend"):
        assert flag in text
    assert cli_main(["train", "--data", str(tmp_path / "none"), "--output", str(tmp_path / "r"),
                     "--config", "tiny-test", "--steps", "1"]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(synthetic_dataset), "--output", str(tmp_path / "r"),
                     "--config", "nope", "--steps", "1"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DDP_WORKER = r"""
import os, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from safetensors.torch import save_file
from lgm_core.training.config import load_config
from lgm_core.training.trainer import TrainOptions, Trainer
data, out = sys.argv[1], sys.argv[2]
run = load_config("tiny-test", {"batch_size": 1, "validate_every": 0, "num_workers": 0})
trainer = Trainer(TrainOptions(data=Path(data), output=Path(out), run=run, steps=3, progress=False))
init = {k: v.clone() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}
trainer.train()
final = trainer.acc.unwrap_model(trainer.model).state_dict()
rank = trainer.acc.process_index
save_file({k: v.contiguous() for k, v in final.items()}, f"{out}/rank{rank}.safetensors")
save_file({k: v.contiguous() for k, v in init.items()}, f"{out}/init{rank}.safetensors")
print("world", trainer.world)
"""


def _launch_two_ranks(dataset, out: Path) -> list:
    """Start two gloo ranks of ``_DDP_WORKER`` (the environment torchrun / accelerate launch set) and return
    their logs once both exit 0."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        procs.append(subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(dataset), str(out)],
                                      env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = []
    for p in procs:
        text, _ = p.communicate(timeout=240)
        logs.append(text.decode(errors="replace"))
        assert p.returncode == 0, text.decode(errors="replace")[-3000:]
    return logs


@pytest.fixture(scope="module")
def ddp_run(synthetic_dataset, tmp_path_factory):
    """Two ranks x batch 1, three steps (shared by the DDP tests)."""
    out = tmp_path_factory.mktemp("ddp")
    return out, _launch_two_ranks(synthetic_dataset, out)


def test_two_process_ddp_gloo_identical_weights(ddp_run):
    """What `accelerate launch --num_processes 2 --cpu` sets up: two ranks, gloo, one step each time."""
    out, logs = ddp_run
    assert all("world 2" in t for t in logs)
    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    i0 = load_file(str(out / "init0.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks diverged"
    assert any(not torch.equal(w0[k], i0[k]) for k in w0), "no training happened"
    assert json.loads((out / "config.json").read_text())["effective_batch"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_two_ranks_of_batch_1_follow_one_process_of_batch_2(ddp_run, synthetic_dataset, tmp_path):
    """The effective batch is right for any number of processes: 2 ranks x batch b see the same samples, with
    the same augmentation seeds, as 1 process x batch 2b, so the loss curve and the weights agree up to float
    summation order (DDP averages the ranks' gradients; the logged terms are averaged over ranks)."""
    out, _ = ddp_run
    single = tmp_path / "single"
    train(_options(synthetic_dataset, single, 3, overrides={"batch_size": 2, "validate_every": 0, "num_workers": 0}))
    assert json.loads((single / "config.json").read_text())["effective_batch"] == 2
    two, one = _metrics(out), _metrics(single)
    for key in ("loss", "mse", "mse_alpha", "psnr", "grad_norm", "lr"):
        got, want = [r[key] for r in two], [r[key] for r in one]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (key, got, want)
    # Weights: AdamW moves a parameter by ~lr per step whatever the size of its gradient, so a gradient
    # that is ~0 in both runs can take either sign after a different summation order. Bound every weight by
    # the largest move 3 steps can make and require almost all of them to agree tightly.
    w2, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(single / "model.safetensors"))
    assert set(w2) == set(w1)
    lr_max = max(r["lr"] for r in one)
    diffs = torch.cat([(w2[k] - w1[k]).abs().flatten() for k in w1])
    assert diffs.max().item() <= 2 * 3 * lr_max * 1.01, diffs.max().item()
    assert (diffs <= 1e-5).float().mean().item() > 0.99, (diffs > 1e-5).float().mean().item()
