"""The `Gaussians` container: a batch of 3D Gaussian splats.

Layout matches ComfyUI core's ``SPLAT`` type field for field, so a node can hand it over without
copying:

======================  ===============  ====================================================
field                   shape            meaning
======================  ===============  ====================================================
``positions``           ``[B, N, 3]``    centres, world units (LGM frame, see below)
``scales``              ``[B, N, 3]``    standard deviations along the local axes, *linear*
``rotations``           ``[B, N, 4]``    quaternions, real part first (w, x, y, z)
``opacities``           ``[B, N, 1]``    in [0, 1]
``sh``                  ``[B, N, K, 3]`` spherical-harmonic colour coefficients; K = 1 for LGM,
                                         DC term ``sh[..., 0, :] = (rgb - 0.5) / C0``
``counts``              ``[B]`` or None  valid Gaussians per batch item when items are padded
                                         (padding sits at the end, with opacity 0)
======================  ===============  ====================================================

Axis conventions (the LGM frame): right-handed, **+y up**, the object's front (input view 0)
faces **+z**, the default input cameras orbit at radius 1.5 and objects fit in [-1, 1]^3.
Many 3DGS viewers assume COLMAP's y-down; ComfyUI core's viewer maps world -> splat by
(x, y, z) -> (x, -y, -z).

Non-finite values (docs/robustness.md): a Gaussian with NaN or ±Inf in any field is *invalid*.
Every reader, writer, renderer and the mesher **rejects** a set that holds invalid Gaussians with
:class:`InvalidGaussiansError` (a ``ValueError``) saying how many and in which fields
(:func:`check_finite`), so no output ever contains NaN; :func:`drop_invalid` (or a reader's
``on_invalid="drop"``) salvages the valid ones when a caller asks for it explicitly.

``normalized_rotations`` is False only for Gaussians from legacy (pre-"fixrot") LGM checkpoints,
whose quaternions are deliberately *not* unit length: their covariances must be built from the
raw quaternion (docs/conventions.md#legacy-rotations). Renderers honour the flag.

The container does no I/O: files are read and written by :mod:`lgm_core.ply` (``save_ply``,
``load_ply``) and :mod:`lgm_core.splat_formats`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .geometry import matrix_to_quaternion, quaternion_multiply

log = logging.getLogger("lgm_core")

SH_C0 = 0.28209479177387814
"""Degree-0 spherical-harmonic constant: rgb = C0 * sh_dc + 0.5."""

LGM_CHANNELS = 14
"""Channel layout of LGM's activated output: pos(3) opacity(1) scale(3) rot wxyz(4) rgb(3)."""


@dataclass
class Gaussians:
    """A batch of 3D Gaussians. See the module docstring for layouts and conventions."""

    positions: torch.Tensor  # [B, N, 3]
    scales: torch.Tensor  # [B, N, 3] linear std-devs
    rotations: torch.Tensor  # [B, N, 4] wxyz
    opacities: torch.Tensor  # [B, N, 1] in [0, 1]
    sh: torch.Tensor  # [B, N, K, 3]
    counts: Optional[torch.Tensor] = None  # [B] int64, or None when every item has N
    normalized_rotations: bool = True

    def __post_init__(self) -> None:
        p = self.positions
        if p.dim() != 3 or p.shape[-1] != 3:
            raise ValueError(f"positions must be [B, N, 3], got {tuple(p.shape)}")
        b, n = p.shape[:2]
        expect = {
            "scales": (b, n, 3),
            "rotations": (b, n, 4),
            "opacities": (b, n, 1),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must be {list(shape)} to match positions, got {list(got)}")
        if self.sh.dim() != 4 or tuple(self.sh.shape[:2]) != (b, n) or self.sh.shape[-1] != 3:
            raise ValueError(f"sh must be [B, N, K, 3] = [{b}, {n}, K, 3], got {list(self.sh.shape)}")
        if self.counts is not None and tuple(self.counts.shape) != (b,):
            raise ValueError(f"counts must be [B] = [{b}], got {list(self.counts.shape)}")

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def num_gaussians(self) -> int:
        """N: Gaussians per batch item (including padding, if any)."""
        return self.positions.shape[1]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonic degree implied by K = (degree + 1)^2."""
        k = self.sh.shape[2]
        degree = int(round(k**0.5)) - 1
        if (degree + 1) ** 2 != k:
            raise ValueError(f"sh has K={k} coefficients, which is not a square number")
        return degree

    @property
    def rgb(self) -> torch.Tensor:
        """View-independent colour [B, N, 3] from the DC term: C0 * sh_dc + 0.5 (not clamped)."""
        return self.sh[:, :, 0, :] * SH_C0 + 0.5

    def valid_mask(self) -> torch.Tensor:
        """[B, N] bool: True for real Gaussians, False for padding."""
        b, n = self.positions.shape[:2]
        if self.counts is None:
            return torch.ones(b, n, dtype=torch.bool, device=self.device)
        idx = torch.arange(n, device=self.device)
        return idx[None, :] < self.counts.to(self.device)[:, None]

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        extra = "" if self.normalized_rotations else ", legacy rotations"
        return (
            f"Gaussians(batch={self.batch_size}, n={self.num_gaussians}, sh_degree={self.sh_degree}, "
            f"dtype={self.dtype}, device={self.device}{extra})"
        )

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_lgm_tensor(cls, x: torch.Tensor, *, normalized_rotations: bool = True) -> "Gaussians":
        """From LGM's activated output ``[B, N, 14]`` (pos, opacity, scale, rot wxyz, rgb).

        Colour becomes the SH DC term (rgb - 0.5) / C0, computed in the tensor's dtype.
        """
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != LGM_CHANNELS:
            raise ValueError(f"expected an LGM tensor [B, N, 14], got {list(x.shape)}")
        return cls(
            positions=x[..., 0:3],
            opacities=x[..., 3:4],
            scales=x[..., 4:7],
            rotations=x[..., 7:11],
            sh=((x[..., 11:14] - 0.5) / SH_C0).unsqueeze(2),
            normalized_rotations=normalized_rotations,
        )

    def to_lgm_tensor(self) -> torch.Tensor:
        """To LGM's ``[B, N, 14]`` layout (pos, opacity, scale, rot wxyz, rgb); higher SH dropped."""
        return torch.cat([self.positions, self.opacities, self.scales, self.rotations, self.rgb], dim=-1)

    @classmethod
    def from_rgb(
        cls,
        positions: torch.Tensor,
        scales: torch.Tensor,
        rotations: torch.Tensor,
        opacities: torch.Tensor,
        rgb: torch.Tensor,
        counts: Optional[torch.Tensor] = None,
    ) -> "Gaussians":
        """Build from per-Gaussian RGB colours in [0, 1] instead of SH coefficients."""
        return cls(positions, scales, rotations, opacities, ((rgb - 0.5) / SH_C0).unsqueeze(-2), counts)

    def _map(self, fn, **overrides) -> "Gaussians":
        fields = dict(
            positions=fn(self.positions),
            scales=fn(self.scales),
            rotations=fn(self.rotations),
            opacities=fn(self.opacities),
            sh=fn(self.sh),
        )
        fields.update(overrides)
        return dataclasses.replace(self, **fields)

    def to(self, device=None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False) -> "Gaussians":
        """Move/cast every float field (counts keep their integer dtype but follow the device)."""
        counts = self.counts if self.counts is None or device is None else self.counts.to(device)
        return self._map(lambda t: t.to(device=device, dtype=dtype, non_blocking=non_blocking), counts=counts)

    def float(self) -> "Gaussians":
        return self.to(dtype=torch.float32)

    def cpu(self) -> "Gaussians":
        return self.to("cpu")

    def detach(self) -> "Gaussians":
        return self._map(torch.Tensor.detach)

    def clone(self) -> "Gaussians":
        return self._map(torch.Tensor.clone, counts=None if self.counts is None else self.counts.clone())

    def contiguous(self) -> "Gaussians":
        return self._map(torch.Tensor.contiguous)

    # ------------------------------------------------------------------ selection
    def __getitem__(self, index) -> "Gaussians":
        """Select batch items: ``g[0]`` keeps a batch axis of 1, ``g[1:3]``, ``g[[0, 2]]`` work too."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index], counts=None if self.counts is None else self.counts[index]).trimmed()

    def trimmed(self) -> "Gaussians":
        """Drop trailing padding shared by every item (and ``counts`` when nothing is padded)."""
        if self.counts is None:
            return self
        n_max = int(self.counts.max()) if self.counts.numel() else 0
        counts = None if bool((self.counts == n_max).all()) else self.counts
        if n_max < self.num_gaussians:
            return self._map(lambda t: t[:, :n_max], counts=counts)
        return dataclasses.replace(self, counts=counts)

    def select(self, mask: torch.Tensor) -> "Gaussians":
        """Keep Gaussians where ``mask`` ([B, N] or [N] bool) is True, preserving their order.

        Items that keep different numbers are packed to the front and padded at the end
        (opacity 0, zero scale) with ``counts`` recording how many are real.
        """
        if mask.dim() == 1:
            mask = mask[None].expand(self.batch_size, -1)
        if tuple(mask.shape) != tuple(self.positions.shape[:2]):
            raise ValueError(f"mask must be [B, N] = {list(self.positions.shape[:2])}, got {list(mask.shape)}")
        mask = mask.to(self.device) & self.valid_mask()
        keep = mask.sum(dim=1)
        n_out = int(keep.max()) if keep.numel() else 0
        # Stable ordering key: kept Gaussians first, in their original order.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n_out]

        def gather(t: torch.Tensor) -> torch.Tensor:
            idx = order.reshape(order.shape + (1,) * (t.dim() - 2)).expand(*order.shape, *t.shape[2:])
            return torch.gather(t, 1, idx)

        out = self._map(gather, counts=keep.to(torch.int64))
        pad = ~(torch.arange(n_out, device=self.device)[None] < keep[:, None])
        if bool(pad.any()):
            out.opacities = out.opacities.masked_fill(pad[..., None], 0.0)
            out.scales = out.scales.masked_fill(pad[..., None], 0.0)
        return out.trimmed()

    def prune(self, min_opacity: float = 0.005) -> "Gaussians":
        """Drop Gaussians with opacity below ``min_opacity`` (LGM's .ply writer uses 0.005)."""
        return self.select(self.opacities[..., 0] >= min_opacity)

    @staticmethod
    def cat(items: Sequence["Gaussians"], dim: int = 0) -> "Gaussians":
        """Concatenate along the batch (``dim=0``, items padded to a common N) or along the
        Gaussian axis (``dim=1``, merging scenes item by item; batch sizes must match)."""
        items = list(items)
        if not items:
            raise ValueError("Gaussians.cat needs at least one item")
        if len({g.sh.shape[2] for g in items}) != 1:
            raise ValueError("cannot concatenate Gaussians with different SH degrees")
        if len({g.normalized_rotations for g in items}) != 1:
            raise ValueError("cannot concatenate legacy-rotation Gaussians with normalised ones")
        fields = ("positions", "scales", "rotations", "opacities", "sh")
        if dim == 1:
            if len({g.batch_size for g in items}) != 1:
                raise ValueError("Gaussians.cat(dim=1) needs equal batch sizes")
            if any(g.counts is not None for g in items):
                # merge item by item, keeping real Gaussians only
                parts = [Gaussians.cat([g[i] for g in items], dim=1) for i in range(items[0].batch_size)]
                return Gaussians.cat(parts, dim=0)
            return dataclasses.replace(
                items[0], **{f: torch.cat([getattr(g, f) for g in items], dim=1) for f in fields}, counts=None
            )
        if dim != 0:
            raise ValueError("dim must be 0 (batch) or 1 (Gaussians)")
        n_max = max(g.num_gaussians for g in items)
        counts = []
        padded = {f: [] for f in fields}
        for g in items:
            counts.append(g.counts if g.counts is not None else torch.full((g.batch_size,), g.num_gaussians))
            extra = n_max - g.num_gaussians
            for f in fields:
                t = getattr(g, f)
                if extra:
                    t = torch.cat([t, t.new_zeros((t.shape[0], extra) + tuple(t.shape[2:]))], dim=1)
                padded[f].append(t)
        counts_t = torch.cat([c.to(items[0].device, torch.int64) for c in counts])
        out = Gaussians(**{f: torch.cat(padded[f], dim=0) for f in fields}, counts=counts_t,
                        normalized_rotations=items[0].normalized_rotations)
        return out.trimmed() if bool((counts_t == n_max).all()) else out

    # ------------------------------------------------------------------ geometry
    def transform(
        self,
        rotation: Optional[torch.Tensor] = None,
        translation: Optional[torch.Tensor] = None,
        scale: float = 1.0,
    ) -> "Gaussians":
        """Apply x -> scale * R x + t to every Gaussian (a similarity transform).

        ``rotation`` is a 3x3 proper rotation matrix (det +1), ``translation`` a 3-vector.
        Orientations are rotated by composing quaternions (q' = q_R * q), scales multiplied by
        ``scale``. Higher-order SH (K > 1) are not rotated; for LGM (K = 1) this is exact.
        """
        dev, dt = self.device, self.dtype
        R = torch.eye(3, device=dev, dtype=torch.float32) if rotation is None else torch.as_tensor(
            rotation, device=dev, dtype=torch.float32)
        if R.shape != (3, 3):
            raise ValueError(f"rotation must be 3x3, got {list(R.shape)}")
        if abs(float(torch.det(R)) - 1.0) > 1e-3:
            raise ValueError("rotation must be a proper rotation matrix (orthonormal, det = +1)")
        t = torch.zeros(3, device=dev) if translation is None else torch.as_tensor(
            translation, device=dev, dtype=torch.float32).reshape(3)
        pos = (self.positions.float() @ R.T) * scale + t
        q_r = matrix_to_quaternion(R)
        rot = quaternion_multiply(q_r.expand_as(self.rotations.float()), self.rotations.float())
        return dataclasses.replace(
            self,
            positions=pos.to(dt),
            rotations=rot.to(dt),
            scales=self.scales * scale,
        )


# ---------------------------------------------------------------------- the non-finite policy
_FIELDS = ("positions", "scales", "rotations", "opacities", "sh")
_FIELD_LABELS = {"positions": "position", "scales": "scale", "rotations": "rotation", "opacities": "opacity",
                 "sh": "colour"}


class InvalidGaussiansError(ValueError):
    """Gaussians with NaN/Inf values (or another format-level defect) where valid ones are needed."""


def _field_masks(g: Gaussians) -> dict:
    valid = g.valid_mask()
    out = {}
    for name in _FIELDS:
        t = getattr(g, name)
        out[name] = ~torch.isfinite(t).flatten(2).all(-1) & valid
    return out


def invalid_mask(gaussians: Gaussians, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, N] bool: True for real (non-padding) Gaussians with a NaN or ±Inf in any field.

    ``extra`` ([B, N] bool) marks further Gaussians as invalid (format-level checks, e.g. a
    zero-length quaternion read from a file)."""
    bad = torch.zeros(gaussians.positions.shape[:2], dtype=torch.bool, device=gaussians.device)
    for m in _field_masks(gaussians).values():
        bad |= m
    if extra is not None:
        bad |= extra.to(bad.device) & gaussians.valid_mask()
    return bad


def describe_invalid(gaussians: Gaussians, extra: Optional[torch.Tensor] = None,
                     extra_label: str = "other defect") -> str:
    """'3 of 1000 Gaussians have NaN/Inf values (opacity 1, scale 2)', or '... are invalid (...)'
    when ``extra`` marks some ('' when all are valid)."""
    masks = _field_masks(gaussians)
    bad = invalid_mask(gaussians, extra)
    n_bad = int(bad.sum())
    if not n_bad:
        return ""
    parts = [f"{_FIELD_LABELS[k]} {int(m.sum())}" for k, m in masks.items() if bool(m.any())]
    verb = "have NaN/Inf values"
    if extra is not None:
        n_extra = int((extra.to(bad.device) & gaussians.valid_mask()).sum())
        if n_extra:
            parts.append(f"{extra_label} {n_extra}")
            verb = "are invalid"
    n_all = int(gaussians.valid_mask().sum())
    return f"{n_bad} of {n_all} Gaussians {verb} ({', '.join(parts)})"


def check_finite(gaussians: Gaussians, source: str = "Gaussians", *, extra: Optional[torch.Tensor] = None,
                 extra_label: str = "other defect", hint: str = "", error: type = None) -> Gaussians:
    """The package's one policy for non-finite Gaussians (docs/robustness.md): return
    ``gaussians`` when every real Gaussian is finite in every field (one reduction), else raise
    :class:`InvalidGaussiansError` (or ``error``, a ValueError subclass) ``"<source>: 3 of 1000
    Gaussians have NaN/Inf values (colour 1, scale 2)"``.
    """
    bad = invalid_mask(gaussians, extra)
    if not bool(bad.any()):
        return gaussians
    message = f"{source}: {describe_invalid(gaussians, extra, extra_label)}"
    raise (error or InvalidGaussiansError)(message + (f"; {hint}" if hint else ""))


def drop_invalid(gaussians: Gaussians, source: str = "Gaussians", *, extra: Optional[torch.Tensor] = None,
                 extra_label: str = "other defect") -> Gaussians:
    """Explicit salvage: drop invalid Gaussians (see :func:`invalid_mask`; the others keep their
    order, batch items are re-padded) with one warning that names ``source`` and the count.
    Raises :class:`InvalidGaussiansError` if a batch item that had Gaussians is left with none."""
    bad = invalid_mask(gaussians, extra)
    if not bool(bad.any()):
        return gaussians
    message = describe_invalid(gaussians, extra, extra_label)
    per_item = bad.sum(dim=1)
    total = gaussians.valid_mask().sum(dim=1)
    if bool(((per_item == total) & (total > 0)).any()):
        raise InvalidGaussiansError(f"{source}: no valid Gaussian left to keep: {message}")
    log.warning("%s: dropped %d invalid Gaussians: %s", source, int(bad.sum()), message)
    return gaussians.select(~bad)


def concat(items: Iterable[Gaussians], dim: int = 0) -> Gaussians:
    """Function form of :meth:`Gaussians.cat`."""
    return Gaussians.cat(list(items), dim=dim)
