"""ComfyUI-LGM: ComfyUI entry point (V3 API).

ComfyUI imports this folder as a package (``custom_nodes/<this folder>/__init__.py``) and awaits
``comfy_entrypoint()``. This module deliberately defines no ``NODE_CLASS_MAPPINGS``: ComfyUI ignores
``comfy_entrypoint`` in a module that has one. All ComfyUI imports live in ``nodes/comfy_api.py``;
the library code is the plain-PyTorch package ``lgm_core`` beside this file.
"""

from __future__ import annotations

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# lgm_core uses absolute imports; make it importable without a pip install. Appended (not inserted)
# so that nothing here can shadow ComfyUI's own top-level modules (it has a `nodes.py` too).
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)


async def comfy_entrypoint():
    """Called by ComfyUI once at start-up; returns the extension listing this pack's nodes."""
    from .nodes.extension import LGMExtension

    return LGMExtension()


__all__ = ["comfy_entrypoint"]
