"""ComfyUI-LGM: ComfyUI entry point (V3 API).

ComfyUI imports this folder as a package (``custom_nodes/<this folder>/__init__.py``) and awaits
``comfy_entrypoint()``. This module deliberately defines no ``NODE_CLASS_MAPPINGS``: ComfyUI ignores
``comfy_entrypoint`` in a module that has one. ComfyUI is imported only in ``nodes/comfy_api.py``;
the library code is the plain-PyTorch package ``lgm_core`` beside this file.

``lgm_core`` is loaded from THIS folder explicitly (by file location, registered as the top-level
``lgm_core`` module the library's absolute imports name): nothing is added to ``sys.path``, so neither
another installed ``lgm_core`` nor anything else on the path can take its place, and this folder
cannot shadow ComfyUI's own top-level modules (it has a ``nodes.py`` too).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY = "lgm_core"


def _load_own_library() -> None:
    """Make ``import lgm_core`` resolve to this pack's copy (``<pack>/lgm_core/__init__.py``)."""
    init = os.path.join(_PACK_DIR, _LIBRARY, "__init__.py")
    loaded = sys.modules.get(_LIBRARY)
    if loaded is not None:
        if os.path.realpath(getattr(loaded, "__file__", "") or "") == os.path.realpath(init):
            return
        # another copy was imported first (another install, another pack): ours replaces it for
        # every later import; modules that already hold the other one keep their references
        logging.getLogger("comfyui-lgm").warning(
            "LGM: replacing the lgm_core imported from %s with this pack's own copy (%s)",
            getattr(loaded, "__file__", "?"), init)
        for name in [n for n in sys.modules if n == _LIBRARY or n.startswith(_LIBRARY + ".")]:
            del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        _LIBRARY, init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_LIBRARY] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_LIBRARY]
        raise


_load_own_library()


async def comfy_entrypoint():
    """Called by ComfyUI once at start-up; returns the extension listing this pack's nodes."""
    from .nodes.extension import LGMExtension

    return LGMExtension()


__all__ = ["comfy_entrypoint"]
