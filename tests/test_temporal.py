"""Property tests of the temporal index-sequence generators and TaCo's rotation jitter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as TF

from timematters import temporal
from timematters.utils import rng_for, torch_rng_for

seeds = st.integers(0, 2**32 - 1)


def assert_index_array(idx: np.ndarray, video_len: int, clip_len: int) -> None:
    assert idx.dtype == np.int64 and idx.shape == (clip_len,)
    assert idx.min() >= 0 and idx.max() < video_len


# ----------------------------------------------------------------------------- permutations
@settings(deadline=None)
@given(n=st.integers(2, 16), seed=seeds)
def test_random_permutation_is_a_non_identity_permutation(n, seed):
    perm = temporal.random_permutation(n, rng_for(seed))
    assert perm.dtype == np.int64
    assert sorted(perm.tolist()) == list(range(n))
    assert not np.array_equal(perm, np.arange(n))


def test_random_permutation_identity_only_when_allowed():
    draws = {tuple(temporal.random_permutation(2, rng_for(s), allow_identity=True)) for s in range(40)}
    assert draws == {(0, 1), (1, 0)}
    assert all(tuple(temporal.random_permutation(2, rng_for(s))) == (1, 0) for s in range(40))
    with pytest.raises(ValueError, match="n >= 2"):
        temporal.random_permutation(1, rng_for(0))


@settings(deadline=None)
@given(batch=st.integers(1, 16), n=st.integers(2, 8), seed=seeds)
def test_batch_permutations_per_sample(batch, n, seed):
    perms = temporal.batch_permutations(batch, n, torch_rng_for(seed))
    assert perms.dtype == torch.long and perms.shape == (batch, n)
    assert torch.equal(perms.sort(dim=1).values, torch.arange(n).expand(batch, n))
    assert not (perms == torch.arange(n)).all(dim=1).any()  # no row is the identity


def test_batch_permutations_differ_across_samples_and_repeat_with_the_seed():
    perms = temporal.batch_permutations(64, 8, torch_rng_for(1, 2, 3))
    assert len({tuple(p) for p in perms.tolist()}) > 60  # 8! orders: collisions are rare
    assert torch.equal(perms, temporal.batch_permutations(64, 8, torch_rng_for(1, 2, 3)))


def test_batch_permutations_one_per_batch_like_the_official_code():
    perms = temporal.batch_permutations(5, 4, torch_rng_for(0), per_sample=False)
    assert (perms == perms[0]).all()
    # identity is allowed there: with n = 2 both orders show up across seeds
    firsts = {tuple(temporal.batch_permutations(3, 2, torch_rng_for(s), per_sample=False)[0].tolist())
              for s in range(40)}
    assert firsts == {(0, 1), (1, 0)}


def test_reverse_and_apply_order():
    assert temporal.reverse(4).tolist() == [3, 2, 1, 0]
    video = torch.arange(2 * 4).float().reshape(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)  # frame id as value
    order = torch.tensor([[3, 2, 1, 0], [1, 0, 3, 2]])
    out = temporal.apply_order(video, order)
    assert torch.equal(out[:, :, 0, 0, 0], torch.tensor([[3.0, 2, 1, 0], [5, 4, 7, 6]]))
    shared = temporal.apply_order(video, temporal.reverse(4))
    assert torch.equal(shared[1, :, 0, 0, 0], torch.tensor([7.0, 6, 5, 4]))
    with pytest.raises(ValueError, match="outside"):
        temporal.apply_order(video, torch.tensor([0, 1, 2, 4]))


# ----------------------------------------------------------------------------- RTT
@settings(deadline=None)
@given(video_len=st.integers(1, 300), clip_len=st.integers(1, 32), k=st.integers(0, 3), seed=seeds)
def test_speed_indices(video_len, clip_len, k, seed):
    idx = temporal.speed_indices(video_len, clip_len, k, rng_for(seed))
    assert_index_array(idx, video_len, clip_len)
    if (clip_len - 1) * 2**k + 1 <= video_len:
        assert np.all(np.diff(idx) == 2**k)  # every 2^k-th frame
    else:  # too short: from frame 0, frozen on the last frame
        assert idx[0] == 0 and np.all(np.diff(idx) >= 0) and idx[-1] == video_len - 1


@settings(deadline=None)
@given(video_len=st.integers(1, 300), clip_len=st.integers(1, 32))
def test_max_speed_is_the_largest_that_fits(video_len, clip_len):
    k = temporal.max_speed(video_len, clip_len)
    assert 0 <= k <= 3
    if k > 0:
        assert (clip_len - 1) * 2**k + 1 <= video_len
    if k < 3:
        assert (clip_len - 1) * 2 ** (k + 1) + 1 > video_len


def test_speed_start_is_random_and_covers_the_video():
    starts = {int(temporal.speed_indices(40, 8, 1, rng_for(s))[0]) for s in range(300)}
    assert starts == set(range(40 - 15 + 1))


@settings(deadline=None)
@given(video_len=st.integers(1, 300), clip_len=st.integers(4, 32), speed=st.integers(0, 3), seed=seeds)
def test_periodic_indices(video_len, clip_len, speed, seed):
    idx = temporal.periodic_indices(video_len, clip_len, speed, rng_for(seed))
    assert_index_array(idx, video_len, clip_len)
    m = 2**speed
    if video_len < (clip_len - 2) * m + 1:  # too short for some layouts: clamped, only bounds hold
        return
    switch = int(np.argmax(idx))
    forward, backward = idx[: switch + 1], idx[switch + 1:]
    assert len(forward) >= 2 and len(backward) >= 2
    assert np.all(np.diff(forward) == m)
    assert np.all(np.diff(backward) == -m)
    assert 0 < forward[-1] - backward[0] <= m  # the way back starts below the switch point


def test_periodic_switch_point_ranges_over_all_allowed_positions():
    switches = {int(np.argmax(temporal.periodic_indices(500, 16, 1, rng_for(s)))) for s in range(400)}
    assert switches == set(range(1, 14))  # >= 2 frames on each side of the switch, both extremes reached


@settings(deadline=None)
@given(video_len=st.integers(2, 300), clip_len=st.integers(2, 32), seed=seeds)
def test_random_indices(video_len, clip_len, seed):
    idx = temporal.random_indices(video_len, clip_len, rng_for(seed))
    assert_index_array(idx, video_len, clip_len)
    if clip_len <= video_len:
        assert sorted(idx.tolist()) == list(range(idx.min(), idx.min() + clip_len))  # consecutive frames
        assert not np.all(np.diff(idx) > 0)  # never in order


@settings(deadline=None)
@given(video_len=st.integers(1, 300), clip_len=st.integers(1, 32), max_skip=st.integers(0, 7), seed=seeds)
def test_warp_indices(video_len, clip_len, max_skip, seed):
    idx = temporal.warp_indices(video_len, clip_len, rng_for(seed), max_skip=max_skip)
    assert_index_array(idx, video_len, clip_len)
    if clip_len <= video_len:
        gaps = np.diff(idx)
        assert np.all(gaps >= 1) and np.all(gaps <= max_skip + 1)  # skips of 0..max_skip frames


def test_warp_skips_cover_0_to_7():
    gaps = np.concatenate([np.diff(temporal.warp_indices(500, 16, rng_for(s))) for s in range(50)])
    assert set(gaps.tolist()) == set(range(1, 9))


# ----------------------------------------------------------------------------- TaCo rotation
def test_rotation_jitter_exact_quarter_turns_without_noise():
    clip = torch.rand(3, 2, 8, 8, generator=torch_rng_for(0))
    for k in range(4):
        out = temporal.rotation_jitter(clip, k, torch_rng_for(1), noise_deg=0.0)
        assert torch.allclose(out, torch.rot90(clip, k, dims=(-2, -1)), atol=1e-6)
    # counter-clockwise as torchvision's rotate
    assert torch.allclose(temporal.rotation_jitter(clip, 1, None, noise_deg=0.0), TF.rotate(clip, 90.0), atol=1e-6)


def test_rotation_jitter_noise_matches_torchvision_angle_per_frame():
    clip = torch.zeros(4, 1, 33, 33)
    clip[:, :, 4:12, 14:30] = 1.0
    out = temporal.rotation_jitter(clip, 0, rng_for(7), noise_deg=20.0)
    angles = rng_for(7).uniform(-20.0, 20.0, size=4)
    for t, a in enumerate(angles):
        same = TF.rotate(clip[t], float(a), interpolation=TF.InterpolationMode.BILINEAR)
        mirrored = TF.rotate(clip[t], -float(a), interpolation=TF.InterpolationMode.BILINEAR)
        assert (out[t] - same).abs().mean() < 0.2 * (out[t] - mirrored).abs().mean()
    assert len({round(float(a), 6) for a in angles}) == 4  # every frame its own angle


def test_rotation_jitter_batched_per_clip_rotation_and_bounds():
    clip = torch.rand(2, 3, 3, 16, 16, generator=torch_rng_for(3))
    out = temporal.rotation_jitter(clip, torch.tensor([0, 2]), torch_rng_for(4), noise_deg=3.0)
    assert out.shape == clip.shape
    # within 3 degrees of the requested quarter turn: much closer to it than to any other
    for b, k in enumerate([0, 2]):
        errs = [(out[b] - torch.rot90(clip[b], j, dims=(-2, -1))).abs().mean().item() for j in range(4)]
        assert int(np.argmin(errs)) == k
    with pytest.raises(ValueError, match="rotation"):
        temporal.rotation_jitter(clip, 4)
    with pytest.raises(ValueError, match="square"):
        temporal.rotation_jitter(torch.zeros(2, 3, 8, 10), 1)
