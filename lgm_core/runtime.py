"""Runtime policy: default device and dtype, the CUDA-graph runner, the compile wrapper.

One policy for every front end (CLI, ComfyUI nodes, trainer, benchmarks) and both models:

* :func:`default_device`: CUDA when available, else CPU. :func:`default_dtype`: float16 on CUDA,
  float32 elsewhere. ``load_lgm`` and ``MultiViewPipeline.from_pretrained`` both default to them.
* :class:`CUDAGraphRunner` replays a pure function of tensors from captured CUDA graphs (removes the
  per-kernel launch cost that dominates small-batch inference: LGM's ~600-kernel U-Net, one diffusion
  step). It captures once per input signature (shapes, dtypes, devices), **captures again when the
  weights it reads move** (``.to()``, ComfyUI offloading and reloading), and runs the plain function on
  CPU inputs, with autograd, while a stream is being captured, or after a failed capture (logged once).
* :class:`CompiledOrEager`: ``torch.compile`` that falls back to eager for good when compilation is
  impossible on the machine.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch

log = logging.getLogger("lgm_core")

# cuDNN's algorithm search (``torch.backends.cudnn.benchmark``) for the convolutions of the runners made with
# ``cudnn_benchmark=True``: switched on around each capture (warm-up runs and capture) and restored after, so
# the graph replays the fastest algorithm cuDNN measured for its shapes rather than its heuristic pick; the
# process-wide setting is left as the user has it. False turns it off for every runner.
CUDNN_BENCHMARK = True

__all__ = ["default_device", "default_dtype", "resolve_device_dtype", "CUDAGraphRunner", "CompiledOrEager"]


def default_device() -> torch.device:
    """CUDA (the current device) when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """Weights dtype for ``device``: float16 on CUDA, float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def resolve_device_dtype(device: Union[str, torch.device, None] = None,
                         dtype: Optional[torch.dtype] = None) -> Tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` with the defaults of this policy filled in."""
    device = torch.device(device) if device is not None else default_device()
    return device, dtype if dtype is not None else default_dtype(device)


# ------------------------------------------------------------------------------------- CUDA graphs
WeightsSource = Union[torch.nn.Module, Callable[[], Sequence[torch.Tensor]], None]


_MISSING = object()


def _walk_every_time(items: list) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(addresses, versions) of the parameters and buffers of ``items`` (modules, tensors) by a full walk:
    what the watch does for modules whose slots are not plain dicts (TorchScript modules)."""
    tensors: List[torch.Tensor] = []
    for item in items:
        if isinstance(item, torch.nn.Module):
            tensors.extend(item.parameters())
            tensors.extend(item.buffers())
        else:
            tensors.append(item)
    return (tuple(t.data_ptr() for t in tensors),
            tuple(0 if t.is_inference() else t._version for t in tensors))


class _WeightWatch:
    """The per-call check of a runner's weights, cheap enough to run before every replay.

    Walking a module tree (``parameters()``, ``buffers()``) on every call cost 1.4-1.5 ms for LGM big's
    376 tensors on the H200 machine's CPU while the GPU waited. The watch walks once and remembers where
    each weight lives (its module's parameter or buffer dict and name) and which child module each slot
    of a ``_modules`` dict held. Later calls confirm that the modules and child modules are the same
    objects and that no dict gained or lost an entry (else: walk again), then read the weights found in
    those slots now — so a weight replaced by assignment is seen at once — and fingerprint them by
    storage address and version counter (~0.2 ms there). Tensors are never held by the watch itself
    (an offloaded model's old buffers are freed as before); modules and their dicts are, until the next
    walk or ``CUDAGraphRunner.reset``."""

    def __init__(self):
        self._plain = True  # False: some module's slots are not dicts (TorchScript): walk on every call
        self._modules: list = []  # the module items of the source, by identity (none yet: the first call walks)
        self._module_slots: list = []  # (a _modules dict, name) and the child held there at the walk
        self._children: list = []
        self._tensor_slots: list = []  # (a _parameters/_buffers dict, name) of every weight
        self._none_slots: list = []  # slots that held None (e.g. bias=None, a dropped derived weight)
        self._dicts: list = []  # every dict walked, and its size at the walk
        self._sizes: list = []
        self._addresses: Optional[Tuple[int, ...]] = None
        self._inference: List[bool] = []  # inference tensors have no version counter

    def _walk(self, modules: list) -> None:
        self._plain, self._modules, self._addresses = True, modules, None
        self._module_slots, self._children, self._tensor_slots, self._none_slots, self._dicts = [], [], [], [], []
        for root in modules:
            for module in root.modules():
                ps, bs, ms = module._parameters, module._buffers, module._modules
                if not (isinstance(ps, dict) and isinstance(bs, dict) and isinstance(ms, dict)):
                    self._plain = False
                    return
                self._dicts += (ps, bs, ms)
                for d in (ps, bs):
                    for name, value in d.items():
                        (self._none_slots if value is None else self._tensor_slots).append((d, name))
                for name, child in ms.items():
                    self._module_slots.append((ms, name))
                    self._children.append(child)
        self._sizes = [len(d) for d in self._dicts]

    def _stale(self, modules: list) -> bool:
        return (len(modules) != len(self._modules)
                or any(map(operator.is_not, modules, self._modules))
                or any(map(operator.is_not, [d.get(n, _MISSING) for d, n in self._module_slots], self._children))
                or any(d.get(n, _MISSING) is not None for d, n in self._none_slots)
                or list(map(len, self._dicts)) != self._sizes)

    def fingerprint(self, source: WeightsSource) -> Hashable:
        """(storage addresses, version counters) of every weight tensor of ``source`` (a module, or a
        callable returning modules and tensors); () without a source."""
        if source is None:
            return ()
        root = source if isinstance(source, torch.nn.Module) else source()
        items = [root] if isinstance(root, torch.nn.Module) else list(root)
        modules = [item for item in items if isinstance(item, torch.nn.Module)]
        if self._stale(modules):
            self._walk(modules)
        if not self._plain:
            return _walk_every_time(items)
        direct = [item for item in items if not isinstance(item, torch.nn.Module)]
        tensors = [d.get(n) for d, n in self._tensor_slots] + direct
        try:
            addresses = tuple(t.data_ptr() for t in tensors)
        except AttributeError:  # a weight slot now holds None: walk again (it joins the None slots)
            self._walk(modules)
            tensors = [d.get(n) for d, n in self._tensor_slots] + direct
            addresses = tuple(t.data_ptr() for t in tensors)
        if addresses != self._addresses:  # new storage (a move, a swap, ``.data = ...``): re-read the kinds
            self._inference = [t.is_inference() for t in tensors]
            self._addresses = addresses
        try:
            versions = tuple(0 if inference else t._version for t, inference in zip(tensors, self._inference))
        except RuntimeError:  # "Inference tensors do not track version counter" (made under inference_mode, then
            versions = tuple(map(_version_or_zero, tensors))  # re-wrapped): such a tensor counts as version 0
        return addresses, versions


def _version_or_zero(t: torch.Tensor) -> int:
    try:
        return 0 if t.is_inference() else t._version
    except RuntimeError:
        return 0


@dataclass
class _Graph:
    """One capture: static input buffers (None where the argument is None), the replay call and the
    static output it overwrites."""

    inputs: Tuple[Optional[torch.Tensor], ...]
    replay: Callable[[], None]
    output: torch.Tensor


class CUDAGraphRunner:
    """Wrap ``fn(*args) -> tensor`` (args: tensors or None) so CUDA inputs run through captured graphs.

    ``weights``: the module (or a callable returning a module, or tensors) whose memory ``fn`` reads
    besides its arguments (a module's parameters and buffers). Their storage addresses and version
    counters are checked on every call; when they changed (the weights moved, were reloaded or changed in
    place) every captured graph is dropped, so the next call captures again. The output is a fresh tensor (the graph's static output is cloned), so results of earlier
    calls are never overwritten. Inference only: calls with autograd recording run ``fn`` eagerly.
    Set ``enabled = False`` to run eagerly. ``cudnn_benchmark``: let cuDNN measure its convolution
    algorithms while capturing (``CUDNN_BENCHMARK``): a few seconds more per capture, for convolutions
    large enough that the measured pick beats the heuristic one (the batched diffusion UNet).
    """

    device_types = ("cuda",)
    """Inputs on these devices are graphed (tests substitute a CPU capture, see ``_capture``)."""

    def __init__(self, fn: Callable[..., torch.Tensor], *, weights: WeightsSource = None, warmup: int = 2,
                 name: Optional[str] = None, cudnn_benchmark: bool = False):
        self.fn = fn
        self.cudnn_benchmark = cudnn_benchmark
        self.weights = weights
        self.warmup = warmup
        self.name = name or getattr(fn, "__qualname__", "function")
        self.enabled = True
        self.failed = False
        self.graphs: Dict[Hashable, _Graph] = {}
        self._weights_key: Optional[Hashable] = None
        self._watch = _WeightWatch()
        self._pool = None

    # -- policy
    def _graphable(self, args) -> bool:
        tensors = [a for a in args if a is not None]
        return (self.enabled and not self.failed and bool(tensors) and not torch.is_grad_enabled()
                and all(a.device.type in self.device_types for a in tensors) and not capturing_cuda_graph())

    def _current_weights(self) -> Hashable:
        """What identifies the weights' memory now (:class:`_WeightWatch`: storage address and version of
        every weight tensor): a move, a reload or an in-place change of a weight drops the captured graphs
        (in-place changes matter for values derived from the weights at capture time, such as the
        diffusion UNet's concatenated q/k/v weights). Inference-mode tensors have no version counter (0):
        after changing those in place, call :meth:`reset`."""
        return self._watch.fingerprint(self.weights)

    def __call__(self, *args: Optional[torch.Tensor]) -> torch.Tensor:
        if not self._graphable(args):
            return self.fn(*args)
        weights = self._current_weights()
        if weights != self._weights_key:  # first call, or the weights moved/changed: captured graphs are stale
            self._drop_graphs()
            self._weights_key = weights
        key = (torch.is_inference_mode_enabled(),
               *(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args))
        graph = self.graphs.get(key)
        if graph is None:
            static = tuple(None if a is None else a.clone() for a in args)
            try:
                with building_cuda_graph_scope():
                    graph = self._capture(static)
            except Exception as exc:  # capture is an optimisation only
                log.warning("CUDA graph capture of %s failed (%s: %s); running eagerly", self.name,
                            type(exc).__name__, exc)
                self.failed = True
                self.reset()
                return self.fn(*args)
            # buffers the warm-up derived from the weights (e.g. the diffusion UNet's concatenated q/k/v
            # weights) are part of what the graphs read: key them too, or the next call would re-capture.
            # If the warm-up replaced such a buffer (a setting of a derived weight changed), graphs
            # captured before read the freed old one: drop them.
            after = self._current_weights()
            if after != weights:
                self.graphs.clear()
            self.graphs[key] = graph
            self._weights_key = after
        for buffer, value in zip(graph.inputs, args):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        return graph.output.clone()

    def _capture(self, static: Tuple[Optional[torch.Tensor], ...]) -> _Graph:
        """Warm up on a side stream (kernel selection, workspaces), then capture ``fn`` on ``static``;
        every graph of this runner shares one memory pool (they replay one at a time)."""
        device = next(a.device for a in static if a is not None)
        # on the inputs' GPU even when it is not the current one (``--device cuda:1``): kernels that
        # launch on the current device (Triton) and the capture stream must be on that GPU
        with torch.cuda.device(device), _cudnn_benchmark(self.cudnn_benchmark):
            current = torch.cuda.current_stream(device)
            stream = torch.cuda.Stream(device=device)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.fn(*static)
            current.wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=torch.cuda.Stream(device=device)):
                output = self.fn(*static)
        return _Graph(static, graph.replay, output)

    def reset(self) -> None:
        """Free every captured graph and their memory pool, and forget the weights' layout (the watch holds
        the model's modules until then)."""
        self._drop_graphs()
        self._watch = _WeightWatch()
        self._weights_key = None

    def _drop_graphs(self) -> None:
        self.graphs.clear()
        self._pool = None


@contextlib.contextmanager
def _cudnn_benchmark(wanted: bool = True):
    """``torch.backends.cudnn.benchmark`` on for a capture (when ``wanted`` and ``CUDNN_BENCHMARK``) and back
    to its value after; nothing else of cuDNN's settings changes."""
    cudnn = torch.backends.cudnn
    before = cudnn.benchmark
    if wanted and CUDNN_BENCHMARK and not before:
        cudnn.benchmark = True
    try:
        yield
    finally:
        if cudnn.benchmark != before:
            cudnn.benchmark = before


def capturing_cuda_graph() -> bool:
    """Whether the current CUDA stream is capturing a CUDA graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_graph_build = threading.local()


@contextlib.contextmanager
def building_cuda_graph_scope():
    """Marks this thread as building a CUDA graph (:class:`CUDAGraphRunner` wraps its warm-up runs and
    its capture in it)."""
    depth = getattr(_graph_build, "depth", 0)
    _graph_build.depth = depth + 1
    try:
        yield
    finally:
        _graph_build.depth = depth


def building_cuda_graph() -> bool:
    """Whether code runs to be captured in a CUDA graph: a :class:`CUDAGraphRunner` warming up or
    capturing on this thread, or any stream capture. Kernels whose launch is expensive but whose GPU
    time is short (the fused Triton kernels of ``lgm_core.models.fused_norm``) are used only then."""
    return getattr(_graph_build, "depth", 0) > 0 or capturing_cuda_graph()


# ------------------------------------------------------------------------------------- compilation
class CompiledOrEager:
    """``torch.compile(fn)`` that falls back to ``fn`` for good (one log line) if compilation or
    the compiled call fails — e.g. no Triton / C compiler on the user's machine. ``compiler``: how to
    compile (default ``torch.compile``; e.g. ``lambda f: compile_cache.PersistentCompile(f, ...)`` to
    compile once per machine instead of once per process)."""

    def __init__(self, fn: Callable, *, compiler: Optional[Callable[[Callable], Callable]] = None,
                 **compile_kwargs):
        self.eager = fn
        self.ok = True
        try:
            self.compiled = compiler(fn) if compiler is not None else torch.compile(fn, **compile_kwargs)
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
