"""Folders and files: model folders, the input/output folders and the files the pack ships.

- Model folders: ``models/lgm/`` (registered here, ``.safetensors`` files) and core's
  ``models/diffusers/`` (one sub-folder per diffusers model, with a ``model_index.json``).
- File names from node inputs are contained (``lgm_core.paths``): every name is resolved against
  the folder it belongs to (input, output, a model folder) after following symlinks, and refused
  with ``UnsafePathError`` when it would leave it (``../``, absolute paths, outbound symlinks).
  Listings walk each folder once per real directory (symlink loops end) and list only such names.
"""

from __future__ import annotations

import os

from lgm_core.paths import (UnsafePathError, contained_path, first_contained, is_contained, split_annotated_name,
                            walk_contained)

from .comfy_api import cli_args, folder_paths

__all__ = [
    "register_model_folders", "lgm_checkpoint_names", "lgm_checkpoint_path", "lgm_folder",
    "diffusers_model_names", "diffusers_model_path", "diffusers_folder",
    "output_file_path", "output_file_paths", "input_file_path", "input_file_names", "temp_directory",
    "workflow_metadata", "example_view_sets",
    "UnsafePathError",
]

LGM_FOLDER = "lgm"
DIFFUSERS_FOLDER = "diffusers"


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


def workflow_metadata(hidden) -> dict:
    """What a save node embeds in files that can hold it: ``{"prompt": ..., <extra_pnginfo keys
    (e.g. "workflow")>: ...}`` from the node's hidden inputs, or ``{}`` under ``--disable-metadata``
    (the same rule as core's SaveImage/SaveGLB)."""
    if getattr(cli_args, "disable_metadata", False) or hidden is None:
        return {}
    meta = {}
    if getattr(hidden, "prompt", None) is not None:
        meta["prompt"] = hidden.prompt
    extra = getattr(hidden, "extra_pnginfo", None)
    if isinstance(extra, dict):
        meta.update(extra)
    return meta


def example_view_sets() -> dict[str, str]:
    """The example view sets bundled with the pack: ``{name: folder}`` for every sub-folder of the pack's
    ``examples/`` holding the 4 views ``view_000/090/180/270.png`` (read in place: nothing is copied into
    ComfyUI's input folder)."""
    from lgm_core.demo_assets import EXAMPLE_DIR, VIEW_FILES

    root = EXAMPLE_DIR.parent
    found = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if all((folder / n).is_file() and is_contained(root, folder / n) for n in VIEW_FILES):
                found[folder.name] = str(folder)
    return found
