"""The single adapter between this pack and ComfyUI.

This is the ONLY module of the pack that imports ComfyUI (``comfy_api``, ``comfy``, ``folder_paths``,
``latent_preview``). ComfyUI marks its V3 API ``comfy_api.latest`` as unstable; if it moves, only this
file changes. Everything else in ``nodes/`` imports ``io``/``ui`` and the helpers below from here, and
all numerical work lives in the plain-PyTorch library ``lgm_core``.

Conventions used by the helpers:
- IMAGE: float tensor [B,H,W,3] in [0,1] (ComfyUI's layout); MASK: float [B,H,W] in [0,1].
- Model folders: ``models/lgm/`` (registered here, ``.safetensors`` files) and core's
  ``models/diffusers/`` (one sub-folder per diffusers model, with a ``model_index.json``).
- File names from node inputs are contained (``lgm_core.paths``): every name is resolved against
  the folder it belongs to (input, output, a model folder) after following symlinks, and refused
  with ``UnsafePathError`` when it would leave it (``../``, absolute paths, outbound symlinks).
  Listings walk each folder once per real directory (symlink loops end) and list only such names.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Callable

import torch

from lgm_core.paths import (UnsafePathError, contained_path, first_contained, is_contained, split_annotated_name,
                            walk_contained)

import comfy.model_management as model_management
import comfy.utils
import folder_paths
from comfy_api.latest import ComfyExtension, Types, io, ui  # noqa: F401  (re-exported)

log = logging.getLogger("comfyui-lgm")

__all__ = [
    "ComfyExtension", "io", "ui", "MESH", "SPLAT", "SplatSocket", "make_splat", "make_mesh",
    "register_model_folders", "lgm_checkpoint_names", "lgm_checkpoint_path", "lgm_folder",
    "diffusers_model_names", "diffusers_model_path", "diffusers_folder",
    "torch_device", "intermediate_device", "pick_dtype", "check_interrupted", "Progress",
    "output_file_path", "output_file_paths", "input_file_path", "input_file_names", "temp_directory", "log",
    "log_accelerators", "UnsafePathError",
]

LGM_FOLDER = "lgm"
DIFFUSERS_FOLDER = "diffusers"


# ---------------------------------------------------------------------------------------------------
# Core 3D types: use core's classes when the running ComfyUI has them, else structural equivalents.
# ---------------------------------------------------------------------------------------------------

MESH = Types.MESH
"""Core's MESH class. v0.3.75: ``MESH(vertices [B,N,3], faces [B,M,3])``; newer cores add uvs,
vertex_colors, texture, normals as constructor arguments (see ``make_mesh``)."""

_core_splat_class = getattr(Types, "SPLAT", None)
_core_splat_socket = getattr(io, "Splat", None) or getattr(io, "GaussianSplat", None)


class _SplatData:
    """Stand-in for core's SPLAT on ComfyUI versions without one (same attributes, same layouts).

    positions [B,N,3] world units (+y up, front +z); scales [B,N,3] linear; rotations [B,N,4] wxyz,
    unit norm; opacities [B,N,1] in [0,1]; sh [B,N,K,3] spherical-harmonic coefficients with
    DC = sh[..., 0, :]; counts [B] int64 (valid Gaussians per item, padding at the end) or None.
    """

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions = positions
        self.scales = scales
        self.rotations = rotations
        self.opacities = opacities
        self.sh = sh
        self.counts = counts

    def __repr__(self) -> str:
        return f"SPLAT(batch={self.positions.shape[0]}, n={self.positions.shape[1]}, sh={self.sh.shape[2]})"


SPLAT = _core_splat_class or _SplatData
"""The class whose instances travel on SPLAT sockets: core's when available, else ``_SplatData``."""

SplatSocket = _core_splat_socket or io.Custom("SPLAT")
"""The V3 socket type for SPLAT (core's ``io`` type when present, else a custom type named SPLAT)."""

_SPLAT_FIELDS = ("positions", "scales", "rotations", "opacities", "sh", "counts")


def make_splat(positions, scales, rotations, opacities, sh, counts=None):
    """Build a SPLAT object (core's class when present) from batched tensors (layouts: ``_SplatData``)."""
    values = dict(positions=positions, scales=scales, rotations=rotations, opacities=opacities, sh=sh,
                  counts=counts)
    try:
        return SPLAT(**values)
    except TypeError:  # a core class with another constructor: fill the attributes directly
        obj = SPLAT.__new__(SPLAT)
        for k, v in values.items():
            setattr(obj, k, v)
        return obj


def _accepted_kwargs(cls) -> set[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n in params if n != "self"}


def make_mesh(vertices: torch.Tensor, faces: torch.Tensor, **extras: Any):
    """Core MESH from vertices [B,N,3] float and faces [B,M,3] int64.

    ``extras`` use the field names of newer cores (uvs [B,N,2], vertex_colors [B,N,3|4],
    texture [B,H,W,3] in [0,1], normals [B,N,3]). Those the running core's constructor accepts are
    passed to it; the rest are attached as attributes (older cores ignore them; this pack's
    LGMSaveMesh reads them to write textured files).
    """
    accepted = _accepted_kwargs(MESH)
    kwargs = {k: v for k, v in extras.items() if k in accepted and v is not None}
    mesh = MESH(vertices, faces, **kwargs)
    for k, v in extras.items():
        if k not in kwargs and v is not None:
            setattr(mesh, k, v)
    return mesh


# ---------------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------------

def register_model_folders() -> None:
    """Register ``models/lgm`` (.safetensors) next to ComfyUI's other model folders.

    Paths a user already mapped in ``extra_model_paths.yaml`` (key ``lgm``) are kept and stay first;
    ``<ComfyUI>/models/lgm`` is added after them. ``diffusers`` is a core folder and needs no registration.
    """
    default = os.path.join(folder_paths.models_dir, LGM_FOLDER)
    # a folder mapped first by the user stays first (downloads go to the first folder)
    folder_paths.add_model_folder_path(LGM_FOLDER, default,
                                       is_default=LGM_FOLDER not in folder_paths.folder_names_and_paths)
    exts = folder_paths.folder_names_and_paths[LGM_FOLDER][1]
    if isinstance(exts, set):
        exts.add(".safetensors")


def lgm_folder() -> str:
    """The first (default) ``models/lgm`` folder: where downloads go."""
    return folder_paths.get_folder_paths(LGM_FOLDER)[0]


def _listed_files(roots, extensions: tuple[str, ...]) -> list[str]:
    """Files below ``roots`` (recursive, '/'-separated, contained, loop-safe) with ``extensions``."""
    names: set[str] = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, files in walk_contained(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in files:
                path = os.path.join(dirpath, f)
                if f.lower().endswith(extensions) and not f.startswith(".") and is_contained(root, path):
                    names.add(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(names)


def lgm_checkpoint_names() -> list[str]:
    """.safetensors files found in every registered ``lgm`` folder (relative names, sorted)."""
    try:
        roots = folder_paths.get_folder_paths(LGM_FOLDER)
    except KeyError:
        return []
    return _listed_files(roots, (".safetensors",))


def lgm_checkpoint_path(name: str) -> str | None:
    """Real path of checkpoint ``name`` in the first ``lgm`` folder holding it, or None if absent.
    Raises ``UnsafePathError`` for names that would leave the folders (see the module docstring)."""
    if not name.lower().endswith(".safetensors"):
        raise UnsafePathError(f"{name!r}: LGM checkpoints are .safetensors files")
    path = first_contained(folder_paths.get_folder_paths(LGM_FOLDER), name, what="models/lgm folder")
    return None if path is None else str(path)


def diffusers_folder() -> str:
    """The first (default) ``models/diffusers`` folder: where downloads go."""
    return folder_paths.get_folder_paths(DIFFUSERS_FOLDER)[0]


def diffusers_model_names() -> list[str]:
    """Sub-folders (relative, '/'-separated) of the ``diffusers`` folders holding a model_index.json
    (contained, loop-safe: a symlink loop in the folder cannot hang the list)."""
    names: set[str] = set()
    for root in folder_paths.get_folder_paths(DIFFUSERS_FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in walk_contained(root, max_depth=4):
            if "model_index.json" in filenames:
                names.add(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames.clear()
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(names)


def diffusers_model_path(name: str) -> str | None:
    """Real path of a diffusers model folder (one with a model_index.json), or None if absent.
    Raises ``UnsafePathError`` for names that would leave the folders."""
    roots = folder_paths.get_folder_paths(DIFFUSERS_FOLDER)
    for root in roots:
        contained_path(root, name, what="models/diffusers folder")
    for root in roots:
        path = contained_path(root, name, what="models/diffusers folder")
        if (path / "model_index.json").is_file():
            return str(path)
    return None


def output_file_paths(filename_prefix: str, extensions) -> list[tuple[str, dict[str, str]]]:
    """Next free output paths for ``prefix``, one per extension, sharing one counter (ComfyUI's
    naming: ``<output>/<subfolder>/<name>_<counter:05>_.<ext>``), each with its UI record
    ``{"filename", "subfolder", "type": "output"}``. The prefix must stay inside the output folder
    after resolving '..' and symlinks (``UnsafePathError`` otherwise)."""
    out_dir = folder_paths.get_output_directory()
    prefix = str(filename_prefix)
    if "\x00" in prefix or os.path.isabs(prefix) or prefix.startswith(("/", "\\")):
        raise UnsafePathError(f"filename_prefix {prefix[:200]!r} must be a relative path inside the output folder")
    sub = os.path.dirname(os.path.normpath(prefix))
    contained_path(out_dir, sub or ".", what="output folder")
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
    except Exception as exc:  # core refuses prefixes outside the output folder with a bare Exception
        raise UnsafePathError(f"filename_prefix {prefix[:200]!r}: {str(exc).strip('* ')}") from None
    real = contained_path(out_dir, os.path.relpath(folder, out_dir), what="output folder")
    os.makedirs(real, exist_ok=True)
    contained_path(out_dir, os.path.relpath(folder, out_dir), what="output folder")  # again, after mkdir
    while True:  # one counter free for every extension (e.g. ply+splat of one item)
        names = [f"{name}_{counter:05}_.{ext.lstrip('.')}" for ext in extensions]
        if not any(os.path.lexists(os.path.join(folder, n)) for n in names):
            break
        counter += 1
    return [(os.path.join(folder, n), {"filename": n, "subfolder": subfolder, "type": "output"}) for n in names]


def output_file_path(filename_prefix: str, extension: str) -> tuple[str, dict[str, str]]:
    """:func:`output_file_paths` for one extension."""
    return output_file_paths(filename_prefix, [extension])[0]


def _annotated_root(kind: str) -> str:
    return {"input": folder_paths.get_input_directory, "output": folder_paths.get_output_directory,
            "temp": folder_paths.get_temp_directory}[kind]()


def input_file_names(extensions: tuple[str, ...]) -> list[str]:
    """Files in ComfyUI's input folder (recursive, '/'-separated, contained) with one of ``extensions``."""
    return _listed_files([folder_paths.get_input_directory()], tuple(e.lower() for e in extensions))


def input_file_path(name: str) -> str:
    """Real path of a file named by a node input: relative to the input folder, or to the output /
    temp folder with ComfyUI's ``"name [output]"`` / ``"name [temp]"`` annotation. Raises
    ``UnsafePathError`` for names that would leave that folder (see the module docstring)."""
    base, kind = split_annotated_name(name)
    return str(contained_path(_annotated_root(kind), base, what=f"{kind} folder"))


def temp_directory() -> str:
    return folder_paths.get_temp_directory()


# ---------------------------------------------------------------------------------------------------
# Devices, memory management, interruption, progress
# ---------------------------------------------------------------------------------------------------

def torch_device() -> torch.device:
    """The device ComfyUI computes on (respects ``--cpu``, ``--cuda-device``, ...)."""
    return model_management.get_torch_device()


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, SPLAT, ...) are kept between nodes (CPU unless --gpu-only)."""
    return model_management.intermediate_device()


def pick_dtype(precision: str, device: torch.device | None = None) -> torch.dtype:
    """Map a precision choice (auto/fp16/bf16/fp32) to a dtype; auto follows ComfyUI's own rules."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    device = device or torch_device()
    if model_management.is_device_cpu(device):
        return torch.float32
    if model_management.should_use_fp16(device):
        return torch.float16
    if model_management.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


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
        self.bar = comfy.utils.ProgressBar(self.total)
        self._previewer = None
        self._previewer_ready = False

    def _latent_previewer(self):
        if not self._previewer_ready:
            self._previewer_ready = True
            try:
                import comfy.latent_formats
                import latent_preview
                self._previewer = latent_preview.get_previewer(torch_device(), comfy.latent_formats.SD15())
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


def make_step_callback(progress: Progress) -> Callable[..., None]:
    """A diffusion per-step callback ``cb(step, total, latents)`` driving ``progress``."""

    def callback(step: int, total: int, latents: torch.Tensor | None = None) -> None:
        progress.total = max(int(total), 1)
        progress.update(step, latents=latents)

    return callback


def log_accelerators() -> None:
    """Log once whether the optional gsplat accelerator is installed (it is never imported here: it may
    compile CUDA code on first use; lgm_core.render tries it lazily and falls back to PyTorch)."""
    import importlib.util

    if importlib.util.find_spec("gsplat") is None:
        log.info("LGM: gsplat not installed; splats render with the built-in PyTorch renderer")
    else:
        log.info("LGM: gsplat installed; used for CUDA rendering when it loads (else PyTorch fallback)")
