"""The LGM trainer (docs/conventions.md#training) on accelerate: one CPU, one GPU, or many GPUs/hosts unchanged.

One optimiser step = ``gradient_accumulation_steps`` micro-steps of ``batch_size`` samples per
process: inputs (4 views, ImageNet-normalised, Plücker rays of the possibly jittered poses,
computed on the device) -> LGM -> Gaussians -> differentiable renders of every supervision view ->
MSE(rgb) + MSE(alpha) + λ·LPIPS -> backward (DDP all-reduce under ``accelerate launch``) -> grad
clip -> AdamW -> scheduler. Run folder::

    RUN/config.json               the run's full config (model + recipe) and options
    RUN/metrics.jsonl             one JSON object per optimiser step (step, loss, psnr, lr, ...)
    RUN/validation.jsonl          one JSON object per validation pass (psnr, ssim, lpips, ...)
    RUN/previews/step_N.png       input views | predicted renders | ground truth (rows)
    RUN/checkpoints/step_N/       resumable training state (:mod:`.checkpoint`)
    RUN/model.safetensors         the latest weights, official key layout (``load_lgm`` loads it)

Host synchronisation happens only every ``log_every`` steps (metrics are kept on the device in
between), at checkpoints, previews and validation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..cameras import plucker_rays_batched
from ..models.lgm import IMAGENET_MEAN, IMAGENET_STD, LGM
from ..runtime import default_device
from . import checkpoint as ckpt
from .config import RunConfig
from .dataset import MultiViewDataset, SampleStream, collate, load_objects, split_objects
from .losses import load_lpips, lpips_weight, reconstruction_loss
from .metrics import psnr, ssim
from .rendering import choose_backend, render_views
from .schedule import build_scheduler, effective_warmup, fast_forward

log = logging.getLogger("lgm_core.training")

FREEZE_GROUPS = {
    "encoder": ("unet.conv_in.", "unet.down_blocks."),
    "mid": ("unet.mid_block.",),
    "decoder": ("unet.up_blocks.", "unet.norm_out.", "unet.conv_out.", "conv."),
}
"""Named parameter groups for ``--freeze`` (any other value is taken as a parameter-name prefix)."""


@dataclass
class TrainOptions:
    """What a run is asked to do (the recipe itself is ``run.train``)."""

    data: Path
    output: Path
    run: RunConfig
    steps: int
    resume: bool = False
    stop_at: Optional[int] = None
    """Stop (with a checkpoint) after this step; the schedule still spans ``steps``."""
    init: Optional[str] = None
    freeze: Sequence[str] = ()
    lpips_weights: Optional[str] = None
    max_minutes: Optional[float] = None
    cpu: bool = False
    render_backend: str = "auto"
    channels_last: bool = False
    tensorboard: bool = False
    save_dtype: str = "fp32"
    progress: bool = True


@dataclass
class TrainResult:
    step: int
    stopped_early: bool
    model_path: Path
    last_metrics: Dict[str, float] = field(default_factory=dict)


class _StopFlag:
    """Set by SIGTERM/SIGINT (first signal: save and stop at the next step boundary)."""

    def __init__(self):
        self.set = False
        self._old = {}

    def install(self):
        if os.name == "nt" or not hasattr(signal, "SIGTERM"):
            return
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._old = {}

    def _handle(self, signum, frame):
        if self.set:  # second signal: give up at once
            raise KeyboardInterrupt
        self.set = True
        log.warning("signal %d: saving a checkpoint and stopping after this step (again to abort)", signum)

    def uninstall(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(type(o).__name__)


class Trainer:
    def __init__(self, opts: TrainOptions):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.opts = opts
        self.run = opts.run
        cfg = self.run.train
        self.out = Path(opts.output)
        mp = cfg.mixed_precision
        use_cuda = default_device().type == "cuda" and not opts.cpu
        if mp == "auto":
            mp = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
        log_with = None
        if opts.tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ValueError("--tensorboard needs the 'tensorboard' package (pip install tensorboard)") from None
            log_with = "tensorboard"
        self.acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                               cpu=not use_cuda, log_with=log_with, project_dir=str(self.out),
                               step_scheduler_with_optimizer=False)
        self.device = self.acc.device
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.mixed_precision = mp
        set_seed(cfg.seed)  # same model init on every process
        self.backend = choose_backend(opts.render_backend, self.device)

        # ---- data
        objects = load_objects(opts.data)
        self.train_objects, self.val_objects = split_objects(objects, cfg.val_fraction, cfg.split_seed)
        if not self.train_objects:
            raise ValueError(f"--data: {opts.data} has no training objects after the split")
        self.train_set = MultiViewDataset(opts.data, self.train_objects, self.run.model, cfg, training=True)
        self.val_set = MultiViewDataset(opts.data, self.val_objects[: cfg.val_max_objects], self.run.model, cfg,
                                        training=False)

        # ---- model, optimiser, schedule
        model = LGM(self.run.model, rotation_mode="per_gaussian")
        if opts.init:
            self._load_init(model, opts.init)
        self.frozen = self._freeze(model, opts.freeze)
        if opts.channels_last:
            model.use_channels_last()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("--freeze leaves no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        self.scheduler = build_scheduler(optimizer, cfg, opts.steps)
        self.step = 0
        resume_from = ckpt.latest_checkpoint(self.out) if opts.resume else None
        if opts.resume and resume_from is None and self.main:
            log.warning("--resume: no checkpoint in %s yet; starting from step 0", self.out / ckpt.CHECKPOINTS_DIR)
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, model, optimizer, None)
            self.step = int(state["step"])
            planned = int(state.get("extra", {}).get("total_steps", opts.steps))
            if planned == opts.steps and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            else:
                if self.main:
                    log.warning("resuming a run planned for %d steps with --steps %d: the schedule is re-planned "
                                "(not bit-for-bit the same as one uninterrupted run)", planned, opts.steps)
                fast_forward(self.scheduler, self.step)
            if self.main:
                log.info("resumed from %s (step %d)", resume_from, self.step)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.params = params

        self.lpips = load_lpips(opts.lpips_weights, self.device, warn=self.main) if cfg.lambda_lpips > 0 else None
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 1, 3, 1, 1)

    # ------------------------------------------------------------------ set-up helpers
    def _load_init(self, model: LGM, source: str) -> None:
        from safetensors.torch import load_file

        from ..weights import read_safetensors_header, resolve_checkpoint, rotation_mode_for

        path = resolve_checkpoint(source)
        _, metadata = read_safetensors_header(path)
        if rotation_mode_for(path, metadata) == "legacy":
            log.warning("%s uses the pre-fix (legacy) rotation activation; fine-tuning uses the fixed one", path.name)
        state = load_file(str(path), device="cpu")
        own = model.state_dict()
        copied = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not copied:
            raise ValueError(f"--init {source}: no tensor of {path} matches the model's keys and shapes")
        model.load_state_dict(copied, strict=False)
        skipped = len(state) - len(copied)
        missing = len(own) - len(copied)
        msg = f"--init: {len(copied)}/{len(own)} tensors from {path}"
        if skipped or missing:
            msg += f" ({skipped} of the file's tensors skipped for shape/key mismatch, {missing} left at random init)"
        if self.main:
            log.info(msg)

    @staticmethod
    def _freeze(model: LGM, groups: Sequence[str]) -> List[str]:
        prefixes = []
        for g in groups:
            prefixes += list(FREEZE_GROUPS.get(g, (g,)))
        frozen = []
        for name, p in model.named_parameters():
            if any(name.startswith(pre) for pre in prefixes):
                p.requires_grad_(False)
                frozen.append(name)
        unused = [g for g in groups if g not in FREEZE_GROUPS and not any(n.startswith(g) for n in frozen)]
        if unused:
            raise ValueError(f"--freeze {' '.join(unused)}: matches no parameter (groups: {', '.join(FREEZE_GROUPS)}, "
                             "or a parameter-name prefix such as unet.down_blocks.0)")
        return frozen

    def loader(self, start_micro: int, stop_micro: Optional[int]):
        cfg = self.run.train
        workers = cfg.num_workers if cfg.num_workers >= 0 else max(0, min(8, (os.cpu_count() or 1) - 1))
        stream = SampleStream(len(self.train_set), cfg.batch_size, seed=cfg.seed, rank=self.acc.process_index,
                              world_size=self.world, start=start_micro, stop=stop_micro)
        return torch.utils.data.DataLoader(
            self.train_set, batch_sampler=stream, num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
            persistent_workers=False)

    # ------------------------------------------------------------------ the step
    def model_inputs(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 4, 9, S, S]: normalised input views + Plücker rays of their (jittered) poses, on the device."""
        images = (batch["input_images"] - self.mean) / self.std
        rays = plucker_rays_batched(batch["input_c2w"], self.run.model.input_size, self.run.model.fovy)
        return torch.cat([images, rays], dim=2)

    def forward(self, model, batch: Dict[str, torch.Tensor], lambda_lp: float) -> tuple:
        """Loss terms, renders [B, V, 3, S, S] and alphas: the network under mixed precision, the
        rendering in float32."""
        x = self.model_inputs(batch)
        with self.acc.autocast():
            gaussians = model(x)
        images, alpha = render_views(gaussians, batch["c2w"], self.run.model.output_size, self.run.model.fovy,
                                     backend=self.backend)
        with self.acc.autocast():
            terms = reconstruction_loss(images, alpha, batch["images"], batch["masks"], self.lpips, lambda_lp)
        terms["psnr"] = psnr(images.detach(), batch["images"])
        return terms, images, alpha

    def _to_device(self, batch):
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ------------------------------------------------------------------ outputs
    def _write_config(self) -> None:
        data = {"run": self.run.to_dict(), "options": dataclasses.asdict(self.opts), "processes": self.world,
                "effective_batch": self.run.train.batch_size * self.world * self.run.train.gradient_accumulation_steps,
                "mixed_precision": self.mixed_precision, "render_backend": self.backend, "frozen": len(self.frozen)}
        data["options"].pop("run", None)
        from ..fileio import atomic_write_bytes

        atomic_write_bytes(self.out / "config.json", json.dumps(data, indent=1, default=_json_default).encode())

    def save(self, stopped: bool = False) -> Path:
        """Checkpoint + RUN/model.safetensors (main process), then everyone waits."""
        from ..weights import save_lgm

        path = self.out / "model.safetensors"
        if self.main:
            model = self.acc.unwrap_model(self.model)
            extra = {"total_steps": self.opts.steps, "config": self.run.to_dict(), "stopped_early": stopped}
            ckpt.save_checkpoint(self.out, self.step, model, self.optimizer.optimizer, self.scheduler, extra,
                                 keep=self.run.train.keep_checkpoints)
            dtype = torch.float16 if self.opts.save_dtype == "fp16" else torch.float32
            save_lgm(model, path, dtype=dtype, metadata={"lgm_training_step": str(self.step)})
        self.acc.wait_for_everyone()
        return path

    def preview(self, batch, images, tag: str) -> None:
        from ..image_io import write_image

        s = self.run.model.output_size
        inputs = torch.nn.functional.interpolate(batch["input_images"][0].float(), size=(s, s), mode="bilinear",
                                                 align_corners=False)
        V = images.shape[1]
        row_in = torch.ones(V, 3, s, s, device=inputs.device)
        row_in[:4] = inputs
        grid = torch.cat([row_in, images[0].detach().float(), batch["images"][0].float()], dim=0)  # [3V, 3, s, s]
        grid = grid.reshape(3, V, 3, s, s).permute(0, 3, 1, 4, 2).reshape(3 * s, V * s, 3)
        write_image(grid.clamp(0, 1).cpu(), self.out / "previews" / f"{tag}.png")

    @torch.no_grad()
    def validate(self) -> Optional[dict]:
        """Mean metrics over the validation objects (evaluation views, no augmentation), main process."""
        if not len(self.val_set):
            return None
        model = self.acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        sums: Dict[str, float] = {}
        count = 0
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=self.run.train.batch_size, collate_fn=collate)
        first = None
        for batch in loader:
            batch = self._to_device(batch)
            terms, images, alpha = self.forward(model, batch, 0.0)
            gt = batch["images"]
            n = gt.shape[0]
            vals = {"loss": float(terms["loss"]), "psnr": float(terms["psnr"]),
                    "psnr_novel": float(psnr(images[:, 4:], gt[:, 4:])) if images.shape[1] > 4 else float("nan"),
                    "ssim": float(ssim(images, gt))}
            if self.lpips is not None:
                S = images.shape[-1]
                with self.acc.autocast():
                    lp = self.lpips(gt.reshape(-1, 3, S, S) * 2 - 1, images.reshape(-1, 3, S, S) * 2 - 1)
                vals["lpips"] = float(lp.float().mean())
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
            if first is None:
                first = (batch, images)
        model.train(was_training)
        result = {k: v / count for k, v in sums.items()}
        result.update(step=self.step, objects=count)
        self.preview(first[0], first[1], f"val_step_{self.step}")
        with open(self.out / "validation.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        cfg, opts = self.run.train, self.opts
        total = int(opts.steps)
        end = min(total, int(opts.stop_at)) if opts.stop_at is not None else total
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_config()
        if opts.tensorboard:
            self.acc.init_trackers("lgm")
        self.acc.wait_for_everyone()
        if self.main:
            eff = cfg.batch_size * self.world * cfg.gradient_accumulation_steps
            log.info("training %s: %d steps (from %d), %d process(es), effective batch %d, %s, render %s, "
                     "%d train / %d val objects, lambda_lpips %s, warm-up %d steps",
                     self.run.name, total, self.step, self.world, eff, self.mixed_precision, self.backend,
                     len(self.train_objects), len(self.val_objects), cfg.lambda_lpips if self.lpips else 0,
                     effective_warmup(cfg, total))
        if self.step >= end:
            return TrainResult(self.step, False, self.out / "model.safetensors")

        accum = cfg.gradient_accumulation_steps
        loader = iter(self.loader(self.step * accum, end * accum))
        stop = _StopFlag()
        stop.install()
        t_start = time.monotonic()
        deadline = t_start + 60.0 * opts.max_minutes if opts.max_minutes else None
        bar = self._progress(total)
        pending: List[tuple] = []  # (step, lr, tensor of terms) not yet written
        last_metrics: Dict[str, float] = {}
        stopped_early = False
        t_log, steps_log = time.monotonic(), 0
        self.model.train()
        metrics_path = self.out / "metrics.jsonl"
        try:
            while self.step < end:
                lam = lpips_weight(self.step, cfg.lambda_lpips, cfg.lpips_start_step, cfg.lpips_ramp_steps) \
                    if self.lpips is not None else 0.0
                terms_sum, gnorm = None, torch.zeros(())
                for _ in range(accum):
                    batch = self._to_device(next(loader))
                    with self.acc.accumulate(self.model):
                        terms, images, _ = self.forward(self.model, batch, lam)
                        self.acc.backward(terms["loss"])
                        if self.acc.sync_gradients:
                            gnorm = self.acc.clip_grad_norm_(self.params, cfg.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    vec = torch.stack([terms[k].detach().float() for k in ("loss", "mse", "mse_alpha", "lpips", "psnr")])
                    terms_sum = vec if terms_sum is None else terms_sum + vec
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                self.step += 1
                steps_log += 1
                gn = (gnorm.detach() if torch.is_tensor(gnorm) else torch.tensor(gnorm)).float().reshape(1)
                pending.append((self.step, lr, torch.cat([terms_sum / accum, gn.to(terms_sum.device)])))
                if bar is not None:
                    bar.update(1)
                log_now = self.step % cfg.log_every == 0 or self.step == end
                if log_now:
                    last_metrics = self._flush(pending, metrics_path, bar, steps_log, time.monotonic() - t_log)
                    pending, t_log, steps_log = [], time.monotonic(), 0
                want_stop = stop.set or (deadline is not None and time.monotonic() > deadline)
                if self.world > 1:  # agree at log steps only (a collective)
                    want_stop = self._any(want_stop) if log_now else False
                if self.main and cfg.preview_every and self.step % cfg.preview_every == 0:
                    self.preview(batch, images, f"step_{self.step}")
                if cfg.validate_every and self.step % cfg.validate_every == 0 and self.step < end:
                    self._validate_and_log(bar)
                if want_stop and self.step < end:
                    stopped_early = True
                    if self.main:
                        why = "stop requested" if stop.set else f"--max-minutes {opts.max_minutes} reached"
                        log.warning("%s at step %d: saving a checkpoint; continue with --resume", why, self.step)
                    if pending:
                        last_metrics = self._flush(pending, metrics_path, bar, steps_log, time.monotonic() - t_log)
                        pending = []
                    break
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                    self.save()
        finally:
            stop.uninstall()
            if bar is not None:
                bar.close()
        path = self.save(stopped=stopped_early)
        if not stopped_early and self.step >= total and cfg.validate_every:
            self._validate_and_log(None)
        if opts.tensorboard:
            self.acc.end_training()
        if self.main:
            log.info("%s at step %d: %s", "stopped" if stopped_early else "done", self.step, path)
        return TrainResult(self.step, stopped_early, path, last_metrics)

    def _validate_and_log(self, bar) -> None:
        if self.main:
            res = self.validate()
            if res is not None:
                msg = "validation step %d: psnr %.2f (novel %.2f), ssim %.4f%s" % (
                    self.step, res["psnr"], res["psnr_novel"], res["ssim"],
                    f", lpips {res['lpips']:.4f}" if "lpips" in res else "")
                (bar.write if bar is not None else log.info)(msg)
                if self.opts.tensorboard:
                    self.acc.log({f"val/{k}": v for k, v in res.items() if k not in ("step", "objects")}, step=self.step)
        self.acc.wait_for_everyone()

    def _any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def _flush(self, pending, path: Path, bar, steps: int, seconds: float) -> dict:
        """One host transfer (and one all-reduce) for the steps since the last log; writes their lines."""
        names = ("loss", "mse", "mse_alpha", "lpips", "psnr", "grad_norm")
        stacked = torch.stack([p[2] for p in pending])
        if self.world > 1:
            stacked = self.acc.reduce(stacked, reduction="mean")
        rows = stacked.cpu().tolist()
        rate = steps / seconds if seconds > 0 else float("nan")
        last = {}
        if self.main:
            with open(path, "a") as f:
                for (step, lr, _), row in zip(pending, rows):
                    rec = {"step": step, **{k: float(v) for k, v in zip(names, row)}, "lr": float(lr)}
                    if self.lpips is None:
                        rec.pop("lpips")
                    f.write(json.dumps(rec) + "\n")
                    last = rec
            last["it_per_s"] = rate
            last["images_per_s"] = rate * self.run.train.batch_size * self.world * self.run.train.gradient_accumulation_steps
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4f}", psnr=f"{last['psnr']:.2f}", lr=f"{last['lr']:.2e}",
                                refresh=False)
            else:
                self._plain_progress(last)
            if self.opts.tensorboard:
                self.acc.log({f"train/{k}": v for k, v in last.items() if k != "step"}, step=last["step"])
        return last

    def _progress(self, total: int):
        if not (self.main and self.opts.progress):
            return None
        if not sys.stderr.isatty():
            self._t0, self._s0 = time.monotonic(), self.step
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)

    def _plain_progress(self, m: dict) -> None:
        if not self.opts.progress:
            return
        done = m["step"] - self._s0
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.opts.steps - m["step"]) / rate if rate > 0 else float("nan")
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        print(f"step {m['step']}/{self.opts.steps} loss {m['loss']:.4f} psnr {m['psnr']:.2f} lr {m['lr']:.2e} "
              f"{rate:.2f} it/s ETA {eta_s}", file=sys.stderr, flush=True)


def train(opts: TrainOptions) -> TrainResult:
    """Run (or resume) one training run; see :class:`TrainOptions`."""
    return Trainer(opts).train()
