"""Frame sampling: TSN segments, dense stride, multi-view eval, the short-video rule."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timematters.data.sampling import dense_indices, sample_indices, tsn_indices, tsn_slowfast_indices

lengths = st.integers(1, 400)
clip_lengths = st.integers(1, 32)


@settings(max_examples=200, deadline=None)
@given(n=lengths, t=clip_lengths, seed=st.integers(0, 2**31), views=st.integers(1, 5))
def test_tsn_properties(n, t, seed, views):
    train = tsn_indices(n, t, np.random.default_rng(seed))
    assert train.shape == (t,) and train.dtype == np.int64
    assert train.min() >= 0 and train.max() <= n - 1
    assert np.all(np.diff(train) >= 0)  # in order: short videos repeat frames, never loop back
    if n >= t:
        assert np.all(np.diff(train) > 0)  # one distinct frame per segment
        k = np.arange(t)
        assert np.all(train >= k * n // t) and np.all(train < (k + 1) * n // t)  # inside its segment
    for v in range(views):
        ev = tsn_indices(n, t, view=v, views=views)
        assert np.all(np.diff(ev) >= 0) and ev.min() >= 0 and ev.max() <= n - 1
    # same generator state -> same clip (a pure function of (n, T, rng))
    np.testing.assert_array_equal(train, tsn_indices(n, t, np.random.default_rng(seed)))


def test_tsn_eval_takes_segment_middles_and_short_rule():
    np.testing.assert_array_equal(tsn_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    np.testing.assert_array_equal(tsn_indices(3, 6), [0, 0, 1, 1, 2, 2])  # repeat in order
    # views spread through each segment
    np.testing.assert_array_equal(tsn_indices(30, 3, view=0, views=2), [2, 12, 22])
    np.testing.assert_array_equal(tsn_indices(30, 3, view=1, views=2), [7, 17, 27])


def test_tsn_train_covers_every_frame_of_a_segment():
    seen = {int(tsn_indices(40, 4, np.random.default_rng(s))[1]) for s in range(300)}
    assert seen == set(range(10, 20))


@settings(max_examples=200, deadline=None)
@given(n=lengths, t=clip_lengths, stride=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_dense_properties(n, t, stride, seed):
    idx = dense_indices(n, t, np.random.default_rng(seed), stride=stride)
    assert idx.shape == (t,) and idx.min() >= 0 and idx.max() <= n - 1
    span = (t - 1) * stride + 1
    if span <= n:
        assert np.all(np.diff(idx) == stride)
    else:  # too short: stride kept, indices clamped to the last frame (held frame at the end)
        assert idx[0] == 0 and np.all(np.diff(idx) >= 0) and idx[-1] == n - 1
        np.testing.assert_array_equal(idx, np.minimum(np.arange(t) * stride, n - 1))


def test_dense_eval_views():
    np.testing.assert_array_equal(dense_indices(100, 4, stride=2), [46, 48, 50, 52])  # centred
    starts = [int(dense_indices(100, 4, stride=2, view=v, views=3)[0]) for v in range(3)]
    assert starts == [0, 46, 93]  # first possible start, middle, last possible start
    seen = {int(dense_indices(20, 4, np.random.default_rng(s), stride=2)[0]) for s in range(300)}
    assert seen == set(range(0, 14))  # every start a train clip can have


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_video_frames"):
        tsn_indices(0, 8)
    with pytest.raises(ValueError, match="view"):
        tsn_indices(10, 4, view=2, views=2)
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices("uniform", 10, 4)


@pytest.mark.parametrize("length", [1, 3, 8, 9, 37, 50])
def test_tsn_slowfast_is_the_official_ssv2_rule(length):
    """The rule of the official SSv2 loaders (TimeSformer, Motionformer, TIME), written out here."""
    T = 8
    seg = float(length - 1) / T
    bounds = [(int(np.round(seg * i)), int(np.round(seg * (i + 1)))) for i in range(T)]
    assert tsn_slowfast_indices(length, T).tolist() == [(s + e) // 2 for s, e in bounds]
    for seed in range(20):
        idx = tsn_slowfast_indices(length, T, np.random.default_rng(seed))
        assert all(s <= i <= e for i, (s, e) in zip(idx.tolist(), bounds))
        assert np.all(np.diff(idx) >= 0) and 0 <= idx.min() and idx.max() <= length - 1
    draws = {tuple(tsn_slowfast_indices(37, T, np.random.default_rng(s)).tolist()) for s in range(200)}
    ends = {d[-1] for d in draws}
    assert 36 in ends                                  # the last segment's end is inclusive (the last frame)
    assert sample_indices("tsn_slowfast", 37, T).tolist() == tsn_slowfast_indices(37, T).tolist()
