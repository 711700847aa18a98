"""Camera conditioning of MVDream / ImageDream and the hand-off to LGM.

Sign convention: **elevation positive = cameras above the object**, as everywhere in
:mod:`lgm_core.cameras`. The two original copies of ``get_camera`` differ (docs/conventions.md#multi-view-cameras):

* LGM's copy (``mvdream/mv_unet.py`` of LGM, used by LGM's app.py/infer.py) passes the elevation to
  kiui unchanged, i.e. positive = BELOW.  ``LGM-copy get_camera(e) == mv_camera_matrices(-e)``.
* The hub copy (``unet/mv_unet.py`` of the hub repos, ashawkey/mvdream_diffusers) negates it,
  i.e. positive = ABOVE, the original MVDream convention. ``hub get_camera(e) == mv_camera_matrices(e)``.

Both agree at elevation 0 (LGM's default). An LGM app user who typed elevation ``e`` gets our
``elevation=-e``.

Frames: the conditioning matrices are kiui/OpenGL camera-to-world poses on the unit sphere
converted to Blender's z-up world and flattened row-major; view ``k`` sits at MVDream azimuth
``azimuth_start + k*360/F`` (0 = Blender -Y). In ``lgm_core``'s y-up world the same views are at
azimuth ``90*k - 90``; LGM therefore consumes them reordered (:data:`lgm_core.views.LGM_VIEW_ORDER`,
:meth:`lgm_core.views.Views.from_multiview`).
"""

from __future__ import annotations

import numpy as np
import torch

from lgm_core.cameras import LGM_RADIUS, orbit_camera, orbit_cameras

__all__ = ["mv_camera_matrices", "mv_view_poses"]

_OPENGL_TO_BLENDER = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def mv_camera_matrices(
    num_frames: int = 4,
    elevation: float = 0.0,
    azimuth_start: float = 0.0,
    azimuth_span: float = 360.0,
    blender_coord: bool = True,
    extra_view: bool = False,
) -> torch.Tensor:
    """MVDream camera conditioning ``[num_frames (+1), 16]`` float32 (what ``get_camera`` returns).

    ``elevation`` in degrees, **positive = above** (see module docstring for the original copies'
    signs). With ``extra_view`` an all-zero row is appended (ImageDream's reference frame).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    azimuths = azimuth_start + np.arange(num_frames, dtype=np.float64) * (azimuth_span / num_frames)
    poses = torch.stack([orbit_camera(float(elevation), float(a), 1.0) for a in azimuths])
    if blender_coord:
        poses = _OPENGL_TO_BLENDER @ poses
    cams = poses.reshape(num_frames, 16)
    if extra_view:
        cams = torch.cat([cams, torch.zeros(1, 16)], dim=0)
    return cams.float().contiguous()


def mv_view_poses(num_views: int = 4, elevation: float = 0.0, radius: float = LGM_RADIUS) -> torch.Tensor:
    """Camera-to-world poses ``[num_views, 4, 4]`` of the generated views in ``lgm_core``'s frame
    (OpenGL, y up, object front on +z), in the pipeline's output order: view ``k`` at azimuth
    ``k*360/num_views - 90``. With 4 views, ``lgm_core.views.to_lgm_order(mv_view_poses(4, e))`` equals
    :func:`lgm_core.cameras.default_input_cameras` ``(e)``."""
    az = np.arange(num_views, dtype=np.float64) * (360.0 / num_views) - 90.0
    return orbit_cameras(float(elevation), np.mod(az, 360.0).tolist(), radius)
