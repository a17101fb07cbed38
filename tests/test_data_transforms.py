"""Clip transforms: one geometry / one augmentation draw per clip, the same op on every frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from timematters.data.transforms import (apply_geometry, apply_randaugment, eval_geometry, normalize,
                                         parse_randaugment, train_geometry)


def _clip(t=5, h=48, w=80, seed=0) -> torch.Tensor:
    """uint8 (T, C, H, W) with different random content per frame."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("flip", [False, True])
def test_train_geometry_same_op_on_every_frame(flip):
    clip = _clip()
    for seed in range(6):
        geo = train_geometry(48, 80, img_size=32, scale=(32, 44), flip=flip, rng=np.random.default_rng(seed))
        x0, y0, x1, y1 = geo["crop"]
        assert x1 - x0 == y1 - y0 == 32 and geo["out_size"] == [32, 32]
        assert 32 <= round(48 * geo["scale"]) <= 44 and x0 >= 0 and y0 >= 0
        assert x1 <= round(80 * geo["scale"]) and y1 <= round(48 * geo["scale"])
        out = apply_geometry(clip, geo)
        assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8
        for t in range(5):  # the clip transform equals the transform of each frame alone
            torch.testing.assert_close(out[t], apply_geometry(clip[t:t + 1], geo)[0], rtol=0, atol=0)


def test_geometry_maps_raw_points_into_the_crop():
    # a bright 4x4 block at raw (x=40..43, y=20..23); scale 1 so the crop is a pure shift
    clip = torch.zeros(2, 3, 48, 80, dtype=torch.uint8)
    clip[..., 20:24, 40:44] = 255
    geo = {"scale": 1.0, "crop": [30, 10, 62, 42], "flip": False, "out_size": [32, 32]}
    out = apply_geometry(clip, geo)
    ys, xs = torch.nonzero(out[0, 0] == 255, as_tuple=True)
    assert (xs.min().item(), ys.min().item()) == (40 - 30, 20 - 10)
    flipped = apply_geometry(clip, {**geo, "flip": True})
    torch.testing.assert_close(flipped, out.flip(-1), rtol=0, atol=0)
    ys, xs = torch.nonzero(flipped[0, 0] == 255, as_tuple=True)
    assert xs.max().item() == 32 - 1 - (40 - 30)  # x' -> W - 1 - x'


def test_flip_is_off_by_default_and_drawn_per_clip():
    draws = [train_geometry(48, 80, img_size=32, scale=(32, 40), flip=True, rng=np.random.default_rng(s))["flip"]
             for s in range(40)]
    assert 0 < sum(draws) < 40
    assert not any(train_geometry(48, 80, img_size=32, scale=(32, 40), flip=False,
                                  rng=np.random.default_rng(s))["flip"] for s in range(40))


@pytest.mark.parametrize("h,w,axis", [(48, 80, 0), (80, 48, 1)])
def test_three_crops_along_the_long_side(h, w, axis):
    crops = [eval_geometry(h, w, img_size=32, crop_index=i, num_crops=3)["crop"] for i in range(3)]
    long_side = round(max(h, w) * 32 / min(h, w))
    starts = [c[axis] for c in crops]               # x0 for wide frames, y0 for tall frames
    assert starts == [0, (long_side - 32 + 1) // 2, long_side - 32]
    assert len({c[1 - axis] for c in crops}) == 1   # the short side is not moved
    assert eval_geometry(h, w, img_size=32)["crop"] == crops[1]  # 1 crop = the centre one


def test_randaugment_same_ops_on_every_frame():
    ra = parse_randaugment("n=3,m=15")
    clip = _clip(t=4, h=32, w=32, seed=1)
    changed = 0
    for index in range(12):
        key = (0, 0, index)
        out = apply_randaugment(clip, ra, key)
        assert out.shape == clip.shape and out.dtype == torch.uint8
        changed += int(not torch.equal(out, clip))
        for t in range(4):  # the same draw applied to one frame alone gives the same frame
            torch.testing.assert_close(out[t], apply_randaugment(clip[t:t + 1], ra, key)[0], rtol=0, atol=0)
        torch.testing.assert_close(out, apply_randaugment(clip, ra, key), rtol=0, atol=0)  # keyed: repeatable
    assert changed >= 6  # it does augment
    # the draw does not touch the global torch RNG
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    apply_randaugment(clip, ra, (1, 2, 3))
    torch.testing.assert_close(torch.rand(3), a)


def test_parse_randaugment():
    assert parse_randaugment("") is None
    ra = parse_randaugment("m=20,n=2")
    assert (ra.num_ops, ra.magnitude) == (2, 20)
    with pytest.raises(ValueError, match="n=2,m=9"):
        parse_randaugment("strong")
    with pytest.raises(ValueError, match="0..30"):
        parse_randaugment("n=2,m=40")


def test_normalize():
    clip = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(clip, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.all(out[0] == -1) and torch.all(out[1] == 1)
