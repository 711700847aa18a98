"""Per-step progress (ComfyUI's progress bar, with previews) and Cancel for the running node."""

from __future__ import annotations

import torch

from .comfy_api import comfy_utils, latent_previewer, log, model_management
from .devices import torch_device

__all__ = ["check_interrupted", "Progress"]


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (call inside loops)."""
    model_management.throw_exception_if_processing_interrupted()


class Progress:
    """Per-step progress for the running node, with optional previews.

    ``update(step)``: advance to ``step`` of ``total`` (checks for interruption first).
    ``update(step, latents=x0)``: also send a preview decoded from SD-family latents [V,4,h,w]
    (the V views are tiled into a square-ish grid), using ComfyUI's previewer chosen by
    ``--preview-method`` (no preview when that is ``none``, the default).
    ``update(step, image=pil)``: send a ready PIL preview.
    """

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.bar = comfy_utils.ProgressBar(self.total)
        self._previewer = None
        self._previewer_ready = False

    def _latent_previewer(self):
        if not self._previewer_ready:
            self._previewer_ready = True
            try:
                self._previewer = latent_previewer(torch_device())
            except Exception as exc:  # previews are a nicety: never fail a run for them
                log.debug("no latent previewer: %s", exc)
        return self._previewer

    def update(self, step: int, latents: torch.Tensor | None = None, image=None) -> None:
        check_interrupted()
        preview = None
        if image is not None:
            preview = ("JPEG", image, 512)
        elif latents is not None:
            previewer = self._latent_previewer()
            if previewer is not None:
                try:
                    grid = _tile_views(latents.detach()[:, :4].float())
                    preview = previewer.decode_latent_to_preview_image("JPEG", grid)
                except Exception as exc:
                    log.debug("preview failed: %s", exc)
        self.bar.update_absolute(min(int(step), self.total), self.total, preview)


def _tile_views(latents: torch.Tensor) -> torch.Tensor:
    """[V,C,h,w] -> [1,C,rows*h,cols*w] (row-major grid, 2x2 for four views)."""
    v, c, h, w = latents.shape
    cols = int(v ** 0.5 + 0.999) if v > 1 else 1
    rows = (v + cols - 1) // cols
    if rows * cols > v:
        latents = torch.cat([latents, latents.new_zeros(rows * cols - v, c, h, w)])
    grid = latents.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(1, c, rows * h, cols * w)
    return grid
