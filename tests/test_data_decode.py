"""Frame ``i`` is the i-th frame in presentation order, for both backends, on awkward real-world-like files.

The reference is an independent full decode sorted by presentation timestamp (``videos.decode_all``).
"""
from __future__ import annotations

import numpy as np
import pytest

from videos import awkward_corpus, decode_all, make_bad_files, truncated_files, write_video
from timematters.data import decode
from timematters.data.decode import (DecodeError, TorchcodecReader, VideoReader, count_frames, open_video,
                                     read_frames, torchcodec_available)
from timematters.data.sampling import dense_indices, tsn_indices

BACKENDS = ["pyav", pytest.param("torchcodec", marks=pytest.mark.skipif(
    not torchcodec_available(), reason="torchcodec cannot load (not installed or no system FFmpeg libraries)"))]


def _index_sets(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        list(range(n)),                                    # every frame
        tsn_indices(n, 8, rng).tolist(),                   # a train clip
        tsn_indices(n, 8).tolist(),                        # an eval clip
        dense_indices(n, 4, rng, stride=3).tolist(),       # a short dense clip somewhere in the middle
        [n - 1, 0, n // 2, n // 2, n - 1],                 # unsorted with repeats, first and last frame
        [n - 2, n - 1],                                    # the very end only (seek far in)
        list(range(n - 1, -1, -4)),                        # backwards
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return {name: (item, decode_all(item.path)) for name, item in awkward_corpus(folder, frames=30).items()}


NAMES = [  # the corpus' files (test_corpus_names_are_all_tested keeps this list complete)
    "h264_bframes.mp4", "h264_bframes.mkv", "mpeg4_bframes.avi", "mpeg4_bframes.mp4", "h264_open_gop.mp4",
    "h264_vfr.mp4", "h264_gaps.mp4", "h264_start5s.mp4", "mpeg4_gaps.avi", "h264_trailing_empty.mp4",
    "h264_trailing_empty.mkv", "vp9.webm"]


def test_corpus_names_are_all_tested(corpus):
    assert sorted(corpus) == sorted(NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_awkward_files_decode_frame_exact(corpus, name, backend):
    item, full = corpus[name]
    with open_video(item.path, backend=backend) as reader:
        assert reader.num_frames == item.num_frames, item.note
        n = reader.num_frames
        for indices in _index_sets(n, seed=n):
            got = reader.get_frames(indices)
            # a frame the decoder never emits (only the trailing packet here) is the nearest one before it
            expected = full[np.minimum(indices, len(full) - 1)]
            assert got.dtype == np.uint8 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} ({item.note}) {indices}")
        # clips span the whole video: the eval clip's first and last segments are at both ends
        clip = tsn_indices(n, 8).tolist()
        assert clip[0] < n / 8 and clip[-1] >= n - n / 8
        if item.decodable < item.num_frames:
            assert reader.substituted > 0  # counted, not silent
        else:
            assert reader.substituted == 0


@pytest.mark.parametrize("name", NAMES)
def test_awkward_files_decode_frame_exact_seeking_every_time(corpus, name, monkeypatch):
    """The same with the demuxer seeking to every run's keyframe instead of reading ahead to it (the
    corpus' files are short: reading ahead is what happens otherwise)."""
    monkeypatch.setattr(decode, "READ_AHEAD", 0)
    seeks = []
    seek = VideoReader._seek
    monkeypatch.setattr(VideoReader, "_seek", lambda self, target: seeks.append(seek(self, target)) or seeks[-1])
    item, full = corpus[name]
    with open_video(item.path, backend="pyav") as reader:
        for indices in _index_sets(reader.num_frames, seed=1)[1:]:
            np.testing.assert_array_equal(reader.get_frames(indices), full[np.minimum(indices, len(full) - 1)],
                                          err_msg=f"{name} ({item.note}) {indices}")
    if name != "vp9.webm":  # (one keyframe: nothing to seek to)
        assert any(seeks), "every seek failed: decoding restarted from the first packet each time"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_on_a_fresh_reader_per_clip(corpus, backend):
    """What a dataset does: a new reader per clip, seeking straight to the clip's frames."""
    for name in ("h264_open_gop.mp4", "mpeg4_bframes.avi", "h264_vfr.mp4"):
        item, full = corpus[name]
        rng = np.random.default_rng(0)
        for _ in range(6):
            indices = tsn_indices(item.num_frames, 4, rng).tolist()
            np.testing.assert_array_equal(read_frames(item.path, indices, backend=backend), full[indices])


def test_frame_count_is_the_index_not_the_header(corpus):
    item, full = corpus["mpeg4_gaps.avi"]  # the AVI header counts its null frames
    with VideoReader(item.path) as reader:
        assert reader.num_frames == len(full) == 30 and reader.index.declared_frames > 30
    item, full = corpus["h264_vfr.mp4"]
    with VideoReader(item.path) as reader:
        assert np.all(np.diff(reader.index.pts) > 0) and len(set(np.diff(reader.index.pts))) > 5


def test_index_is_built_once_per_video(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.webm", 12)
    calls = []
    build = decode.build_index
    monkeypatch.setattr(decode, "build_index", lambda *a: calls.append(1) or build(*a))
    for _ in range(3):
        read_frames(path, [0, 5, 11], backend="pyav")
    assert len(calls) == 1
    path.write_bytes(write_video(tmp_path / "w.webm", 14).read_bytes())  # the file changes: indexed again
    assert count_frames(path, backend="pyav") == 14 and len(calls) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_files_are_reported_with_counts(tmp_path, backend):
    for name, path in truncated_files(tmp_path, frames=30).items():
        with pytest.raises(DecodeError, match="truncated|cannot open") as err:
            with open_video(path, backend=backend) as reader:
                reader.get_frames(list(range(reader.num_frames)))
        assert err.value.path == str(path)
        if name == "zeroed_tail.mp4":  # every packet is there, the second half does not decode
            assert "does not decode" in err.value.reason and "of 30 frames decode" in err.value.reason
        elif name != "mpeg4.avi":  # (the AVI's index is at its end: it does not open at all)
            assert "frames cover" in err.value.reason and "declares 2.50 s" in err.value.reason


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_bad_files_raise_decode_error_naming_file(tmp_path, suffix, backend):
    good = write_video(tmp_path / f"good{suffix}", 40)
    bad = make_bad_files(tmp_path / "bad", good)
    expected = {"zero": "zero-byte", "missing": "missing", "garbage": "cannot open|no frames|truncated",
                "truncated": "truncated|cannot open"}
    for kind, path in bad.items():
        with pytest.raises(DecodeError, match=expected[kind]) as err:
            with open_video(path, backend=backend) as reader:
                reader.get_frames(tsn_indices(reader.num_frames, 8).tolist() + [reader.num_frames - 1])
        assert str(path) in str(err.value) and err.value.path == str(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_index_is_an_error(tmp_path, backend):
    path = write_video(tmp_path / "short.webm", 6)
    with pytest.raises(DecodeError, match="outside 0..5"):
        read_frames(path, [0, 6], backend=backend)


def test_auto_backend(tmp_path):
    path = write_video(tmp_path / "v.webm", 12)
    full = decode_all(path)
    with open_video(path, backend="auto") as reader:
        assert isinstance(reader, TorchcodecReader if torchcodec_available() else VideoReader)
        np.testing.assert_array_equal(reader.get_frames([1, 5, 11]), full[[1, 5, 11]])
    if not torchcodec_available():
        with pytest.raises(RuntimeError, match="torchcodec"):
            open_video(path, backend="torchcodec")
    with pytest.raises(ValueError, match="unknown decode backend"):
        open_video(path, backend="decord")


def test_synthetic_benchmark_decodes_frame_exact(tmp_path, capsys):
    """The built-in benchmark (written by `timematters synth`) reads through the SSv2 reader, every video
    decodes, and requested frames equal an independent full decode."""
    from timematters import cli
    from timematters.data.annotations import read_annotations

    out = tmp_path / "synth"
    assert cli.main(["synth", "--out", str(out), "--videos", "40", "--frames", "8", "--size", "32",
                     "--workers", "1"]) == 0
    records = read_annotations(out, "ssv2", "train")[0] + read_annotations(out, "ssv2", "validation")[0]
    assert len(records) == 40
    rng = np.random.default_rng(0)
    for r in records[:8]:
        full = decode_all(r.path)
        assert count_frames(r.path, backend="pyav") == len(full) == 8
        indices = tsn_indices(8, 4, rng).tolist() + [7, 0]
        np.testing.assert_array_equal(read_frames(r.path, indices, backend="pyav"), full[indices])
    capsys.readouterr()
    assert cli.main(["data", "check", str(out)]) == 0
    assert "40 of 40 videos decode" in capsys.readouterr().out
