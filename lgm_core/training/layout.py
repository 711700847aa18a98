"""The on-disk layout of a multi-view training dataset (the original LGM's per-object layout).

::

    DATASET/
      manifest.json                 DatasetManifest (see below)
      <object id>/rgb/000.png       RGBA, 8 bit, size x size, straight (not premultiplied) alpha
      <object id>/pose/000.txt      16 numbers: camera-to-world 4x4, row-major, in the *stored* convention

Stored pose convention (docs/conventions.md#training-data-frames, as the original loader reads
Objaverse renders): the world is Blender's (z up) and the camera is OpenCV's (x right, y down, looks along +z). The loader turns it
into the LGM frame (OpenGL world, +y up; OpenGL camera, looks along -z) with
:func:`stored_to_opengl`; :func:`opengl_to_stored` is the exact inverse (used when writing renders).
Translations are in world units; the original's renders sit at radius 1.5 around objects that fit in
[-1, 1]^3 (scaled by ``cam_radius / 1.5`` on loading, a no-op at 1.5).

View ids are zero-padded to 3 digits. ``manifest.json`` is optional for datasets made elsewhere
(every sub-folder with ``rgb/`` is then an object); ``python -m lgm_core prepare-data`` always writes one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "lgm-multiview-dataset"
FORMAT_VERSION = 1

# world (x, y, z)_blender -> (x, z, -y)_opengl, applied to the rows of a pose (docs/conventions.md#training-data-frames)
_BLENDER_TO_OPENGL = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                                   [0.0, 0.0, 1.0, 0.0],
                                   [0.0, -1.0, 0.0, 0.0],
                                   [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
_FLIP_CAMERA_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def rgb_path(object_dir: Union[str, os.PathLike], view: int) -> Path:
    return Path(object_dir) / "rgb" / f"{int(view):03d}.png"


def pose_path(object_dir: Union[str, os.PathLike], view: int) -> Path:
    return Path(object_dir) / "pose" / f"{int(view):03d}.txt"


def stored_to_opengl(pose: torch.Tensor) -> torch.Tensor:
    """Stored pose(s) [..., 4, 4] (Blender world, OpenCV camera) -> LGM-frame OpenGL camera-to-world.

    Same operations as the original loader: negate row 1, swap rows 1 and 2 (world z-up -> y-up),
    then negate rotation columns 1 and 2 (OpenCV -> OpenGL camera axes). Float32 out."""
    p = torch.as_tensor(pose, dtype=torch.float64)
    return (_BLENDER_TO_OPENGL @ p @ _FLIP_CAMERA_YZ).float()


def opengl_to_stored(c2w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`stored_to_opengl`: LGM-frame OpenGL camera-to-world -> stored pose."""
    p = torch.as_tensor(c2w, dtype=torch.float64)
    return (_BLENDER_TO_OPENGL.T @ p @ _FLIP_CAMERA_YZ).float()


def write_pose(path: Union[str, os.PathLike], stored_pose: torch.Tensor) -> None:
    """Write one stored pose as 16 numbers (4 lines of 4), full float32 precision."""
    rows = torch.as_tensor(stored_pose, dtype=torch.float32).reshape(4, 4).tolist()
    Path(path).write_text("".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in rows))


def read_pose(path: Union[str, os.PathLike]) -> torch.Tensor:
    """Read a stored pose file (16 whitespace-separated numbers) as a float32 [4, 4] tensor."""
    text = Path(path).read_text()
    try:
        values = [float(v) for v in text.split()]
    except ValueError as exc:
        raise ValueError(f"{path}: a pose file holds 16 numbers ({exc})") from None
    if len(values) != 16:
        raise ValueError(f"{path}: a pose file holds 16 numbers, found {len(values)}")
    pose = torch.tensor(values, dtype=torch.float32).view(4, 4)
    if not torch.isfinite(pose).all():
        raise ValueError(f"{path}: pose contains NaN or Inf")
    return pose


def write_object_views(dataset_dir: Union[str, os.PathLike], object_id: str, rgba, c2w: torch.Tensor,
                       first_view: int = 0) -> Path:
    """Write views of one object: ``rgba`` [V, H, W, 4] (float in [0, 1] or uint8, straight alpha)
    as ``rgb/NNN.png`` and ``c2w`` [V, 4, 4] (LGM-frame OpenGL camera-to-world) as ``pose/NNN.txt``
    in the stored convention, view ids from ``first_view``. Each file is written atomically.
    Returns the object's folder. Shared by ``prepare-data`` and the synthetic test datasets."""
    from ..fileio import atomic_path
    from ..image_io import write_image

    obj = Path(dataset_dir) / object_id
    (obj / "rgb").mkdir(parents=True, exist_ok=True)
    (obj / "pose").mkdir(parents=True, exist_ok=True)
    c2w = torch.as_tensor(c2w, dtype=torch.float32)
    if len(rgba) != c2w.shape[0]:
        raise ValueError(f"{len(rgba)} images but {c2w.shape[0]} poses for object {object_id!r}")
    for i in range(c2w.shape[0]):
        view = first_view + i
        write_image(rgba[i], rgb_path(obj, view))
        with atomic_path(pose_path(obj, view)) as tmp:
            write_pose(tmp, opengl_to_stored(c2w[i]))
    return obj


@dataclass
class ViewInfo:
    """Where a view was rendered from, in the LGM frame: elevation in degrees (positive = camera above),
    azimuth in degrees (0 on +z, 90 on +x), distance to the origin."""

    elevation: float
    azimuth: float
    radius: float


@dataclass
class ObjectEntry:
    """One object of a dataset. ``split`` is ``""`` (assigned by the trainer's seeded split), or a
    fixed ``"train"``, ``"val"`` or ``"test"`` (test objects are never used by ``train``)."""

    id: str
    num_views: int
    source: str = ""
    name: str = ""
    license: str = ""
    author: str = ""
    split: str = ""
    views: List[ViewInfo] = field(default_factory=list)


@dataclass
class DatasetManifest:
    """``manifest.json``. ``ring`` > 0 means views ``0 .. ring-1`` of every object form an orbit at
    elevation 0 with equal azimuth steps (360/ring degrees, ascending), so views ``k, k+ring/4,
    k+ring/2, k+3ring/4`` are 4 LGM-style input views 90 degrees apart. ``fovy`` in degrees."""

    size: int
    fovy: float
    ring: int = 0
    objects: List[ObjectEntry] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    notes: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetManifest":
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"not an LGM dataset manifest (format {data.get('format')!r})")
        objects = []
        for o in data.get("objects", []):
            o = dict(o)
            o["views"] = [ViewInfo(**v) for v in o.get("views", [])]
            objects.append(ObjectEntry(**o))
        fields = {k: data[k] for k in ("size", "fovy", "ring", "version", "notes") if k in data}
        return cls(objects=objects, **fields)

    @classmethod
    def read(cls, dataset_dir: Union[str, os.PathLike]) -> "DatasetManifest":
        path = Path(dataset_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def write(self, dataset_dir: Union[str, os.PathLike]) -> Path:
        from ..fileio import atomic_write_bytes

        return atomic_write_bytes(Path(dataset_dir) / MANIFEST_NAME, self.to_json().encode())


def list_objects(dataset_dir: Union[str, os.PathLike]) -> Sequence[ObjectEntry]:
    """The dataset's objects: from ``manifest.json`` when present, else every sub-folder with an
    ``rgb/`` folder (views counted from its PNG files)."""
    root = Path(dataset_dir)
    if (root / MANIFEST_NAME).is_file():
        return DatasetManifest.read(root).objects
    entries = []
    for sub in sorted(p for p in root.iterdir() if (p / "rgb").is_dir()):
        entries.append(ObjectEntry(id=sub.name, num_views=len(list((sub / "rgb").glob("*.png")))))
    return entries


def find_manifest(dataset_dir: Union[str, os.PathLike]) -> Optional[DatasetManifest]:
    path = Path(dataset_dir) / MANIFEST_NAME
    return DatasetManifest.read(dataset_dir) if path.is_file() else None
