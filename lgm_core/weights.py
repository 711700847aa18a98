"""Loading LGM checkpoints: local .safetensors files, folders, or the Hugging Face hub.

Only safetensors are read (no pickle, nothing from a model repo is executed); loading is strict
(every key, every shape); the architecture preset is detected from the keys and shapes; the
rotation activation (fixrot vs legacy, docs/conventions.md#legacy-rotations) is chosen from the official file names.
The network is touched only when a hub repo id is given, through ``huggingface_hub`` (``HF_HOME`` /
``cache_dir``); offline (``HF_HUB_OFFLINE`` or no network, see ``lgm_core.hub``) the hub cache is used
or a one-line :class:`lgm_core.hub.HubUnavailable` is raised at once.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from . import hub
from .models.lgm import LGM, PRESETS, LGMConfig, preset_name
from .runtime import resolve_device_dtype

log = logging.getLogger("lgm_core")

DEFAULT_REPO = hub.LGM_WEIGHTS.repo_id
DEFAULT_FILENAME = hub.LGM_WEIGHTS.filename
"""The official checkpoint (from the registry in :mod:`lgm_core.hub`)."""
OFFICIAL_FILES = {
    # file name -> rotation activation the checkpoint was trained with
    "model_fp16_fixrot.safetensors": "per_gaussian",
    "model_fixrot.safetensors": "per_gaussian",
    "model_fp16.safetensors": "legacy",
    "model.safetensors": "legacy",
}
"""Known official file names, in the order a folder is searched."""
DEMO_NAME = "demo"
"""``load_lgm("demo")``: the small LGM trained by this project, shipped in ``lgm_core/assets/demo``."""
METADATA_ROTATION_KEY = "lgm_rotation_mode"
"""Optional safetensors metadata entry that states the rotation mode explicitly."""
METADATA_CONFIG_KEY = "lgm_config"
"""Optional safetensors metadata entry: the full :class:`LGMConfig` as JSON (written by
:func:`save_lgm`, so custom input/output sizes survive; official files have none)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as LGM (wrong format, keys or shapes)."""


def hub_url(repo_id: str = DEFAULT_REPO, filename: str = DEFAULT_FILENAME) -> str:
    return hub.file_url(repo_id, filename)


# ---------------------------------------------------------------------- reading safetensors safely
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(path: Union[str, Path]) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]], Dict[str, str]]:
    """Parse a .safetensors header without loading tensors: ({key: (dtype, shape)}, metadata).

    Checks everything the format defines before any tensor is touched: the header length, JSON
    object, ``__metadata__`` (a string-to-string map), every entry's dtype, shape (non-negative
    integers) and data offsets (inside the file, matching dtype x shape, contiguous, no overlap).
    Raises :class:`CheckpointError` (one line, naming the file) otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such safetensors file: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: not a safetensors file (bad header length); "
                                  "only .safetensors checkpoints are supported")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path}: corrupt safetensors header: __metadata__ must map strings to strings, "
                              f"got {type(metadata).__name__}")
    entries = {}
    spans = []
    data_size = size - 8 - n
    for key, info in header.items():
        entries[key] = _check_entry(path, key, info, data_size, size)
        spans.append((info["data_offsets"][0], info["data_offsets"][1], key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            what = "overlaps another tensor" if begin < pos else "leaves a gap before it"
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {key!r} {what}")
        pos = end
    if pos != data_size:
        if pos > data_size:  # pragma: no cover - _check_entry bounds every span
            raise CheckpointError(f"{path}: truncated")
        raise CheckpointError(f"{path}: {data_size - pos} unexpected bytes after the last tensor "
                              "(a damaged or concatenated file)")
    return entries, metadata


def _check_entry(path: Path, key: str, info, data_size: int, file_size: int) -> Tuple[str, Tuple[int, ...]]:
    def bad(why: str) -> CheckpointError:
        shown = key if len(key) <= 80 else key[:77] + "..."
        return CheckpointError(f"{path}: corrupt safetensors header entry for {shown!r}: {why}")

    if not isinstance(info, dict):
        raise bad("not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise bad(f"unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(type(d) is int and d >= 0 for d in shape):
        raise bad("the shape must be a list of at most 16 non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad("data_offsets must be [begin, end] with 0 <= begin <= end")
    if offsets[1] > data_size:
        raise CheckpointError(f"{path}: truncated: the header describes {file_size - data_size + offsets[1]} bytes "
                              f"but the file has {file_size} (an interrupted download? delete it and fetch it again)")
    numel = 1
    for d in shape:
        numel *= d
    if numel * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise bad(f"shape {shape if len(str(shape)) < 60 else str(shape)[:57] + '...'} of {dtype} needs "
                  f"{numel * _DTYPE_BYTES[dtype]} bytes but data_offsets span {offsets[1] - offsets[0]}")
    return dtype, tuple(shape)


def load_safetensors(path: Union[str, Path], *, header=None) -> Dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (CPU), after :func:`read_safetensors_header` checked the
    header (pass its result as ``header`` to skip a second parse). Raises :class:`CheckpointError`
    for unreadable files and for floating-point tensors holding NaN/Inf (a corrupt or diverged
    checkpoint would otherwise give NaN Gaussians)."""
    from safetensors.torch import load_file

    if header is None:
        read_safetensors_header(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read tensors ({reason}); the file may be corrupt") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN/Inf values ({shown}): a corrupt or diverged "
                              "checkpoint")
    return state


def _expected_shapes(config: LGMConfig) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        model = LGM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch_message(path, shapes: Dict[str, Tuple[int, ...]], expected: Dict[str, Tuple[int, ...]], what: str) -> str:
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k} {list(shapes[k])} (expected {list(expected[k])})"
             for k in expected if k in shapes and shapes[k] != expected[k]]

    def few(items):
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    scores = {}
    for name in ("big", "small", "tiny"):
        exp = _expected_shapes(PRESETS[name])
        scores[name] = sum(1 for k, s in shapes.items() if exp.get(k) == s) / max(len(exp), len(shapes), 1)
    closest = max(scores, key=scores.get)
    parts = [f"{path}: does not match {what}"]
    if missing:
        parts.append(f"missing {len(missing)} keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {few(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatches: {few(wrong)}")
    parts.append(f"closest preset: {closest!r} ({scores[closest]:.0%} of tensors match)")
    return "; ".join(parts)


def config_from_metadata(path, metadata: Optional[Dict[str, str]]) -> Optional[LGMConfig]:
    """The :class:`LGMConfig` stored in a checkpoint's metadata by :func:`save_lgm`, or None."""
    text = (metadata or {}).get(METADATA_CONFIG_KEY)
    if not text:
        return None
    try:
        return LGMConfig(**json.loads(text))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {METADATA_CONFIG_KEY} metadata ({exc})") from None


def detect_config(path, shapes: Dict[str, Tuple[int, ...]], preset: Optional[str] = None,
                  metadata: Optional[Dict[str, str]] = None) -> LGMConfig:
    """The architecture for a checkpoint with these key shapes (strictly verified): the explicit
    ``preset``, else the config stored in the ``metadata``, else inferred from the shapes."""
    stored = config_from_metadata(path, metadata) if preset is None else None
    if stored is not None:
        expected = _expected_shapes(stored)
        if expected != shapes:
            raise CheckpointError(_mismatch_message(path, shapes, expected, "the config stored in its metadata"))
        return stored
    if preset is not None:
        config = LGMConfig.preset(preset)
        expected = _expected_shapes(config)
        if expected != shapes:
            raise CheckpointError(_mismatch_message(path, shapes, expected, f"the {preset!r} preset"))
        return config
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        config = LGMConfig.from_state_dict(meta)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: {exc}; " + _mismatch_message(path, shapes, _expected_shapes(PRESETS["big"]),
                                                                    "any LGM architecture")) from None
    expected = _expected_shapes(config)
    if expected != shapes:
        raise CheckpointError(_mismatch_message(path, shapes, expected, "an LGM architecture"))
    return config


def rotation_mode_for(path: Union[str, Path], metadata: Optional[Dict[str, str]] = None) -> str:
    """Rotation activation for a checkpoint: from its metadata, else from the official file name.
    Unknown names get the fixrot behaviour with a warning."""
    if metadata and metadata.get(METADATA_ROTATION_KEY) in ("per_gaussian", "legacy"):
        return metadata[METADATA_ROTATION_KEY]
    name = Path(path).name
    if name in OFFICIAL_FILES:
        mode = OFFICIAL_FILES[name]
        if mode == "legacy":
            log.warning("%s is a pre-fix LGM checkpoint: using the legacy rotation activation "
                        "(prefer model_fp16_fixrot.safetensors)", name)
        return mode
    if "fixrot" in name:
        return "per_gaussian"
    log.warning("cannot tell from the name %r whether this checkpoint predates LGM's rotation fix; assuming "
                "'fixrot' (per-Gaussian normalisation). Pass rotation_mode='legacy' for model.safetensors-era weights.",
                name)
    return "per_gaussian"


# ---------------------------------------------------------------------- resolving the source
def resolve_checkpoint(
    source: Optional[Union[str, os.PathLike]] = None,
    *,
    filename: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    local_files_only: Optional[bool] = None,
    place_hint: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Turn ``source`` (file, folder, hub repo id, ``"demo"``, or None for ``ashawkey/LGM``) into a local
    .safetensors path, downloading from the hub only for repo ids.

    ``place_hint`` is the folder named in the error message when the file cannot be had
    (e.g. ComfyUI's ``models/lgm``).
    """
    source = DEFAULT_REPO if source is None else os.fspath(source)
    if source == DEMO_NAME:  # the small model shipped inside the package (no network)
        from .demo_assets import demo_weights_path

        return demo_weights_path()
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: only .safetensors checkpoints are loaded (pickle-based .pt/.pth/.ckpt/.bin "
                                  "files can run arbitrary code); convert it to safetensors first")
        return path
    if path.is_dir():
        names = [filename] if filename else list(OFFICIAL_FILES)
        for name in names:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if not filename and len(found) == 1:
            return path / found[0]
        raise FileNotFoundError(
            f"no LGM checkpoint in {path} (looked for {', '.join(names)}; found {found or 'no .safetensors'}). "
            f"Download {hub_url()} into that folder.")
    if not hub.is_repo_id(source):
        raise FileNotFoundError(f"LGM checkpoint not found: {source}")
    filename = filename or DEFAULT_FILENAME
    target = Path(place_hint) / filename if place_hint else Path("<models>/lgm") / filename
    return hub.fetch_file(source, filename, what=hub.LGM_WEIGHTS.what, cache_dir=cache_dir,
                          local_files_only=local_files_only, place_hint=target)


def load_lgm(
    source: Optional[Union[str, os.PathLike]] = None,
    preset: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
    *,
    filename: Optional[str] = None,
    rotation_mode: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    local_files_only: Optional[bool] = None,
    place_hint: Optional[Union[str, os.PathLike]] = None,
) -> LGM:
    """Load an LGM checkpoint strictly and return the model in eval mode.

    Args:
        source: a ``.safetensors`` file, a folder holding one of the official file names, or a hub
            repo id (default ``"ashawkey/LGM"``, file ``model_fp16_fixrot.safetensors``).
        preset: ``"big"``, ``"small"``, ``"lrm"`` or ``"tiny"``; default: detected from the keys and
            shapes (custom architectures are inferred too).
        dtype: weights dtype; default float16 on CUDA, float32 elsewhere (:mod:`lgm_core.runtime`).
        device: default CUDA if available, else CPU (:mod:`lgm_core.runtime`).
        rotation_mode: ``"per_gaussian"`` (fixrot) or ``"legacy"``; default from the file name.
    """
    path = resolve_checkpoint(source, filename=filename, cache_dir=cache_dir,
                              local_files_only=local_files_only, place_hint=place_hint)
    entries, metadata = read_safetensors_header(path)
    shapes = {k: s for k, (_, s) in entries.items()}
    config = detect_config(path, shapes, preset, metadata)
    mode = rotation_mode or rotation_mode_for(path, metadata)
    device, dtype = resolve_device_dtype(device, dtype)
    state = load_safetensors(path, header=(entries, metadata))
    with torch.device("meta"):
        model = LGM(config, rotation_mode=mode)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.load_state_dict(state, strict=True)
    del state
    name = preset_name(config) or "custom"
    log.info("loaded LGM %s (%s, %s, rotation %s) from %s", name, dtype, device, mode, path)
    return model.eval().requires_grad_(False)


def save_lgm(model: LGM, path: Union[str, os.PathLike], dtype: Optional[torch.dtype] = None,
             metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``model``'s weights as .safetensors (atomically) in the official key layout, recording
    its rotation mode and full config (so :func:`load_lgm` rebuilds custom sizes exactly), plus any
    extra string ``metadata``."""
    from dataclasses import asdict

    from safetensors.torch import save as save_bytes

    from .fileio import atomic_write_bytes

    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    meta = dict(metadata or {})
    meta.update({METADATA_ROTATION_KEY: model.rotation_mode, METADATA_CONFIG_KEY: json.dumps(asdict(model.config))})
    atomic_write_bytes(path, save_bytes(state, metadata=meta))
    return Path(path)
