"""Weights derived from a module's parameters for the fast inference path (e.g. concatenated q/k/v
projections, sub-pixel kernels of an upsampling convolution), cached on the module.

A derived weight is a non-persistent buffer: it is not in the state dict (checkpoints load strictly as
before), it moves and casts with the module (an offloaded model keeps no GPU copy), and it is rebuilt
when a source weight is replaced, moved, cast or changed in place — keyed by each source's storage
address, dtype, device, shape and version counter — or when the buffer itself was cast or moved.
Weights made under ``torch.inference_mode()`` (as ComfyUI loads models) have no version counter; after
changing those in place call :func:`drop_derived_weights` (``LGM.load_state_dict`` and
``release_cuda_graphs`` of the models do). The CUDA-graph runners key the weights' versions too
(``lgm_core.runtime.CUDAGraphRunner``), so an in-place change also makes the next call capture again.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

_KEYS = "_derived_weight_keys"  # per module: buffer name -> key of the sources it was made from


def weights_key(tensors: Sequence[torch.Tensor]) -> tuple:
    """What identifies the values of ``tensors``: storage address, dtype, device, shape and version
    (0 for inference tensors, which have no version counter)."""
    return tuple((t.data_ptr(), t.dtype, t.device, tuple(t.shape), 0 if t.is_inference() else t._version)
                 for t in tensors)


def derived_weight(module: nn.Module, name: str, sources: Sequence[torch.Tensor],
                   make: Callable[..., torch.Tensor], params: tuple = ()) -> torch.Tensor:
    """``make(*sources)`` (detached, without autograd), cached as ``module``'s non-persistent buffer
    ``name`` until a source changes (see the module docstring) or ``params`` (hashable settings that
    ``make`` depends on, e.g. a padding width) differ from the cached value's."""
    keys = module.__dict__.setdefault(_KEYS, {})
    value = module._buffers.get(name)
    # the value's own address too: ``module.half()`` / ``.to()`` cast or move the buffer itself even
    # when the sources stay as they are (e.g. an fp32 bias on an fp16 model)
    key = (weights_key(sources), tuple(params), None if value is None else value.data_ptr())
    if value is None or keys.get(name) != key:
        with torch.no_grad():
            value = make(*(s.detach() for s in sources))
        module.register_buffer(name, value, persistent=False)
        keys[name] = key[:2] + (value.data_ptr(),)
    return value


def drop_derived_weights(root: nn.Module) -> None:
    """Forget every derived weight under ``root`` (rebuilt on the next fused call)."""
    for module in root.modules():
        keys = module.__dict__.get(_KEYS)
        if keys:
            for name in keys:
                module._buffers[name] = None
            keys.clear()
