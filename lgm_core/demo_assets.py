"""Where the offline demo's files are: the shipped demo model (``lgm_core/assets/demo``) and the example
views (``examples/demo``). No imports of the library, so the weights resolver (``load_lgm("demo")``) and
the demo job (:mod:`lgm_core.demo`) can both use it without an import cycle."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "demo"
WEIGHTS_FILE = "lgm_demo.safetensors"
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "demo"
VIEW_FILES = ("view_000.png", "view_090.png", "view_180.png", "view_270.png")
"""The example's views in LGM order: front, then the object turned by 90, 180 and 270 degrees."""


def demo_weights_path() -> Path:
    """Path of the shipped demo checkpoint; FileNotFoundError naming it when this install lacks it."""
    path = ASSETS_DIR / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the demo model is missing from this install: {path} (it ships in the git "
                                "repository; reinstall from a full checkout)")
    return path
