"""Clip transforms: one geometry / one augmentation draw per clip, the same op on every frame."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from timematters.data.transforms import (apply_geometry, apply_randaugment, build_randaugment, eval_geometry,
                                         normalize, train_geometry)


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


def test_inverse_scale_sampling_draws_one_over_the_side_uniformly():
    """PySlowFast's INV_UNIFORM_SAMPLE (the TIME recipe): 1/side ~ U(1/hi, 1/lo), so small sides are more likely
    than with a uniform side; both stay within [lo, hi] and are keyed by the generator."""
    sides = {}
    for mode in ("uniform", "inverse"):
        draws = [round(240 * train_geometry(240, 427, img_size=224, scale=(256, 320), flip=False,
                                           rng=np.random.default_rng(s), scale_sampling=mode)["scale"])
                 for s in range(4000)]
        assert 256 <= min(draws) and max(draws) <= 320
        sides[mode] = np.array(draws)
    inv = 1.0 / sides["inverse"]
    assert abs(np.mean(inv) - (1 / 256 + 1 / 320) / 2) < 2e-6                # mean of U(1/320, 1/256)
    assert np.median(sides["inverse"]) < np.median(sides["uniform"]) - 2       # pulled towards small sides
    with pytest.raises(ValueError, match="scale_sampling"):
        train_geometry(240, 427, img_size=224, scale=(256, 320), flip=False, rng=np.random.default_rng(0),
                       scale_sampling="log")


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


def test_randaugment_same_draw_on_every_frame():
    """The recipe's timm spec: every frame of a clip gets the same ops and magnitudes, keyed by (seed, epoch,
    index), and the global random / numpy / torch generators are left as they were."""
    ra = build_randaugment("rand-m20-mstd0.5-inc1", img_size=32)
    frame = _clip(t=1, h=32, w=40, seed=1)
    clip = frame.expand(4, -1, -1, -1).contiguous()            # four identical frames
    changed, outputs = 0, set()
    for index in range(12):
        key = (0, 0, index)
        out = apply_randaugment(clip, ra, key)
        assert out.shape == clip.shape and out.dtype == torch.uint8
        changed += int(not torch.equal(out, clip))
        outputs.add(out[0].numpy().tobytes())
        for t in range(1, 4):  # identical frames stay identical: one draw per clip
            assert torch.equal(out[t], out[0])
        torch.testing.assert_close(out, apply_randaugment(clip, ra, key), rtol=0, atol=0)  # keyed: repeatable
    assert changed >= 6 and len(outputs) >= 6  # it augments, and the draw changes with the index
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    a, b, c = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    apply_randaugment(clip, ra, (1, 2, 3))
    assert torch.equal(torch.rand(3), a) and random.random() == b and np.random.rand() == c


@pytest.mark.parametrize("spec", ["rand-m20-mstd0.5-inc1", "rand-m9-mstd0.5-inc1", "rand-m10-n3"])
def test_randaugment_every_op_at_every_level(spec):
    """Each op of the set, applied for sure at the levels the spec reaches (m20 is clipped to 10, where the
    increasing Posterize keeps 0 bits: a black frame, not an error)."""
    ra = build_randaugment(spec, img_size=32)
    clip = _clip(t=2, h=32, w=40, seed=3)
    for op in ra.ops:
        for level in (0, 5, 10):
            one = copy.copy(op)
            one.prob, one.magnitude, one.magnitude_std = 1.0, level, 0.0
            ra_one = copy.copy(ra)
            ra_one.ops, ra_one.num_layers = [one], 1
            out = apply_randaugment(clip, ra_one, (0, 0, level))
            assert out.shape == clip.shape and out.dtype == torch.uint8, (op.name, level)
            if op.name == "PosterizeIncreasing" and level == 10:
                assert out.max() == 0


def test_build_randaugment_is_timms_spec():
    assert build_randaugment("", img_size=224) is None
    ra = build_randaugment("rand-m20-mstd0.5-inc1", img_size=224)
    assert ra.num_layers == 2 and len(ra.ops) == 15
    op = ra.ops[0]
    assert (op.prob, op.magnitude, op.magnitude_std) == (0.5, 20, 0.5)
    assert op.hparams["translate_const"] == 100 and op.hparams["img_mean"] == (128, 128, 128)
    assert any("Increasing" in o.name for o in ra.ops)       # the "increasing" op set
    for bad in ("n=2,m=20,mstd=0.5", "strong", "rand-m20-x3", "rand-foo"):
        with pytest.raises(ValueError, match="timm RandAugment spec"):
            build_randaugment(bad, img_size=224)


def test_normalize():
    clip = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(clip, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.all(out[0] == -1) and torch.all(out[1] == 1)
