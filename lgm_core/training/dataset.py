"""Training samples from a dataset in the :mod:`lgm_core.training.layout` layout.

A sample is one object seen from ``num_views`` views: the first 4 are the model's inputs (90° apart
in ``orbit`` mode), all of them are supervision views. Per sample (docs/conventions.md#training):

* images: RGBA PNGs composited on white; masks = alpha. Inputs bilinearly resized (no antialias,
  no align-corners) to ``input_size``, supervision images and masks to ``output_size``;
* poses: stored convention -> OpenGL (:func:`~lgm_core.training.layout.stored_to_opengl`),
  translation x cam_radius/1.5, then re-expressed relative to input view 0 so that it sits at
  (0, 0, cam_radius) with identity rotation (:func:`lgm_core.cameras.canonicalize_cameras`);
* training only: grid distortion and camera jitter of input views 1-3 (:mod:`.augment`). Jittered
  poses are only used for the input rays; supervision uses the true poses.

Randomness: every sample gets its own seed from the sampler (:class:`SampleStream`), so the data
of step N is the same whatever the worker count and after a resume.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import canonicalize_cameras
from ..models.lgm import LGMConfig
from . import augment
from .config import TrainConfig
from .layout import ObjectEntry, find_manifest, list_objects, pose_path, read_pose, rgb_path, stored_to_opengl

NUM_INPUT_VIEWS = 4


# ---------------------------------------------------------------------------------------------- split
def _split_key(seed: int, object_id: str) -> str:
    return hashlib.sha1(f"{seed}:{object_id}".encode()).hexdigest()


def split_objects(objects: Sequence[ObjectEntry], val_fraction: float, seed: int = 0) -> Tuple[List[ObjectEntry], List[ObjectEntry]]:
    """(train, val) objects. Fixed splits are kept ("test" objects are left out of both); of the
    others, the ceil(val_fraction x n) with the smallest hash of (seed, id) go to validation (at
    least one when there are two or more objects and val_fraction > 0). Reproducible from the seed,
    independent of the listing order."""
    free = [o for o in objects if o.split in ("", None)]
    bad = sorted({o.split for o in objects} - {"", None, "train", "val", "test"})
    if bad:
        raise ValueError(f"unknown split names in the manifest: {bad} (use '', 'train', 'val' or 'test')")
    n_val = math.ceil(val_fraction * len(free)) if val_fraction > 0 and len(free) >= 2 else 0
    ranked = sorted(free, key=lambda o: _split_key(seed, o.id))
    val_ids = {o.id for o in ranked[:n_val]}
    train = [o for o in objects if o.split == "train" or (o.split in ("", None) and o.id not in val_ids)]
    val = [o for o in objects if o.split == "val" or o.id in val_ids]
    return train, val


# ---------------------------------------------------------------------------------------------- views
def choose_views(available: Sequence[int], num_views: int, mode: str, *, ring: int = 0,
                 input_range: Tuple[int, int] = (36, 72), rng: Optional[random.Random] = None) -> List[int]:
    """Candidate view ids for one sample, inputs first (the loader takes the first ``num_views``
    that can be read). ``rng`` None = evaluation order (deterministic).

    * ``faithful``: 4 inputs drawn without replacement from ``input_range`` (inclusive; clipped to
      the available views, all views if fewer than 4 remain there), then a permutation of all views
      (which may repeat inputs). Evaluation: every 4th id of that pool (36, 40, ...), then all
      views in order.
    * ``orbit``: inputs k, k + ring/4, k + ring/2, k + 3·ring/4 (k random in [0, ring/4), 0 in
      evaluation), then the other views in random (evaluation: ascending) order.
    """
    available = sorted(set(int(v) for v in available))
    if mode == "orbit":
        if ring < 4 or ring % 4:
            raise ValueError(f"orbit view mode needs a ring of views divisible by 4, got ring={ring}")
        step = ring // 4
        k = rng.randrange(step) if rng is not None else 0
        inputs = [k + i * step for i in range(NUM_INPUT_VIEWS)]
        others = [v for v in available if v not in inputs]
        if rng is not None:
            rng.shuffle(others)
        return inputs + others
    if mode != "faithful":
        raise ValueError(f"view mode must be 'orbit' or 'faithful', got {mode!r}")
    lo, hi = input_range
    pool = [v for v in available if lo <= v <= hi]
    if len(pool) < NUM_INPUT_VIEWS:
        pool = available
    rest = list(available)
    if rng is None:
        return pool[::4] + rest
    inputs = rng.sample(pool, min(NUM_INPUT_VIEWS, len(pool)))
    rng.shuffle(rest)
    return inputs + rest


def read_rgba(path: Path) -> torch.Tensor:
    """An RGBA PNG -> float32 [4, H, W] in [0, 1] (images without alpha get alpha 1)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- dataset
@dataclass
class Sample:
    """What the loader yields per object (a batch stacks each field along a new first axis).

    ``input_images`` [4, 3, Si, Si] in [0, 1] (augmented, not normalised); ``input_c2w`` [4, 4, 4]
    (jittered); ``images`` [V, 3, So, So] on white; ``masks`` [V, 1, So, So]; ``c2w`` [V, 4, 4];
    poses are canonical OpenGL camera-to-world. ``index``: the object's position in the dataset."""

    input_images: torch.Tensor
    input_c2w: torch.Tensor
    images: torch.Tensor
    masks: torch.Tensor
    c2w: torch.Tensor
    index: int


def collate(samples: Sequence[Sample]) -> Dict[str, torch.Tensor]:
    return {
        "input_images": torch.stack([s.input_images for s in samples]),
        "input_c2w": torch.stack([s.input_c2w for s in samples]),
        "images": torch.stack([s.images for s in samples]),
        "masks": torch.stack([s.masks for s in samples]),
        "c2w": torch.stack([s.c2w for s in samples]),
        "index": torch.tensor([s.index for s in samples], dtype=torch.long),
    }


class MultiViewDataset(torch.utils.data.Dataset):
    """Objects of a dataset folder as training (augmented, random views) or evaluation samples.

    Items are fetched with ``dataset[(index, seed)]`` (training: ``seed`` drives view choice and
    augmentation) or ``dataset[index]`` (evaluation views, no augmentation).
    """

    def __init__(self, root, objects: Sequence[ObjectEntry], model: LGMConfig, train: TrainConfig, *,
                 training: bool = True, ring: Optional[int] = None):
        self.root = Path(root)
        self.objects = list(objects)
        self.model = model
        self.cfg = train
        self.training = training
        manifest = find_manifest(self.root)
        self.ring = int(manifest.ring) if ring is None and manifest is not None else int(ring or 0)
        mode = train.view_mode
        if mode == "auto":
            mode = "orbit" if self.ring > 0 else "faithful"
        if mode == "orbit" and (self.ring < 4 or self.ring % 4):
            raise ValueError(f"{self.root}: view_mode 'orbit' needs a manifest ring divisible by 4 (ring={self.ring})")
        self.mode = mode

    def __len__(self) -> int:
        return len(self.objects)

    def _available(self, entry: ObjectEntry) -> List[int]:
        return list(range(int(entry.num_views)))

    def __getitem__(self, item) -> Sample:
        index, seed = item if isinstance(item, tuple) else (item, None)
        entry = self.objects[int(index)]
        rng = random.Random(seed) if (self.training and seed is not None) else None
        candidates = choose_views(self._available(entry), self.cfg.num_views, self.mode, ring=self.ring,
                                  input_range=self.cfg.input_view_range, rng=rng)
        obj_dir = self.root / entry.id
        rgba, poses = [], []
        for v in candidates:
            ip, pp = rgb_path(obj_dir, v), pose_path(obj_dir, v)
            if not (ip.is_file() and pp.is_file()):
                continue  # missing views are skipped (as the original)
            rgba.append(read_rgba(ip))
            poses.append(read_pose(pp))
            if len(rgba) == self.cfg.num_views:
                break
        if self.mode == "orbit" and rgba and any(not rgb_path(obj_dir, v).is_file() for v in candidates[:NUM_INPUT_VIEWS]):
            raise ValueError(f"{obj_dir}: orbit input views {candidates[:NUM_INPUT_VIEWS]} are not all present")
        if len(rgba) < NUM_INPUT_VIEWS:
            raise ValueError(f"{obj_dir}: only {len(rgba)} readable views (need at least {NUM_INPUT_VIEWS})")
        while len(rgba) < self.cfg.num_views:  # too few: repeat the last view
            rgba.append(rgba[-1])
            poses.append(poses[-1])
        size = rgba[0].shape[-2:]
        if any(t.shape[-2:] != size for t in rgba):
            raise ValueError(f"{obj_dir}: views have different sizes")
        rgba = torch.stack(rgba)  # [V, 4, H, W]
        alpha = rgba[:, 3:4]
        rgb = rgba[:, :3] * alpha + (1.0 - alpha)  # on white
        c2w = stored_to_opengl(torch.stack(poses))
        c2w[:, :3, 3] *= self.model.cam_radius / 1.5
        c2w = canonicalize_cameras(c2w, self.model.cam_radius)

        inputs = _resize(rgb[:NUM_INPUT_VIEWS], self.model.input_size)
        input_c2w = c2w[:NUM_INPUT_VIEWS].clone()
        if rng is not None:
            gen = torch.Generator().manual_seed(rng.getrandbits(62))
            if rng.random() < self.cfg.prob_grid_distortion:
                inputs = torch.cat([inputs[:1], augment.grid_distortion(
                    inputs[1:], self.cfg.grid_distortion_strength, gen)])
            if rng.random() < self.cfg.prob_cam_jitter:
                input_c2w = torch.cat([input_c2w[:1], augment.orbit_camera_jitter(
                    input_c2w[1:], self.cfg.cam_jitter_strength, gen)])
        out = self.model.output_size
        return Sample(inputs.contiguous(), input_c2w, _resize(rgb, out).contiguous(), _resize(alpha, out).contiguous(),
                      c2w, int(index))


# ---------------------------------------------------------------------------------------------- order
class SampleStream:
    """Batch sampler over an endless stream of epochs (each a seeded permutation of the objects).

    Micro-step m of the whole run (all processes together) takes stream positions
    [m·B·W, (m+1)·B·W); process r gets the r-th block of B. Each item is ``(object index, seed)``
    with the seed a function of (run seed, position), so a run started at micro-step ``start``
    sees exactly what an uninterrupted run would.
    """

    def __init__(self, num_objects: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, stop: Optional[int] = None):
        if num_objects < 1:
            raise ValueError("no training objects")
        self.n, self.B, self.seed = int(num_objects), int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world_size)
        self.start, self.stop = int(start), stop
        self._perm_cache: Dict[int, List[int]] = {}

    def _perm(self, epoch: int) -> List[int]:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()}
        return self._perm_cache[epoch]

    def item(self, position: int) -> Tuple[int, int]:
        epoch, offset = divmod(position, self.n)
        seed = int.from_bytes(hashlib.sha1(f"{self.seed}:{position}".encode()).digest()[:8], "little")
        return self._perm(epoch)[offset], seed

    def batch(self, micro_step: int) -> List[Tuple[int, int]]:
        first = (micro_step * self.world + self.rank) * self.B
        return [self.item(first + i) for i in range(self.B)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        m = self.start
        while self.stop is None or m < self.stop:
            yield self.batch(m)
            m += 1


def load_objects(root) -> List[ObjectEntry]:
    """The dataset's objects (manifest or folder scan), with a clear error for an empty/missing folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data: no such dataset folder: {root}")
    objects = list(list_objects(root))
    if not objects:
        raise ValueError(f"--data: {root} holds no objects (expected <object>/rgb/NNN.png + <object>/pose/NNN.txt)")
    return objects
