"""Compile once per machine, not per process start: ``torch.compile`` with a persistent, keyed artifact.

``torch.compile`` of LGM ``big`` or of the multi-view UNet costs about a minute on first use. Inductor
keeps what it built in a per-user temporary folder, which a reboot or a fresh container empties, and
nothing ties an entry to the model it was made for. This module stores, per compiled input signature,
one file under :func:`default_cache_dir`::

    <cache dir>/<name>-<sha256 of the key, 24 hex>.lgmcc

holding torch's portable "mega-cache" (``torch.compiler.save_cache_artifacts``: Inductor's FX-graph
and AOTAutograd cache entries, with the generated Triton kernels' binaries on CUDA, and autotuning
results). A later process loads it (``torch.compiler.load_cache_artifacts``) before the first call of
that signature, so compilation becomes cache lookups: Dynamo still traces the Python code (seconds),
but nothing is lowered, generated or compiled again.

**Key** (:class:`CompileKey`): model name and config, every input's shape/dtype/layout, the weights'
dtype and memory format, the grad mode, the device (GPU name, compute capability, CUDA version; CPU
ISA), torch/Triton/Python versions and the compile options. Any change gives another file.

**Safety**: the file is written atomically (:func:`lgm_core.fileio.atomic_path`); a file that is
truncated, corrupt, made for another key or another torch build is ignored with one warning line
and replaced by a fresh build. The payload is torch's own serialisation of its cache entries (the
pickle-based format of Inductor's cache folders, which torch itself loads from ``/tmp``), so it is
only ever written by this module, never downloaded, and read only when the file belongs to the
current user and neither it nor its folder can be written by others (POSIX; the folder is created
0700, files 0600).

Usage (the runtime policy decides *whether* to compile and falls back to eager on failure)::

    fast = PersistentCompile(model._forward_gaussians, "lgm", model.config, module=model)
    out = fast(x)              # first call per signature: load artifact or compile + save
    fast.last.status           # "hit", "built", "rebuilt" or "unsaved"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple, Union

import torch

from .fileio import atomic_path
from .runtime import capturing_cuda_graph

log = logging.getLogger("lgm_core")

__all__ = ["CACHE_DIR_ENV", "CompileKey", "CacheEntry", "PersistentCompile", "compile_cached",
           "default_cache_dir", "make_key", "read_entry", "write_entry"]

CACHE_DIR_ENV = "LGM_CACHE_DIR"
"""Environment variable naming the cache folder (default ``~/.cache/lgm_core/compiled``)."""
MAGIC = b"LGMCC1\n"
"""First bytes of a cache file; then a 4-byte little-endian header length, the UTF-8 JSON header
(key, payload size and SHA-256) and the payload (torch's serialised cache artifacts)."""
SUFFIX = ".lgmcc"


def default_cache_dir() -> Path:
    """``$LGM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lgm_core/compiled``, else ``~/.cache/lgm_core/compiled``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lgm_core" / "compiled"


# ------------------------------------------------------------------------------------------- the key
@dataclass(frozen=True)
class CompileKey:
    """Everything compiled code depends on, as stable text (see the module docstring)."""

    name: str
    config: str
    inputs: Tuple[str, ...]
    weights: str
    grad_mode: str
    device: str
    software: str
    options: str

    def as_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def digest(self) -> str:
        """24 hex characters of the SHA-256 of the canonical JSON of the key."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)[:40] or "model"
        return f"{safe}-{self.digest()}{SUFFIX}"


def _stable_text(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _describe_input(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, torch.Tensor):
        layout = "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else ("contiguous" if x.is_contiguous() else f"strides{tuple(x.stride())}")
        return f"tensor{list(x.shape)}:{str(x.dtype).replace('torch.', '')}:{x.device.type}:{layout}"
    if isinstance(x, (bool, int, float, str)):
        return f"{type(x).__name__}:{x!r}"
    return type(x).__name__


def describe_device(device: Union[str, torch.device]) -> str:
    """``"cuda:NVIDIA H200:sm_90:cuda13.0"`` or ``"cpu:x86_64:AVX2"`` (what generated code is built for)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{torch.cuda.get_device_name(index)}:sm_{major}{minor}:cuda{torch.version.cuda}"
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - old torch
        isa = "unknown"
    return f"{device.type}:{platform.machine()}:{isa}"


def software_versions() -> str:
    """torch (with its git revision), Triton and Python versions."""
    try:
        from importlib.metadata import version

        triton = version("triton")
    except Exception:
        triton = "none"
    git = getattr(torch.version, "git_version", "") or ""
    return f"torch {torch.__version__} ({git[:12]}); triton {triton}; python {sys.version_info[0]}.{sys.version_info[1]}"


def _weights_text(module: Optional[torch.nn.Module]) -> str:
    if module is None:
        return "-"
    params = list(module.parameters())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
    conv = next((p for p in params if p.dim() == 4), None)
    fmt = "channels_last" if conv is not None and conv.is_contiguous(memory_format=torch.channels_last) \
        and not conv.is_contiguous() else "contiguous"
    return f"{'+'.join(dtypes) or 'none'}:{fmt}:{sum(p.numel() for p in params)}"


def _grad_mode() -> str:
    if torch.is_inference_mode_enabled():
        return "inference"
    return "grad" if torch.is_grad_enabled() else "no_grad"


def make_key(name: str, config: Any, example_inputs: Sequence[Any], module: Optional[torch.nn.Module] = None,
             options: Optional[Dict[str, Any]] = None) -> CompileKey:
    """The key of compiling ``name`` (with ``config``, e.g. an ``LGMConfig`` or a UNet config dict) for
    these inputs in the current grad mode. ``module``: the module whose weights the function reads."""
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    return CompileKey(
        name=str(name),
        config=_stable_text(config),
        inputs=tuple(_describe_input(x) for x in example_inputs),
        weights=_weights_text(module),
        grad_mode=_grad_mode(),
        device=describe_device(device),
        software=software_versions(),
        options=_stable_text(options or {}),
    )


# ------------------------------------------------------------------------------------------- the file
class CacheFileError(ValueError):
    """A cache file that cannot be used (the message says why, in a few words)."""


def _check_private(path: Path) -> None:
    """Refuse a file another user could have written (it is loaded with torch's pickle-based reader)."""
    if os.name != "posix":
        return
    st, folder = path.stat(), path.parent.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise CacheFileError("not owned by this user or writable by others")
    if folder.st_uid != os.getuid() and folder.st_mode & 0o022:
        raise CacheFileError("in a folder that others can write")


def write_entry(path: Union[str, os.PathLike], key: CompileKey, payload: bytes) -> Path:
    """Write one cache file atomically (see :data:`MAGIC` for the layout), mode 0600 in a folder
    created 0700."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    header = json.dumps({"key": key.as_dict(), "size": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest(), "created": time.time()},
                        sort_keys=True).encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<I", len(header)))
            f.write(header)
            f.write(payload)
        os.chmod(tmp, 0o600)
    return path


def read_entry(path: Union[str, os.PathLike], key: CompileKey) -> bytes:
    """The payload of a cache file made for ``key``; raises :class:`CacheFileError` otherwise
    (``FileNotFoundError`` when there is none)."""
    path = Path(path)
    _check_private(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise CacheFileError("not a compile-cache file")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + n].decode("utf-8"))
        size, digest, stored_key = int(header["size"]), str(header["sha256"]), header["key"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CacheFileError("unreadable header") from None
    if stored_key != key.as_dict():
        raise CacheFileError("made for another key")
    payload = data[start + n:]
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
        raise CacheFileError("truncated or corrupt payload")
    return payload


# ------------------------------------------------------------------------------------------- compiling
@dataclass
class CacheEntry:
    """What happened at the first call of one input signature.

    ``status``: ``"hit"`` (artifact loaded, nothing compiled), ``"built"`` (no artifact: compiled and
    saved), ``"rebuilt"`` (an artifact was there but unusable or incomplete: compiled and replaced),
    ``"unsaved"`` (compiled, but the file could not be written). ``seconds``: wall time of that first
    call, loading included. ``compiled_graphs``/``cached_graphs``: Inductor FX-graph cache misses/hits."""

    key: CompileKey
    path: Path
    status: str
    seconds: float
    cached_graphs: int
    compiled_graphs: int
    note: str = ""


def _counts() -> Tuple[int, int]:
    """(FX graphs Inductor found in its cache, FX graphs it had to compile) so far in this process."""
    from torch._dynamo.utils import counters

    ind = counters["inductor"]
    return ind["fxgraph_cache_hit"], ind["fxgraph_cache_miss"] + ind["fxgraph_cache_bypass"]


def _fresh_artifact_record():
    """Collect only this compilation's artifacts (torch records every compile of the process)."""
    try:
        from torch.compiler._cache import CacheArtifactManager

        return CacheArtifactManager.with_fresh_cache()
    except Exception:  # older torch: the artifact then also carries earlier compiles (harmless)
        return contextlib.nullcontext()


class PersistentCompile:
    """``torch.compile(fn, dynamic=False, **compile_kwargs)`` whose first call per input signature
    loads (or builds and saves) that signature's artifact in ``cache_dir``.

    ``name``/``config``/``module``/``options`` go into the key (:func:`make_key`); compile keyword
    arguments are part of it too. Errors of ``torch.compile`` itself propagate: falling back to eager
    is the caller's policy. ``entries`` maps signatures to their :class:`CacheEntry`; ``last`` is the
    newest one.
    """

    def __init__(self, fn: Callable, name: str, config: Any = None, *, module: Optional[torch.nn.Module] = None,
                 cache_dir: Union[str, os.PathLike, None] = None, options: Optional[Dict[str, Any]] = None,
                 **compile_kwargs):
        self.fn = fn
        self.name, self.config, self.module = name, config, module
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        compile_kwargs.setdefault("dynamic", False)
        self.options = dict(options or {}, compile=compile_kwargs)
        self.compiled = torch.compile(fn, **compile_kwargs)
        self.entries: Dict[Hashable, CacheEntry] = {}
        self.last: Optional[CacheEntry] = None

    @staticmethod
    def _signature(args) -> Hashable:
        return (_grad_mode(),) + tuple(_describe_input(a) for a in args)

    def __call__(self, *args):
        sig = self._signature(args)
        if sig in self.entries or capturing_cuda_graph():
            return self.compiled(*args)
        out, self.entries[sig] = self._first_call(args)
        self.last = self.entries[sig]
        return out

    def _first_call(self, args):
        key = make_key(self.name, self.config, args, self.module, self.options)
        path = self.cache_dir / key.filename()
        t0 = time.perf_counter()
        loaded, note = False, ""
        try:
            payload = read_entry(path, key)
            torch.compiler.load_cache_artifacts(payload)
            loaded = True
        except FileNotFoundError:
            pass
        except Exception as exc:  # corrupt, truncated, another key or torch build
            note = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CacheFileError) else str(exc)
            log.warning("compile cache: ignoring %s (%s); compiling again", path, note)
        hits0, misses0 = _counts()
        with _fresh_artifact_record():
            out = self.compiled(*args)
            hits, misses = _counts()
            hits, misses = hits - hits0, misses - misses0
            status = "hit" if loaded and misses == 0 else ("rebuilt" if loaded or note else "built")
            if status != "hit":
                if loaded and not note:
                    note = "artifact did not cover this process's compilation"
                status = self._save(path, key, status)
        if out is not None and isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)
        entry = CacheEntry(key, path, status, time.perf_counter() - t0, hits, misses, note)
        return out, entry

    @staticmethod
    def _save(path: Path, key: CompileKey, status: str) -> str:
        try:
            saved = torch.compiler.save_cache_artifacts()
            if not saved:
                return "unsaved"
            write_entry(path, key, saved[0])
            return status
        except Exception as exc:  # a read-only home, a full disk: keep running compiled
            log.warning("compile cache: could not write %s (%s: %s)", path, type(exc).__name__, exc)
            return "unsaved"


def compile_cached(fn: Callable, example_inputs: Sequence[Any], name: str, config: Any = None, *,
                   module: Optional[torch.nn.Module] = None, cache_dir: Union[str, os.PathLike, None] = None,
                   options: Optional[Dict[str, Any]] = None, **compile_kwargs) -> PersistentCompile:
    """:class:`PersistentCompile` of ``fn``, called once now on ``example_inputs`` (in the current grad
    mode) so that the artifact is loaded or built before the first real call; ``.last`` tells which."""
    compiled = PersistentCompile(fn, name, config, module=module, cache_dir=cache_dir, options=options,
                                 **compile_kwargs)
    compiled(*example_inputs)
    return compiled
