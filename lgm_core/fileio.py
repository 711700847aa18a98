"""Atomic file writes: a complete file at the target, or the old one untouched and an exception.

Data goes to a temporary file in the target's folder (so the final rename stays on one file
system), which is flushed to disk (``fsync``) and renamed over the target on success, and deleted
on failure. Errors name the target, never the temporary file. Temporary files get the usual
permissions (0666 minus the umask) rather than mkstemp's 0600.

Temporary files are hidden and carry this package's tag and the writer's process id::

    .<target name>.<pid>.<8 random chars>.lgm-tmp<target suffix>

A process killed mid-write (``kill -9``, power loss) leaves one behind; the first write into a
folder (once per folder and process) deletes the stale ones: only files with this exact pattern,
only regular files (never through a symlink), only when untouched for :data:`STALE_AGE_S` and
their writer's process is gone. Temporary files of older versions (``.<stem>.<8 chars>.tmp<ext>``
with one of this package's extensions) are deleted after :data:`LEGACY_STALE_AGE_S`.

Several files that belong together (a textured OBJ: ``.obj`` + ``.mtl`` + ``.png``) are written
with :func:`atomic_paths`: every temporary file is complete before the first rename, and the
renames run under an exclusive lock on the folder, in the given order (the last file is the
commit point), so concurrent writers of the same set never interleave.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

log = logging.getLogger("lgm_core")

TEMP_TAG = ".lgm-tmp"
STALE_AGE_S = 3600.0
"""A temporary file of a dead writer untouched for this long (seconds) is deleted."""
LEGACY_STALE_AGE_S = 24 * 3600.0
"""Temporary files of older versions of this package (no writer pid in the name) are deleted after this."""

_TEMP_RE = re.compile(r"^\.(?P<target>.*)\.(?P<pid>\d{1,10})\.(?P<token>[0-9a-z]{8})"
                      + re.escape(TEMP_TAG) + r"(?P<suffix>\.[A-Za-z0-9]{1,12})?$", re.S)
_LEGACY_RE = re.compile(r"^\.(?P<stem>.+)\.(?P<token>[A-Za-z0-9_]{8})\.tmp"
                        r"(?P<suffix>\.(ply|splat|glb|obj|mtl|png|jpg|jpeg|webp|gif|mp4|safetensors|json))$", re.S)
_MAX_TARGET_CHARS = 96  # keeps temporary names under NAME_MAX for long target names
_cleaned_folders: set = set()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_temp(path: Path) -> Path:
    """Create (exclusively) and return an empty temporary file beside ``path`` (see module docstring)."""
    target = path.stem[:_MAX_TARGET_CHARS]
    suffix = path.suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,12}", path.suffix or "") else ""
    mode = 0o666 & ~_umask()
    for _ in range(100):
        tmp = path.parent / f".{target}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_TAG}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _naming_target(exc, [(tmp, path)]) from None
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", str(path))  # pragma: no cover


def _naming_target(exc: OSError, pairs: Sequence[tuple]) -> OSError:
    """The same OSError naming the target when it named one of the temporary files of ``pairs``
    ((temporary path, target) tuples) or no file at all; else ``exc`` itself."""
    for tmp, target in pairs:
        names = {os.fspath(tmp), tmp.name}
        if not ((exc.filename is not None and os.fspath(exc.filename) in names) or tmp.name in str(exc)):
            continue
        strerror = exc.strerror or str(exc).replace(os.fspath(tmp), os.fspath(target))
        return OSError(exc.errno, strerror, os.fspath(target)) if exc.errno else OSError(f"{target}: {strerror}")
    if exc.filename is None and exc.errno and pairs:  # e.g. a write() that hit a full disk
        return OSError(exc.errno, exc.strerror, os.fspath(pairs[-1][1]))
    return exc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _prepare_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key not in _cleaned_folders:
        _cleaned_folders.add(key)
        try:
            clean_stale_temp_files(folder)
        except OSError as exc:  # cleaning is a courtesy; never fail a write for it
            log.debug("could not clean stale temporary files in %s: %s", folder, exc)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, for writers that pick the format from
    it); rename it over ``path`` when the block succeeds, delete it when it raises."""
    path = Path(path)
    _prepare_folder(path.parent)
    tmp = _new_temp(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            renamed = _naming_target(exc, [(tmp, path)])
            if renamed is not exc:
                raise renamed from None
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_paths(paths: Sequence[PathLike], *, after_publish: Optional[Callable[[], None]] = None
                 ) -> Iterator[List[Path]]:
    """Several files published as a set: yields one temporary path per target; when the block
    succeeds every temporary file is synced, then all are renamed over their targets in the given
    order under an exclusive lock of their folder (put the file readers open first, e.g. the
    ``.obj``, last), and ``after_publish()`` runs still under the lock (e.g. to delete files the
    new set superseded). When the block raises, every temporary file is deleted and no target
    changes. All targets must be in one folder."""
    paths = [Path(p) for p in paths]
    folders = {os.path.realpath(p.parent) for p in paths}
    if len(folders) != 1:
        raise ValueError("atomic_paths: every file of a set must be in the same folder")
    folder = paths[0].parent
    _prepare_folder(folder)
    tmps: List[Path] = []
    try:
        for p in paths:
            tmps.append(_new_temp(p))
        yield list(tmps)
        for tmp in tmps:
            _fsync_file(tmp)
        with folder_lock(folder):
            for tmp, p in zip(tmps, paths):
                os.replace(tmp, p)
            if after_publish is not None:
                after_publish()
    except BaseException as exc:
        for tmp in tmps:
            _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            renamed = _naming_target(exc, list(zip(tmps, paths)))
            if renamed is not exc:
                raise renamed from None
        raise
    _fsync_folder(folder)


@contextmanager
def folder_lock(folder: PathLike) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on a folder, for publishing a set of files in it.
    Without ``fcntl`` (Windows) it is a no-op."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


# ---------------------------------------------------------------------------------------- cleanup
def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate the process on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def is_temp_file_name(name: str) -> bool:
    """True for the name of a temporary file this package writes (or wrote in older versions)."""
    return bool(_TEMP_RE.match(name) or _LEGACY_RE.match(name))


def clean_stale_temp_files(folder: PathLike, *, max_age_s: float = STALE_AGE_S,
                           legacy_max_age_s: float = LEGACY_STALE_AGE_S, now: Optional[float] = None) -> List[Path]:
    """Delete this package's stale temporary files in ``folder`` (not recursive); returns them.

    A file is deleted only if its name has this package's temporary pattern, it is a regular file
    (symlinks are never followed or removed), it was not modified for ``max_age_s`` seconds and
    the process that wrote it no longer runs; legacy names (no pid) after ``legacy_max_age_s``.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _TEMP_RE.match(entry.name)
            legacy = None if m else _LEGACY_RE.match(entry.name)
            if not (m or legacy):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if m:
                if age < max_age_s or _process_alive(int(m.group("pid"))):
                    continue
            elif age < legacy_max_age_s:
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.debug("could not delete stale temporary file %s: %s", entry.path, exc)
                continue
            removed.append(Path(entry.path))
    if removed:
        log.info("deleted %d stale temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed
