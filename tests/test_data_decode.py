"""Seek-based decoding returns exactly the frames a full decode has at the requested indices."""
from __future__ import annotations

import numpy as np
import pytest

from test_data_videos import decode_all, make_bad_files, sample_videos, write_video
from timematters.data.decode import (DecodeError, VideoReader, count_frames, open_video, read_frames,
                                     torchcodec_available)
from timematters.data.sampling import dense_indices, tsn_indices


def _index_sets(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [
        tsn_indices(n, 8, rng).tolist(),                   # a train clip
        tsn_indices(n, 8).tolist(),                        # an eval clip
        dense_indices(n, 4, rng, stride=3).tolist(),       # a short dense clip somewhere in the middle
        [n - 1, 0, n // 2, n // 2, n - 1],                 # unsorted with repeats, first and last frame
        [n - 2, n - 1],                                    # the very end only (seek far in)
    ]


@pytest.fixture(scope="module", params=[p.name for p in sample_videos()])
def sample_video(request):
    path = next(p for p in sample_videos() if p.name == request.param)
    return path, decode_all(path)


def test_sample_clips_match_full_decode(sample_video):
    path, full = sample_video
    assert count_frames(path, backend="pyav") == len(full)
    for indices in _index_sets(len(full), seed=len(full))[::2]:  # 3 of the 5 sets: big files decode slowly
        got = read_frames(path, indices, backend="pyav")
        assert got.dtype == np.uint8 and got.shape == (len(indices), *full.shape[1:])
        np.testing.assert_array_equal(got, full[indices], err_msg=f"{path.name} {indices}")


@pytest.mark.parametrize("suffix,bframes", [(".webm", False), (".mp4", True), (".mp4", False), (".avi", True)])
def test_written_videos_match_full_decode(tmp_path, suffix, bframes):
    # several keyframes (gop 7) so that seeking and dropping packets between requested frames both happen
    path = write_video(tmp_path / f"clip{suffix}", 45, gop=7, bframes=bframes)
    full = decode_all(path)
    with VideoReader(path) as reader:
        assert reader.num_frames == len(full) == 45
        assert reader.count_source == ("packets" if suffix == ".webm" else "metadata")
        # (the .avi with B-frames starts at pts 1 although its start_time says 0: frame 0 is still frame 0)
        for indices in _index_sets(45, seed=3) + [list(range(0, 45, 11)), [20, 21, 22]]:
            np.testing.assert_array_equal(reader.get_frames(indices), full[indices], err_msg=str(indices))


def test_out_of_range_index_is_an_error(tmp_path):
    path = write_video(tmp_path / "short.webm", 6)
    with pytest.raises(DecodeError, match="outside 0..5"):
        read_frames(path, [0, 6], backend="pyav")


@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_bad_files_raise_decode_error_naming_file(tmp_path, suffix):
    good = write_video(tmp_path / f"good{suffix}", 40)
    bad = make_bad_files(tmp_path / "bad", good)
    expected = {"zero": "zero-byte", "missing": "missing", "garbage": "cannot open|decoding failed",
                "truncated": "truncated|cannot open|stream ended|decoding failed"}
    for kind, path in bad.items():
        with pytest.raises(DecodeError, match=expected[kind]) as err:
            with open_video(path, backend="pyav") as reader:
                reader.get_frames(tsn_indices(reader.num_frames, 8).tolist() + [reader.num_frames - 1])
        assert str(path) in str(err.value) and err.value.path == str(path)


def test_auto_backend_works_without_torchcodec(tmp_path):
    path = write_video(tmp_path / "v.webm", 12)
    full = decode_all(path)
    with open_video(path, backend="auto") as reader:
        if not torchcodec_available():
            assert isinstance(reader, VideoReader)
        np.testing.assert_array_equal(reader.get_frames([1, 5, 11]), full[[1, 5, 11]])
    if not torchcodec_available():
        with pytest.raises(RuntimeError, match="torchcodec"):
            open_video(path, backend="torchcodec")


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
