"""Flow-direction labels: known translations, static clips, thresholds, real clips, synthetic truth."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from timematters.flow import ESTIMATORS, IGNORE_INDEX, FlowLabeler, flow_direction_labels
from timematters.utils import rng_for

SIZE, PATCH = 128, 16


def texture(seed: int = 0, size: int = 256) -> np.ndarray:
    """Smooth random RGB texture (bicubic upsampling of coarse noise): good for any flow estimator."""
    coarse = rng_for(seed).integers(0, 256, size=(size // 8, size // 8, 3)).astype(np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def translated_clip(angle_deg: float, step_px: float, frames: int = 3, seed: int = 0) -> np.ndarray:
    """Frames of a texture moving ``step_px`` per frame along ``angle_deg`` (image coords, y down)."""
    big = texture(seed)
    dx, dy = step_px * np.cos(np.radians(angle_deg)), step_px * np.sin(np.radians(angle_deg))
    off = (big.shape[0] - SIZE) // 2
    out = []
    for t in range(frames):
        m = np.float32([[1, 0, t * dx], [0, 1, t * dy]])  # content moves by +t (dx, dy)
        moved = cv2.warpAffine(big, m, big.shape[1::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        out.append(moved[off:off + SIZE, off:off + SIZE])
    return np.ascontiguousarray(np.stack(out))


@pytest.mark.parametrize("bin_index", range(8))
@pytest.mark.parametrize("threshold", ["relative", 0.5])
def test_translation_at_bin_centres_labels_every_patch(bin_index, threshold):
    clip = translated_clip(22.5 + 45 * bin_index, 2.0)
    labels = flow_direction_labels(clip, PATCH, threshold)
    assert labels.shape == (2, SIZE // PATCH, SIZE // PATCH) and labels.dtype == np.uint8
    if threshold == "relative":
        # the reference's min-max rule always calls the slowest patch of each pair static; under a
        # uniform translation the others sit far above 1 % of the (noise-sized) range: few are static
        assert np.all(labels.reshape(2, -1).min(axis=1) == 0)
        moving = labels > 0
        assert moving.mean() > 0.9
        assert np.all(labels[moving] == bin_index + 1), np.bincount(labels.ravel(), minlength=9)
    else:
        assert np.all(labels == bin_index + 1), np.bincount(labels.ravel(), minlength=9)


@pytest.mark.parametrize("angle,expected", [(90 + 10, 3), (0 + 10, 1), (180 + 10, 5), (270 + 10, 7)])
def test_image_coordinate_convention(angle, expected):
    # bins are [45 k, 45 k + 45): down (90 deg, y points down) opens class 3, right class 1, left 5, up 7
    labels = flow_direction_labels(translated_clip(angle, 2.0), PATCH, 0.5)
    assert np.all(labels == expected)


@pytest.mark.parametrize("estimator,scale", [("farneback", 0.5), ("dis_ultrafast", 1.0), ("dis_fast", 0.5)])
def test_cheaper_variants_get_translations_right(estimator, scale):
    for bin_index in (0, 3, 6):
        labels = flow_direction_labels(translated_clip(22.5 + 45 * bin_index, 2.0), PATCH, 0.5,
                                       scale=scale, estimator=estimator)
        assert np.mean(labels == bin_index + 1) > 0.95


def test_static_clip_is_all_zero_under_an_absolute_threshold():
    still = np.repeat(texture()[None, :SIZE, :SIZE], 4, axis=0)
    for estimator in ESTIMATORS:
        assert not flow_direction_labels(still, PATCH, 0.1, estimator=estimator).any()


def test_absolute_threshold_in_pixels():
    slow = translated_clip(22.5, 0.3)  # 0.3 px per frame
    assert np.all(flow_direction_labels(slow, PATCH, 0.15) == 1)
    assert not flow_direction_labels(slow, PATCH, 0.6).any()


def test_relative_rule_is_per_pair():
    # pair 0 moves the whole frame, pair 1 is still: the relative rule judges each pair on its own range
    moving = translated_clip(22.5, 2.0, frames=2)
    clip = np.concatenate([moving, moving[-1:]])
    labels = flow_direction_labels(clip, PATCH, "relative")
    assert np.mean(labels[0] == 1) > 0.9  # the still pair does not lower the moving pair's bar


def test_half_moving_frame():
    # left half of the picture moves right, right half stays: labels follow the patches
    a, b = translated_clip(22.5, 2.0, frames=2), np.repeat(texture(1)[None, :SIZE, :SIZE], 2, axis=0)
    clip = np.concatenate([a[:, :, : SIZE // 2], b[:, :, SIZE // 2:]], axis=2)
    labels = flow_direction_labels(clip, PATCH, 0.5)[0]  # (8, 8)
    assert np.all(labels[:, :3] == 1)  # one patch column of margin at the seam
    assert not labels[:, 5:].any()


def test_bad_input_is_rejected_with_a_clear_error():
    clip = translated_clip(0, 1.0)
    with pytest.raises(TypeError, match="uint8"):
        flow_direction_labels(clip.astype(np.float32))
    with pytest.raises(ValueError, match="divisible"):
        flow_direction_labels(clip[:, :120], 16)
    with pytest.raises(ValueError, match="at least 2 frames"):
        flow_direction_labels(clip[:1])
    with pytest.raises(ValueError, match="estimator"):
        flow_direction_labels(clip, estimator="raft")
    with pytest.raises(ValueError, match="threshold"):
        flow_direction_labels(clip, threshold="absolute")
    with pytest.raises(ValueError, match="threshold"):
        FlowLabeler(threshold="median")


def test_labeler_hook_returns_long_labels():
    clip = translated_clip(22.5 + 90, 2.0, frames=4)
    out = FlowLabeler(patch_size=PATCH, threshold=0.5)(clip, {"meta": {}})
    assert set(out) == {"flow"}
    assert out["flow"].dtype == torch.int64 and out["flow"].shape == (3, SIZE // PATCH, SIZE // PATCH)
    assert torch.all(out["flow"] == 3)


# ----------------------------------------------------------------------------- real video
def sample_video_clip(frames: int = 8, stride: int = 2, size: int = 224) -> np.ndarray:
    """A real decoded clip: a textured scene with moving objects (``videos.write_scene``), H.264-encoded,
    decoded with PyAV, short side 256, centre crop."""
    import tempfile

    from videos import decode_all, write_scene

    with tempfile.TemporaryDirectory() as tmp:
        decoded = decode_all(write_scene(Path(tmp) / "scene.mp4", frames * stride, seed=3))
    clip = decoded[::stride]
    h, w = clip.shape[1:3]
    s = 256 / min(h, w)
    clip = np.stack([cv2.resize(f, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) for f in clip])
    y0, x0 = (clip.shape[1] - size) // 2, (clip.shape[2] - size) // 2
    return np.ascontiguousarray(clip[:, y0:y0 + size, x0:x0 + size])


def test_real_clip_labels_are_plausible_and_deterministic():
    clip = sample_video_clip()
    labels = flow_direction_labels(clip)
    assert labels.shape == (7, 14, 14) and labels.dtype == np.uint8 and labels.max() <= 8
    assert np.array_equal(labels, flow_direction_labels(clip))
    moving = flow_direction_labels(clip, threshold=1.0) > 0
    assert 0.05 < moving.mean() < 0.95  # the objects move, the scene does not
    # a clip played backwards flips every moving patch's direction by 180 degrees (4 bins)
    back = flow_direction_labels(clip[::-1].copy(), threshold=1.0)[::-1]
    fwd = flow_direction_labels(clip, threshold=1.0)
    both = (fwd > 0) & (back > 0)
    turn = (fwd[both].astype(int) - back[both].astype(int)) % 8  # bins between the two directions
    off_by = np.minimum(np.abs(turn - 4), 8 - np.abs(turn - 4))  # 0 = exactly opposite
    assert both.sum() > 50 and np.mean(off_by <= 1) > 0.85


# ----------------------------------------------------------------------------- synthetic truth
def test_labels_follow_the_synthetic_benchmarks_true_motion(tmp_path):
    synth = pytest.importorskip("timematters.data.synth")
    # the same code the benchmark prints, loaded from its file (benchmarks/ is not a package)
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "flow_labels.py")
    spec = importlib.util.spec_from_file_location("flow_labels_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    synth_truth_agreement = bench.synth_truth_agreement
    root = synth.generate(tmp_path / "synth", videos=28, frames=8, size=128, seed=0, workers=1)
    result = synth_truth_agreement(root, estimators=[("farneback", 1.0)], patch_size=16, tau=1.0)
    row = result["farneback@1"]
    # Farneback is far from perfect on flat-coloured shapes (aperture problem; errors are mostly the
    # neighbouring bin; the interiors of the benchmark's large flat objects barely register), but its
    # labels must follow the true motion (chance: 3/8 within one bin) and keep the background still
    assert row["moving_patches"] > 200
    assert row["within_one_bin"] > 0.6
    assert row["direction_on_moving"] > 0.4  # chance is 1/8
    assert row["static_zero"] > 0.9


def test_labeler_fraction_labels_a_deterministic_share_of_clips_exactly():
    clip = translated_clip(22.5, 2.0, frames=3)
    labeler = FlowLabeler(patch_size=PATCH, threshold=0.5, fraction=0.25, seed=3)
    samples = [{"index": i, "meta": {"epoch": e, "frame_indices": [0, 1, 2], "geometry": {"crop": [0, 0, 128, 128]}}}
               for i in range(50) for e in range(4)]
    chosen = [labeler.selected(s) for s in samples]
    assert 0.15 < np.mean(chosen) < 0.35
    assert chosen == [labeler.selected(s) for s in samples]  # same answer in any worker
    by_video = np.array(chosen).reshape(50, 4)
    per_video = by_video.sum(axis=1)
    assert np.any((per_video > 0) & (per_video < 4))  # a clip labelled in some epochs, not in others
    skipped = samples[chosen.index(False)]
    assert torch.all(labeler(clip, skipped)["flow"] == IGNORE_INDEX)
    labelled = samples[chosen.index(True)]
    exact = torch.from_numpy(flow_direction_labels(clip, PATCH, 0.5)).long()
    assert torch.equal(labeler(clip, labelled)["flow"], exact)
    # cross_entropy skips the unlabelled clips
    logits = torch.randn(2 * 2 * 64, 9)
    target = torch.cat([labeler(clip, skipped)["flow"], labeler(clip, labelled)["flow"]]).reshape(-1)
    full = torch.nn.functional.cross_entropy(logits, target)
    assert torch.isclose(full, torch.nn.functional.cross_entropy(logits[128:], target[128:]))
    with pytest.raises(ValueError, match="fraction"):
        FlowLabeler(fraction=0.0)
