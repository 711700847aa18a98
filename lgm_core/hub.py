"""Hugging Face hub access policy: cached files first when the hub cannot be reached, and a fast,
clear failure instead of huggingface_hub's retry loop (5 retries, ~25 s) on an offline machine.

``offline_reason()`` says why downloads are impossible right now: ``HF_HUB_OFFLINE`` is set (read at
call time, not at import), or the endpoint (``HF_ENDPOINT``, default https://huggingface.co) does not
accept a TCP connection within 1.5 s (checked once per process). Nothing here touches the network
unless a caller asks for a hub file.
"""

from __future__ import annotations

import os
import socket
from typing import Optional, Sequence
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
_FALSY = ("", "0", "false", "no", "off")
_REACHABLE: dict = {}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


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


class HubUnavailable(FileNotFoundError):
    """Files of a hub repo that are neither in the local cache nor downloadable now.

    what: e.g. "LGM weights"; files: the exact files (folders end in "/"); reason: from
    ``offline_reason()``; place_hint: where the caller looks for a manual copy."""

    def __init__(self, what: str, repo_id: str, files: Sequence[str], reason: str, cache_dir: str,
                 place_hint: Optional[str] = None):
        self.what, self.repo_id, self.files, self.reason = what, repo_id, list(files), reason
        self.cache_dir, self.place_hint = cache_dir, place_hint
        super().__init__(str(self))

    @property
    def url(self) -> str:
        if len(self.files) == 1 and not self.files[0].endswith("/"):
            return f"{endpoint()}/{self.repo_id}/resolve/main/{self.files[0]}"
        return f"{endpoint()}/{self.repo_id}/tree/main"

    @property
    def files_text(self) -> str:
        return ", ".join(self.files)

    def __str__(self) -> str:
        place = f" and place it at {self.place_hint}" if self.place_hint else ""
        return (f"{self.what} {self.files_text} of {self.repo_id} is not in the Hugging Face cache "
                f"({self.cache_dir}) and cannot be downloaded ({self.reason}): download {self.url}{place}")


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
