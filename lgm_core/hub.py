"""Hugging Face hub access: the registry of official models and the one resolver every loader uses.

* **Registry**: :data:`LGM_WEIGHTS`, :data:`MVDREAM`, :data:`IMAGEDREAM` (repo ids, files, what a
  snapshot holds); :data:`OFFICIAL` maps short names to them.
* **Resolver**: :func:`fetch_file` (one file, e.g. LGM weights) and :func:`fetch_snapshot` (a
  diffusers-layout folder; only json/txt/safetensors files, never Python) download into the hub cache,
  or into ``local_dir`` (ComfyUI's model folders). Model loaders turn a file | folder | repo id into a
  local path with them (``weights.resolve_checkpoint``, ``mvdiffusion.loading.resolve_source``, the
  ComfyUI loader nodes).
* **One offline rule**: when downloads are impossible (``local_files_only``, ``HF_HUB_OFFLINE``, or no
  network) the cached copy is used, else a one-line :class:`HubUnavailable` is raised at once, instead
  of huggingface_hub's retry loop (5 retries, ~25 s). A failed download is a one-line
  :class:`HubDownloadError`.

``offline_reason()`` says why downloads are impossible right now: ``HF_HUB_OFFLINE`` is set (read at
call time, not at import), or the endpoint (``HF_ENDPOINT``, default https://huggingface.co) does not
accept a TCP connection within 1.5 s (checked once per process). Nothing here touches the network
unless a caller asks for a hub file.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
SNAPSHOT_PATTERNS = ("*.json", "*.txt", "*.safetensors")
"""What a snapshot download fetches: configs, tokenizer files and safetensors weights, never code."""
DIFFUSERS_LAYOUT = ("model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/")
"""What a hub-layout multi-view model folder holds (the json, txt and safetensors files of these)."""
IMAGEDREAM_EXTRA = ("image_encoder/", "feature_extractor/")


@dataclass(frozen=True)
class OfficialModel:
    """An official download. ``filename``: its single file, or None for a folder snapshot whose
    contents ``files`` lists (folders end in "/"). ``what`` names it in messages."""

    what: str
    repo_id: str
    filename: Optional[str] = None
    files: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The repo's name, which is also its folder name in ComfyUI's ``models/diffusers``."""
        return self.repo_id.split("/", 1)[1]


LGM_WEIGHTS = OfficialModel("LGM weights", "ashawkey/LGM", "model_fp16_fixrot.safetensors",
                            ("model_fp16_fixrot.safetensors",))
MVDREAM = OfficialModel("multi-view model", "ashawkey/mvdream-sd2.1-diffusers", files=DIFFUSERS_LAYOUT)
IMAGEDREAM = OfficialModel("multi-view model", "ashawkey/imagedream-ipmv-diffusers",
                           files=DIFFUSERS_LAYOUT + IMAGEDREAM_EXTRA)
OFFICIAL = {"lgm": LGM_WEIGHTS, "mvdream": MVDREAM, "imagedream": IMAGEDREAM}
"""The official models by short name."""
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FILE_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".json", ".png", ".jpg", ".ply"}
"""Names ending like this are files that are missing, not repo ids."""
_FALSY = ("", "0", "false", "no", "off")
_REACHABLE: dict = {}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def file_url(repo_id: str, filename: str) -> str:
    """Where a browser downloads ``filename`` of ``repo_id``."""
    return f"{endpoint()}/{repo_id}/resolve/main/{filename}"


def is_repo_id(source: Union[str, os.PathLike]) -> bool:
    """Whether ``source`` reads as a hub repo id (``owner/name``) and not as a local path."""
    text = os.fspath(source)
    return (isinstance(source, str) and bool(_REPO_ID.match(text))
            and Path(text).suffix.lower() not in _FILE_SUFFIXES and not Path(text).expanduser().exists())


def offline_env() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids downloads (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _FALSY


def _proxy() -> Optional[str]:
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(key):
            return os.environ[key]
    return None


def _reachable(url: str, timeout: float = 1.5) -> bool:
    """Whether ``url``'s host accepts a TCP connection (through the proxy's host when one is set)."""
    key = (url, _proxy())
    if key not in _REACHABLE:
        target = urlparse(_proxy() or url)
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            with socket.create_connection((target.hostname or "", port), timeout=timeout):
                ok = True
        except (OSError, UnicodeError):
            ok = False
        _REACHABLE[key] = ok
    return _REACHABLE[key]


def offline_reason() -> Optional[str]:
    """Why the hub cannot be used now, or None when it can (presumably) be reached."""
    if offline_env():
        return "offline mode: HF_HUB_OFFLINE is set"
    if not _reachable(endpoint()):
        return f"no network: {endpoint()} cannot be reached"
    return None


def cache_dir(explicit=None) -> str:
    """The hub cache folder huggingface_hub uses (``cache_dir``, else HF_HUB_CACHE / HF_HOME/hub)."""
    if explicit:
        return str(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(home, "hub")


_cache_folder = cache_dir  # for functions whose ``cache_dir`` argument hides the name


class HubUnavailable(FileNotFoundError):
    """Files of a hub repo that are neither in the local cache nor downloadable now.

    what: e.g. "LGM weights"; files: the exact files (folders end in "/"); reason: from
    ``offline_reason()``; place_hint: where the caller looks for a manual copy."""

    def __init__(self, what: str, repo_id: str, files: Sequence[str], reason: str, cache_dir: str,
                 place_hint: Optional[str] = None, local_dir: Optional[str] = None):
        self.what, self.repo_id, self.files, self.reason = what, repo_id, list(files), reason
        self.cache_dir, self.place_hint, self.local_dir = cache_dir, place_hint, local_dir
        super().__init__(str(self))

    @property
    def url(self) -> str:
        if len(self.files) == 1 and not self.files[0].endswith("/"):
            return file_url(self.repo_id, self.files[0])
        return f"{endpoint()}/{self.repo_id}/tree/main"

    @property
    def files_text(self) -> str:
        return ", ".join(self.files)

    def __str__(self) -> str:
        place = f" and place it at {self.place_hint}" if self.place_hint else ""
        where = self.local_dir or f"the Hugging Face cache ({self.cache_dir})"
        return (f"{self.what} {self.files_text} of {self.repo_id} is not in {where} "
                f"and cannot be downloaded ({self.reason}): download {self.url}{place}")


def cached_file(repo_id: str, filename: str, cache=None) -> Optional[str]:
    """Path of ``filename`` of ``repo_id`` in the hub cache, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
    return path if isinstance(path, str) and os.path.isfile(path) else None


def cached_snapshot(repo_id: str, allow_patterns=None, cache=None) -> Optional[str]:
    """Folder of a cached snapshot of ``repo_id``, or None (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        return None


class HubDownloadError(FileNotFoundError):
    """A download that was tried and failed (missing repo or file, authentication, network dropped)."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fetch_file(repo_id: str, filename: str, *, what: str, cache_dir=None, local_dir=None,
               local_files_only: Optional[bool] = None, place_hint=None) -> Path:
    """Local path of ``filename`` of ``repo_id``: downloaded into the hub cache (``cache_dir``) or into
    ``local_dir``; offline (see the module docstring) the copy already there, else :class:`HubUnavailable`.
    ``place_hint``: where the error message tells the user to put a manual download."""
    reason = "local_files_only=True" if local_files_only else offline_reason()
    if reason:
        if local_dir is not None:
            local = Path(local_dir) / filename
            cached = str(local) if local.is_file() else None
        else:
            cached = cached_file(repo_id, filename, cache_dir)
        if cached:
            return Path(cached)
        raise HubUnavailable(what, repo_id, [filename], reason, _cache_folder(cache_dir),
                             place_hint=None if place_hint is None else str(place_hint),
                             local_dir=None if local_dir is None else str(local_dir))
    from huggingface_hub import hf_hub_download

    kwargs = {"cache_dir": cache_dir} if local_dir is None else {"local_dir": str(local_dir)}
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))
    except Exception as exc:
        target = f" and place it at {place_hint}" if place_hint else ""
        raise HubDownloadError(f"could not get {filename} from the hub repo {repo_id}: {_first_line(exc)}. "
                               f"Download {file_url(repo_id, filename)}{target}") from exc


def fetch_snapshot(repo_id: str, *, what: str, files: Sequence[str], cache_dir=None, local_dir=None,
                   local_files_only: Optional[bool] = None, place_hint=None) -> Path:
    """Local folder with a snapshot of ``repo_id`` (only :data:`SNAPSHOT_PATTERNS`), in the hub cache
    or in ``local_dir``; offline the copy already there, else :class:`HubUnavailable` naming ``files``
    (what the folder holds)."""
    patterns = list(SNAPSHOT_PATTERNS)
    reason = "local_files_only=True" if local_files_only else offline_reason()
    if reason:
        if local_dir is not None:
            cached = str(local_dir) if (Path(local_dir) / files[0]).exists() else None
        else:
            cached = cached_snapshot(repo_id, allow_patterns=patterns, cache=cache_dir)
        if cached:
            return Path(cached)
        raise HubUnavailable(what, repo_id, files, reason, _cache_folder(cache_dir),
                             place_hint=None if place_hint is None else str(place_hint),
                             local_dir=None if local_dir is None else str(local_dir))
    from huggingface_hub import snapshot_download

    kwargs = {"cache_dir": cache_dir} if local_dir is None else {"local_dir": str(local_dir)}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **kwargs))
    except Exception as exc:
        target = f" into {place_hint}" if place_hint else ""
        raise HubDownloadError(f"could not get {repo_id} from the hub: {_first_line(exc)}. Download "
                               f"{endpoint()}/{repo_id}/tree/main{target}") from exc


def snapshot_files(repo_id: str) -> Tuple[str, ...]:
    """What a snapshot of ``repo_id`` holds: the registry's list, else guessed from the name."""
    for model in OFFICIAL.values():
        if model.repo_id == repo_id and model.files:
            return model.files
    return DIFFUSERS_LAYOUT + (IMAGEDREAM_EXTRA if "imagedream" in repo_id.lower() else ())

