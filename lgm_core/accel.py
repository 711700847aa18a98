"""Optional GPU accelerators with portable fallbacks.

:class:`CUDAGraphRunner` replays a captured CUDA graph of a pure function of one tensor, which
removes the per-kernel launch cost that dominates small-batch inference of LGM's ~600-kernel
U-Net. It re-captures per input (shape, dtype, device) and runs the plain function on CPU,
while a stream is being captured, or when capture fails (logged once).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

log = logging.getLogger("lgm_core")


class CUDAGraphRunner:
    """Wrap ``fn(x) -> tensor`` so CUDA inputs run through a captured graph.

    The output is a fresh tensor (the graph's static output is cloned), so results of earlier
    calls are never overwritten. Inputs must not require grad (inference only).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2,
                 state_key: Optional[Callable[[], Hashable]] = None):
        """``state_key`` returns something that changes whenever the memory ``fn`` reads besides
        its input moves (e.g. the data pointers of a model's parameters, which change when the
        model is moved or offloaded); graphs captured under another key are dropped."""
        self.fn = fn
        self.warmup = warmup
        self.state_key = state_key
        self._state = None
        self.graphs: Dict[Tuple, Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.failed = False

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed or not x.is_cuda or torch.cuda.is_current_stream_capturing() or x.requires_grad:
            return self.fn(x)
        if self.state_key is not None:
            state = self.state_key()
            if state != self._state:  # weights moved: every captured graph reads stale memory
                self.graphs.clear()
                self._state = state
        key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled())
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(x)
            except Exception as exc:  # capture is an optimisation only
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self.failed = True
                return self.fn(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def reset(self) -> None:
        """Free every captured graph (e.g. before moving the model)."""
        self.graphs.clear()


class CompiledOrEager:
    """``torch.compile(fn)`` that falls back to ``fn`` for good (one log line) if compilation or
    the compiled call fails — e.g. no Triton / C compiler on the user's machine."""

    def __init__(self, fn: Callable, **compile_kwargs):
        self.eager = fn
        self.ok = True
        try:
            self.compiled = torch.compile(fn, **compile_kwargs)
        except Exception as exc:  # pragma: no cover - depends on the platform
            log.warning("torch.compile unavailable (%s); running eagerly", exc)
            self.ok = False

    def __call__(self, *args, **kwargs):
        if self.ok:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:
                log.warning("torch.compile failed (%s: %s); running eagerly", type(exc).__name__, exc)
                self.ok = False
        return self.eager(*args, **kwargs)
