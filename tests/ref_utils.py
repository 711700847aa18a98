"""Helpers to read the shared reference data (``../shared/ref``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch
from safetensors.torch import load_file


def expand_compact_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """Expand ``weights_compact.safetensors`` + ``weights_recipe.json`` into the full state dict
    (procedure in the folder's README: gather the table at (offset + i) mod P, add + mul * value)."""
    table = load_file(str(folder / "weights_compact.safetensors"))["table"]
    recipe = json.loads((folder / "weights_recipe.json").read_text())
    p = recipe["P"]
    out = {}
    for entry in recipe["tensors"]:
        n = 1
        for d in entry["shape"]:
            n *= d
        idx = (entry["offset"] + torch.arange(n, dtype=torch.int64)) % p
        value = table[idx] * torch.tensor(entry["mul"], dtype=torch.float32) + torch.tensor(entry["add"], dtype=torch.float32)
        out[entry["key"]] = value.reshape(entry["shape"])
    return out
