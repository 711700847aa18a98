"""Shared fixtures of the training tests: one small synthetic dataset per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """3 blob objects, a ring of 16 views at 64 px (manifest ring = 16)."""
    import torch

    from lgm_core.training.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("dataset")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make_synthetic_dataset(root, num_objects=3, ring=16, size=64, extra_elevations=())
    finally:
        torch.set_num_threads(threads)
    return root
