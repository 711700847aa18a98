#!/usr/bin/env python3
"""Write lgm_core/assets/demo/MODEL_CARD.md from the training record in docs/demo_model/ (configs,
metrics.jsonl, validation.jsonl) and the test-set evaluation (docs/demo_model/eval_test.json, written by
``python benchmarks/eval_demo.py --json docs/demo_model/eval_test.json``). Re-run after either changes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECORD = REPO / "docs" / "demo_model"


@dataclass(frozen=True)
class Stage:
    """One training run of the record (``docs/demo_model/*_stage<number>.*``)."""
    number: int
    schedule: str
    data: str
    minutes: float
    """device time of the training itself (data preparation on the device not included)"""


_DATA = "714 train / 40 val (the 25 largest meshes left out to fit the transfer limit)"
STAGES = (
    Stage(1, "cosine, 400 warm-up, peak 6e-4", "739 train / 40 val", 7.5),
    Stage(2, "`--init` stage 1; cosine, 100 warm-up, peak 3e-4", _DATA, 4.8),
    Stage(3, "`--init` stage 2 (the fp16 weights shipped then); cosine, 100 warm-up, peak 3e-4", _DATA, 5.9),
    Stage(4, "`--init` stage 3 (fp32); cosine, 100 warm-up, peak 3e-4", _DATA, 7.2),
)


def stage_rows(metrics: list) -> str:
    return "\n".join(f"| {st.number} | {len(m)} | {st.schedule} | {st.data} | ≈ {st.minutes} min |"
                     for st, m in zip(STAGES, metrics))


def _jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve(rows: list, every: int, stage: int) -> str:
    out = []
    for start in range(0, len(rows), every):
        chunk = rows[start:start + every]
        psnr = sum(r["psnr"] for r in chunk) / len(chunk)
        loss = sum(r["loss"] for r in chunk) / len(chunk)
        out.append(f"| {stage} | {chunk[0]['step']}–{chunk[-1]['step']} | {loss:.4f} | {psnr:.2f} |")
    return "\n".join(out)


def main() -> None:
    from lgm_core.training.evaluate import GroupSummary, format_table

    ev = json.loads((RECORD / "eval_test.json").read_text())
    summary = [GroupSummary(**s) for s in ev["summary"]]
    novel = next(s for s in summary if s.name == "novel")
    cfg = json.loads((RECORD / "config.json").read_text())
    metrics = [_jsonl(RECORD / f"metrics_stage{s.number}.jsonl") for s in STAGES]
    vals = [_jsonl(RECORD / f"validation_stage{s.number}.jsonl")[-1] for s in STAGES]
    total_steps = sum(len(m) for m in metrics)
    total_minutes = sum(s.minutes for s in STAGES)
    elev0 = next(s.psnr for s in summary if s.name == "elevation +0")
    floor_met = novel.psnr >= 20.0
    sources = json.loads((RECORD / "sources.json").read_text())
    counts = {k: sum(1 for s in sources if s["split"] == k) for k in ("train", "val", "test")}
    weights = REPO / "lgm_core" / "assets" / "demo" / "lgm_demo.safetensors"
    text = f"""# Model card: the LGM demo model (`lgm_demo.safetensors`)

A small LGM trained by this project, shipped inside the package so that a machine without hub access can
turn 4 views into a real 3D object: `load_lgm("demo")`, `python -m lgm_core demo`, *LGM Model Loader* →
`demo`. It is **a demonstration model, not a replacement for the official LGM**: renders are blurry and its
colours are washed towards dark greys and browns (see the numbers below).

## Architecture
Same family as LGM (asymmetric U-Net, 4 input views with Plücker rays, cross-view attention at the two
deepest levels and in the middle block; docs/conventions.md#model), loaded strictly through the official key layout.

| field | value |
|---|---|
| down channels / attention | {cfg['down_channels']} / {cfg['down_attention']} |
| up channels / attention | {cfg['up_channels']} / {cfg['up_attention']} |
| input / output (render) size | {cfg['input_size']}² / {cfg['output_size']}² |
| splat size / Gaussians | {cfg['splat_size']}² × 4 = {4 * cfg['splat_size'] ** 2:,} |
| parameters | 11,410,176 |
| file | fp16 safetensors, {weights.stat().st_size / 2**20:.1f} MiB, config in its metadata |

## Training data
{len(sources)} furniture, vehicle, plant and character models of Debian's `sweethome3d-furniture` 1.8-1
(CC0-1.0, CC-BY-3.0, CC-BY-3.0-US; every object with its author and licence in `ATTRIBUTION.md`), converted
by `scripts/sweethome3d_dataset.py` (catalogue rotation, textures baked to vertex colours, ≤ 4,000
triangles) and rendered by `prepare-data` at 128 px: 32 views per object (a 16-view ring at elevation 0,
16 random views between −20° and +45°), camera radius 1.5, fovy 49.1°, two fixed lights. Split by object
with a seed: {counts['train']} train, {counts['val']} validation, {counts['test']} test (never seen in
training; `examples/demo_test_objects`).

## Recipe
`python -m lgm_core train --config docs/demo_model/config.json` (the original recipe, docs/conventions.md#training; see
docs/training.md): orbit input views (4 ring views 90° apart), 12 views per sample, grid distortion and
camera jitter (p 0.5 each) on input views 1–3, loss MSE(rgb on white) + MSE(alpha) (**λ_LPIPS = 0**: the
VGG weights cannot be downloaded here), AdamW (wd 0.05, betas 0.9/0.95), grad-norm clip 1.0, bf16,
gsplat rendering, batch 32, one H200.

| stage | steps | lr schedule | data | device time |
|---|---|---|---|---|
{stage_rows(metrics)}

(An earlier 1,877-step run was lost with its machine; its curve is kept in `docs/demo_model/metrics_lost_run.jsonl`.)

Training curve (mean over blocks of steps; PSNR of the supervision renders, inputs included):

| stage | steps | loss | PSNR (dB) |
|---|---|---|---|
{chr(10).join(curve(m, max(1, len(m) // 8), st.number) for st, m in zip(STAGES, metrics))}

Validation (40 objects, random views), at the end of each stage:

| stage | step | PSNR (dB) | novel PSNR (dB) | SSIM |
|---|---|---|---|---|
{chr(10).join(f"| {st.number} | {v['step']} | {v['psnr']:.2f} | {v['psnr_novel']:.2f} | {v['ssim']:.3f} |" for st, v in zip(STAGES, vals))}

## Test metrics
`python benchmarks/eval_demo.py` (CPU; prints this table): the {len(ev['objects'])} held-out test objects,
inputs = 4 ring views 90° apart at elevation 0, scored on every other view at 128 px on white; elevations
±20° are never seen as inputs. Baseline: the objects' mean silhouette filled with their mean colour.

{format_table(summary)}

Novel views: **PSNR {novel.psnr:.2f} dB, SSIM {novel.ssim:.3f}**, {novel.psnr - novel.baseline_psnr:+.2f} dB over
the baseline ({novel.baseline_psnr:.2f} dB).

Against the goals of the demo-model issue: ≥ 5 dB over the baseline is **met**
({novel.psnr - novel.baseline_psnr:+.2f} dB); the 20 dB floor is **{"met" if floor_met else "not met"}** and the
24 dB goal **not met** ({novel.psnr:.2f} dB on all novel views; {elev0:.2f} dB at the inputs' elevation). The
curve was still rising when the session's device time ran out (about {total_minutes:.0f} minutes of training
over {len(STAGES)} stages, {total_steps:,} steps, ~{total_steps * 32 // 1000}k samples; the original LGM trains on ~2.4 M).
Validation novel-view PSNR rose in every stage ({', '.join(f'{b["psnr_novel"] - a["psnr_novel"]:+.2f}' for a, b in zip(vals, vals[1:]))} dB
in stages 2–{len(STAGES)}), the gains shrinking. What more would take: a
longer run of the same recipe (20–40k steps: 1–2 hours on one H200 at the measured ~5 steps/s), LPIPS once
VGG weights are available, and a dataset kept on the machine between calls.

## Intended use and limits
For trying the pack offline (CLI, library, ComfyUI) and for tests: it turns 4 white-background views of a
single object (front, then turned by 90°, 180°, 270°; elevation 0; 128 px or larger) into Gaussians whose
shape is roughly right. Not for production assets: blurry, desaturated, trained on furniture-like objects
only; it has not seen photographs or multi-view diffusion outputs. Licence of the weights: CC-BY-3.0
(inherits the attribution duty of its training data; see `ATTRIBUTION.md`).
"""
    (REPO / "lgm_core" / "assets" / "demo" / "MODEL_CARD.md").write_text(text)


if __name__ == "__main__":
    main()
