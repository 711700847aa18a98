"""The views hand-off type: layouts, the LGM view order, validation at construction (once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lgm_core.cameras import default_input_cameras
from lgm_core.preprocess import split_grid
from lgm_core.views import LGM_VIEW_ORDER, MIN_VIEW_SIZE, Views, ViewsError, as_views, to_lgm_order


def _frames(n_objects: int = 1, size: int = 32) -> torch.Tensor:
    """Multi-view frames [n*4, S, S, 3] whose pixels say which frame they are (k / 10)."""
    frames = torch.zeros(n_objects * 4, size, size, 3)
    for k in range(n_objects * 4):
        frames[k] = k / 10
    return frames


def test_from_multiview_puts_frames_in_lgm_order_with_cameras():
    frames = _frames(2)
    views = Views.from_multiview(frames.numpy(), elevation=15.0)  # numpy as the pipeline's "np" output
    assert views.images.shape == (2, 4, 3, 32, 32) and views.images.dtype == torch.float32
    for obj in range(2):
        for j, k in enumerate(LGM_VIEW_ORDER):
            assert float(views.images[obj, j, 0, 0, 0]) == pytest.approx((4 * obj + k) / 10)
    torch.testing.assert_close(views.cameras, default_input_cameras(15.0))
    assert views.elevation == 15.0 and views.num_objects == 2 and views.size == 32
    torch.testing.assert_close(to_lgm_order(frames[:4]), views.channels_last()[0])
    assert np.array_equal(to_lgm_order(frames[:4].numpy()), views.channels_last()[0].numpy())


def test_grid_round_trips_through_split_grid():
    views = Views.from_multiview(_frames(2))
    grid = views.grid(1)
    assert grid.shape == (64, 64, 3)
    torch.testing.assert_close(split_grid(grid), views.channels_last()[1])
    assert views[1].images.shape == (1, 4, 3, 32, 32) and torch.equal(views[1].images, views.images[1:])


def test_from_channels_last_composites_alpha_on_white():
    rgba = torch.zeros(4, 32, 32, 4)
    rgba[..., 0] = 1.0
    rgba[:, :16, :, 3] = 1.0  # top half opaque red, bottom half transparent
    views = Views.from_channels_last(rgba)
    assert views.images.shape == (1, 4, 3, 32, 32) and views.cameras is None
    assert torch.equal(views.images[0, :, :, 0, 0], torch.tensor([[1.0, 0.0, 0.0]] * 4))
    assert torch.equal(views.images[0, :, :, -1, 0], torch.ones(4, 3))
    u8 = Views.from_channels_last((rgba[..., :3] * 255).to(torch.uint8))
    assert torch.equal(u8.images[0, :, 0], torch.ones(4, 32, 32))


def test_views_trust_once_validated_input():
    views = Views.from_multiview(_frames())
    assert as_views(views) is views  # passed on, not checked or copied again
    with pytest.raises(TypeError, match="inside the Views"):
        as_views(views, elevation=10.0)
    moved = views.to("cpu")
    assert torch.equal(moved.images, views.images) and moved.elevation == views.elevation


@pytest.mark.parametrize("images, problem, message", [
    (torch.rand(1, 3, 3, 32, 32), "count", "exactly 4 views"),
    (torch.rand(1, 4, 3, 32, 40), "size", "square"),
    (torch.rand(1, 4, 3, 16, 16), "size", "too small"),
    (torch.rand(1, 4, 1, 32, 32), "layout", r"\[B, 4, 3, H, W\]"),
    (torch.full((1, 4, 3, 32, 32), 2.0), "values", r"\[0, 1\]"),
    (torch.full((1, 4, 3, 32, 32), float("nan")), "values", "NaN"),
    (torch.ones(1, 4, 3, 32, 32, dtype=torch.int64), "dtype", "floating point"),
])
def test_bad_views_are_refused_with_one_line(images, problem, message):
    with pytest.raises(ViewsError, match=message) as info:
        Views(images)
    assert info.value.problem == problem and "\n" not in str(info.value)


def test_bad_cameras_and_layouts_are_refused():
    images = torch.rand(2, 4, 3, MIN_VIEW_SIZE, MIN_VIEW_SIZE)
    Views(images, default_input_cameras(0.0))  # shared by both objects
    Views(images, default_input_cameras(0.0).expand(2, 4, 4, 4))  # one set per object
    with pytest.raises(ViewsError, match="cameras"):
        Views(images, torch.eye(4).expand(3, 4, 4))
    bad = default_input_cameras(0.0).clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ViewsError, match="NaN/Inf"):
        Views(images, bad)
    with pytest.raises(ViewsError, match="elevation"):
        Views(images, elevation=float("nan"))
    with pytest.raises(ViewsError, match="channels-last"):
        Views.from_channels_last(torch.rand(4, 32, 32))
    with pytest.raises(ViewsError, match="frames"):
        Views.from_multiview(torch.rand(6, 32, 32, 3))
    with pytest.raises(TypeError):
        Views("views.png")
