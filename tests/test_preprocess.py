"""Image preparation: recentring, compositing, grids."""

import pytest
import torch

from lgm_core.preprocess import composite, make_grid, prepare_image, recenter, split_grid


def object_image(h=120, w=200, box=(30, 70, 120, 180)):
    """RGBA image: a red rectangle (rows r0:r1, cols c0:c1) on a transparent background."""
    img = torch.zeros(h, w, 4)
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return img


def test_recenter_centres_and_scales_the_object():
    img = object_image()
    out = recenter(img, img[..., 3], border_ratio=0.2)
    assert out.shape == (200, 200, 4)
    mask = out[..., 3] > 0.5
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    width = cols[-1] - cols[0] + 1
    assert abs(int(width) - 160) <= 2  # longer side = 0.8 * 200
    assert abs((rows[0] + rows[-1]) / 2 - 99.5) <= 1.5 and abs((cols[0] + cols[-1]) / 2 - 99.5) <= 1.5


def test_prepare_image_uses_alpha_and_white_background():
    out = prepare_image(object_image(), size=64)
    assert out.shape == (64, 64, 3) and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0, 0], torch.ones(3))  # white corner
    assert torch.allclose(out[32, 32], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)  # object in the middle
    grey = prepare_image(object_image(), size=64, background=(0.5, 0.5, 0.5))
    assert torch.allclose(grey[0, 0], torch.full((3,), 0.5))


def test_prepare_image_with_separate_mask_and_plain_rgb():
    img = object_image()
    out = prepare_image(img[..., :3], mask=img[..., 3], size=32)
    assert torch.allclose(out, prepare_image(img, size=32), atol=1e-6)
    plain = prepare_image(torch.full((50, 100, 3), 0.2), size=32)  # no mask: padded to a square
    assert torch.allclose(plain[0, 0], torch.ones(3)) and torch.allclose(plain[16, 16], torch.full((3,), 0.2), atol=1e-5)


def test_prepare_image_errors():
    with pytest.raises(ValueError, match="mask is empty"):
        prepare_image(torch.zeros(10, 10, 4))
    with pytest.raises(ValueError, match="channels-last"):
        prepare_image(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="mask must be"):
        prepare_image(torch.zeros(10, 10, 3), mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match="border_ratio"):
        prepare_image(object_image(), border_ratio=1.5)


def test_grid_round_trip_and_order():
    views = torch.stack([torch.full((8, 8, 3), float(i) / 4) for i in range(4)])
    grid = make_grid(views)
    assert grid.shape == (16, 16, 3) and grid[0, 15, 0] == 0.25 and grid[15, 0, 0] == 0.5
    assert torch.equal(split_grid(grid), views)
    with pytest.raises(ValueError, match="even"):
        split_grid(torch.zeros(15, 16, 3))


def test_composite():
    assert torch.allclose(composite(torch.zeros(2, 3), torch.tensor([1.0, 0.0])), torch.tensor([[0.0] * 3, [1.0] * 3]))
