"""Shared pytest fixtures.

Reference data lives in ``../shared`` beside the repository (override with ``LGM_SHARED_DIR``).
GPU-only tests carry ``@pytest.mark.gpu`` and are skipped without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import comfy_cores

if not torch.cuda.is_available():
    # tests/test_fused_norm.py runs the Triton kernels in Triton's interpreter on CPU tensors; Triton
    # reads this when it is first imported (torch._dynamo imports it), so it is set before any test module
    # loads. Nothing else runs Triton without CUDA.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("LGM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def pytest_configure(config):
    # the ComfyUI tests: one run per core, each in that core's own environment (see tests/comfy_cores.py)
    config.pluginmanager.register(comfy_cores, "lgm_comfy_cores")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DIR} (set LGM_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def spec_dir(shared_dir) -> Path:
    return shared_dir / "spec"


@pytest.fixture(scope="session")
def ref_dir(shared_dir) -> Path:
    return shared_dir / "ref"


@pytest.fixture(scope="module")
def single_thread():
    """Run a module on one torch thread: tiny models are fastest so, and it avoids OpenMP
    oversubscription on busy 2-core CI machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
