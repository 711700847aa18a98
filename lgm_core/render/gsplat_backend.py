"""gsplat fast path (CUDA only, optional).

:func:`render_views` is this backend's side of the render contract (:mod:`lgm_core.render.common`).
gsplat is imported lazily; its CUDA extension compiles on first use (about a minute) and may fail
on a user's machine (no nvcc, unsupported compiler, ...). Any such failure is logged once as one
line and recorded in :data:`STATUS` as "unavailable", so :func:`lgm_core.render.render` falls back
to the PyTorch renderer instead of crashing.

Settings follow the original rasterizer (docs/conventions.md#rasterizer-semantics): quaternions
wxyz, OpenCV world-to-camera view matrices, K with the principal point at the image centre,
``near_plane=0.2``, ``eps2d=0.3``, colours passed directly (no SH evaluation), classic
(non-antialiased) mode, expected depth ("RGB+ED"). Legacy Gaussians (raw quaternions) are passed as
precomputed covariances, since gsplat normalises quaternions. Known differences to the original
kernel (and to the torch backend): gsplat clamps α at 0.999 instead of 0.99 and uses an
opacity-aware 3.33σ footprint instead of the 3σ tile rectangle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .common import EPS2D, SplatInputs, ViewRenders

log = logging.getLogger("lgm_core.render")


@dataclass
class GsplatStatus:
    """Whether gsplat works in this process: unknown until the first :func:`available` call
    (``checked`` False), then ``ok`` with the ``reason`` when it does not. A failure is final for
    the process (see :func:`mark_failed`); :meth:`reset` forgets the result (tests).
    ``warned_not_cuda``: the "gsplat needs CUDA tensors" note was logged (once per process)."""

    checked: bool = False
    ok: bool = False
    reason: str = ""
    warned_not_cuda: bool = False

    def disable(self, reason: str, warn: bool = True) -> None:
        self.checked, self.ok, self.reason = True, False, reason
        if warn:
            log.warning("gsplat backend unavailable (%s); using the PyTorch renderer instead", reason)

    def warn_not_cuda(self, device) -> None:
        """Log once that gsplat was asked for with tensors on ``device`` (not CUDA)."""
        if not self.warned_not_cuda:
            self.warned_not_cuda = True
            log.warning("gsplat needs CUDA tensors (got %s); using the PyTorch renderer", device)

    def reset(self) -> None:
        self.checked, self.ok, self.reason, self.warned_not_cuda = False, False, "", False


STATUS = GsplatStatus()
"""The process-wide gsplat status (one compilation/probe per process)."""


def available(device: Optional[torch.device] = None) -> bool:
    """True when gsplat can render on ``device`` (CUDA). The first call imports gsplat and renders
    one tiny scene (this triggers gsplat's one-time CUDA compilation); the result is kept in
    :data:`STATUS`."""
    if device is not None and torch.device(device).type != "cuda":
        return False
    if STATUS.checked:
        return STATUS.ok
    if not torch.cuda.is_available():
        STATUS.disable("CUDA is not available", warn=False)
        return False
    try:
        from gsplat import rasterization  # noqa: F401
    except Exception as exc:  # not installed, or a broken install
        STATUS.disable(f"cannot import gsplat: {type(exc).__name__}: {exc}".splitlines()[0])
        return False
    try:
        dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        _probe(dev)
    except Exception as exc:  # compilation or kernel launch failure
        STATUS.disable(f"gsplat failed on a test render: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        return False
    STATUS.checked, STATUS.ok, STATUS.reason = True, True, ""
    return True


def _probe(device: torch.device) -> None:
    from gsplat import rasterization

    means = torch.tensor([[0.0, 0.0, 2.0]], device=device)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device)
    scales = torch.full((1, 3), 0.1, device=device)
    opac = torch.ones(1, device=device)
    colors = torch.ones(1, 3, device=device)
    K = torch.tensor([[[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]]], device=device)
    img, _, _ = rasterization(means, quats, scales, opac, colors, torch.eye(4, device=device)[None], K, 16, 16)
    if not bool(torch.isfinite(img).all()):
        raise RuntimeError("non-finite output")


def mark_failed(exc: BaseException) -> None:
    """Called by the dispatcher when a real gsplat render raised: disable gsplat for this process."""
    STATUS.disable(f"gsplat render failed: {type(exc).__name__}: {exc}".splitlines()[0][:300])


def render_views(inputs: SplatInputs, item: int, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                 height: int, *, near: float, backgrounds: torch.Tensor, depth: bool = True,
                 packed: bool = False) -> ViewRenders:
    """Render batch item ``item`` of ``inputs`` into C cameras (contract of
    :mod:`lgm_core.render.common`) with gsplat's ``rasterization()``: unit-quaternion Gaussians as
    quaternions + scales (gsplat builds the covariance), legacy ones as precomputed covariances.
    Differentiable through gsplat's own backward. ``depth`` is always computed (RGB+ED)."""
    if inputs.normalized:
        shape = dict(quats=inputs.quats[item], scales=inputs.scales[item])
    else:  # gsplat would normalise the quaternion: hand it the raw-formula covariance
        shape = dict(covars=inputs.covs[item])
    image, alpha, expected_depth = rasterize_views(
        inputs.means[item], inputs.opacities[item], inputs.colors[item], viewmats, Ks, width, height,
        near=near, backgrounds=backgrounds, packed=packed, **shape)
    return ViewRenders(image, alpha, expected_depth if depth else None)


def rasterize_views(
    means: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    near: float,
    quats: Optional[torch.Tensor] = None,
    scales: Optional[torch.Tensor] = None,
    covars: Optional[torch.Tensor] = None,
    backgrounds: Optional[torch.Tensor] = None,
    packed: bool = False,
) -> tuple:
    """Render N Gaussians (``means`` [N,3], ``opacities`` [N], ``colors`` [N,3], and either
    ``quats`` [N,4] wxyz + ``scales`` [N,3] or ``covars`` [N,3,3]) into C cameras (``viewmats``
    [C,4,4] OpenCV world-to-camera, ``Ks`` [C,3,3]).

    ``backgrounds`` [C,3] (optional) is composited by gsplat's kernel.
    Returns (colour [C,H,W,3] (over the background, not clamped), alpha [C,H,W,1], expected
    depth [C,H,W,1]).
    """
    from gsplat import rasterization

    if covars is not None:  # gsplat ignores quats/scales when covars are given
        quats = scales = None
    out, alpha, _ = rasterization(
        means.contiguous(), None if quats is None else quats.contiguous(),
        None if scales is None else scales.contiguous(), opacities.contiguous(),
        colors.contiguous(), viewmats.contiguous(), Ks.contiguous(), int(width), int(height),
        near_plane=float(near), eps2d=EPS2D, sh_degree=None, packed=packed, tile_size=16,
        render_mode="RGB+ED", rasterize_mode="classic",
        backgrounds=None if backgrounds is None else backgrounds.contiguous(),
        covars=None if covars is None else covars.contiguous(),
    )
    return out[..., :3], alpha, out[..., 3:4]
