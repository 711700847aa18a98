"""gsplat fast path (CUDA only, optional).

gsplat is imported lazily; its CUDA extension compiles on first use (about a minute) and may fail
on a user's machine (no nvcc, unsupported compiler, ...). Any such failure is logged once as one
line and reported as "unavailable", so :func:`lgm_core.render.render` falls back to the PyTorch
renderer instead of crashing.

Settings follow lgm_spec §6.3: quaternions wxyz, OpenCV world-to-camera view matrices, K with the
principal point at the image centre, ``near_plane=0.2``, ``eps2d=0.3``, colours passed directly
(no SH evaluation), classic (non-antialiased) mode, expected depth ("RGB+ED"). Legacy Gaussians
(raw quaternions) are passed as precomputed covariances, since gsplat normalises quaternions.
Known differences to the original kernel (and to the torch backend): gsplat clamps α at 0.999
instead of 0.99 and uses an opacity-aware 3.33σ footprint instead of the 3σ tile rectangle.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from .common import EPS2D

log = logging.getLogger("lgm_core.render")

_STATE = {"checked": False, "ok": False, "reason": ""}


def _disable(reason: str) -> None:
    _STATE.update(checked=True, ok=False, reason=reason)
    log.warning("gsplat backend unavailable (%s); using the PyTorch renderer instead", reason)


def available(device: Optional[torch.device] = None) -> bool:
    """True when gsplat can render on ``device`` (CUDA). The first call imports gsplat and renders
    one tiny scene (this triggers gsplat's one-time CUDA compilation); the result is cached."""
    if device is not None and torch.device(device).type != "cuda":
        return False
    if _STATE["checked"]:
        return _STATE["ok"]
    if not torch.cuda.is_available():
        _STATE.update(checked=True, ok=False, reason="CUDA is not available")
        return False
    try:
        from gsplat import rasterization  # noqa: F401
    except Exception as exc:  # not installed, or a broken install
        _disable(f"cannot import gsplat: {type(exc).__name__}: {exc}".splitlines()[0])
        return False
    try:
        dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        _probe(dev)
    except Exception as exc:  # compilation or kernel launch failure
        _disable(f"gsplat failed on a test render: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        return False
    _STATE.update(checked=True, ok=True, reason="")
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
    _disable(f"gsplat render failed: {type(exc).__name__}: {exc}".splitlines()[0][:300])


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
