"""Keeping user-supplied file names inside the folder they belong to (ComfyUI's input, output and
model folders; model folders' own index files).

A name is relative and '/'-separated (``sub/file.ply``). :func:`contained_path` joins it to the
folder, resolves every symlink (``os.path.realpath``) and accepts it only if the real path is the
folder itself or lies below the folder's real path. So ``../x``, absolute paths, NUL bytes and
symlinks that point out of the folder are all refused with :class:`UnsafePathError` (a
``ValueError``) naming the folder, while symlinks that stay inside are fine. Checking after
resolution also covers symlinks created after a listing was made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

PathLike = Union[str, os.PathLike]


class UnsafePathError(ValueError):
    """A file name that would leave the folder it must stay in."""


def _is_within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def contained_path(root: PathLike, name: str, *, must_exist: bool = False, what: str = "folder") -> Path:
    """The real path of ``name`` inside ``root`` (see the module docstring).

    ``what`` names the folder in messages ("input folder", ...). ``must_exist``: raise
    ``FileNotFoundError`` when the resolved path does not exist.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"a file name must be a string, got {type(name).__name__}")
    shown = name if len(name) <= 200 else name[:197] + "..."
    if not name or not name.strip():
        raise UnsafePathError(f"empty file name (expected a file in the {what})")
    if "\x00" in name:
        raise UnsafePathError(f"{shown!r}: file names cannot contain NUL bytes")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"{shown!r}: absolute paths are not allowed; give a name inside the {what}")
    root_real = os.path.realpath(os.fspath(root))
    real = os.path.realpath(os.path.join(root_real, name))
    if not _is_within(real, root_real):
        raise UnsafePathError(f"{shown!r} is outside the {what} {root_real} (after resolving '..' and symlinks)")
    if must_exist and not os.path.exists(real):
        raise FileNotFoundError(f"{shown!r} not found in the {what} {root_real}")
    return Path(real)


ANNOTATIONS = {"input": " [input]", "output": " [output]", "temp": " [temp]"}
"""ComfyUI's folder annotations: ``"name.ply [output]"`` names a file of the output folder."""


def split_annotated_name(name: str, default: str = "input") -> Tuple[str, str]:
    """``"sub/a.ply [output]"`` -> ``("sub/a.ply", "output")``; no annotation -> ``(name, default)``.
    Also accepts the annotation without the space, as ComfyUI does."""
    for kind in ANNOTATIONS:
        tag = f"[{kind}]"
        if name.endswith(tag):
            return name[: -len(tag)].rstrip(" "), kind
    return name, default


def first_contained(roots: Iterable[PathLike], name: str, *, what: str = "folder",
                    kind: str = "file") -> Optional[Path]:
    """The real path of ``name`` in the first of ``roots`` where it exists as a ``kind`` ("file"
    or "dir"), or None when it exists in none. Raises :class:`UnsafePathError` when the name
    would leave a folder (checked for every root, before looking at the file system)."""
    roots = list(roots)
    for root in roots:
        contained_path(root, name, what=what)
    check = os.path.isfile if kind == "file" else os.path.isdir
    for root in roots:
        path = contained_path(root, name, what=what)
        if check(path):
            return path
    return None


def is_contained(root: PathLike, path: PathLike) -> bool:
    """True when ``path``'s real path (symlinks resolved) is ``root``'s real path or below it."""
    return _is_within(os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(root)))


def walk_contained(root: PathLike, *, max_depth: int = 8):
    """``os.walk(root, followlinks=True)`` that never leaves ``root``'s real path, visits each real
    directory once (so symlink loops end) and stops at ``max_depth`` levels. Yields (dirpath,
    dirnames, filenames) like ``os.walk``; pruning ``dirnames`` in place works. File names are
    listed as found: check each with :func:`is_contained` before use."""
    root_real = os.path.realpath(os.fspath(root))
    seen = set()
    base_depth = os.fspath(root).rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        try:
            st = os.stat(real)
            key = (st.st_dev, st.st_ino)
        except OSError:
            dirnames[:] = []
            continue
        if key in seen or not _is_within(real, root_real):
            dirnames[:] = []
            continue
        seen.add(key)
        if dirpath.rstrip(os.sep).count(os.sep) - base_depth >= max_depth:
            dirnames[:] = []
        yield dirpath, dirnames, filenames


__all__ = ["UnsafePathError", "contained_path", "first_contained", "walk_contained", "split_annotated_name",
           "ANNOTATIONS", "is_contained"]
