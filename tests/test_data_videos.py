"""The test-video helpers (``tests/videos.py``) themselves: written files hold what they claim."""
from __future__ import annotations

import av
import numpy as np
import pytest

from videos import awkward_corpus, decode_all, write_video

# the other test files imported these from here before tests/videos.py existed
from videos import frame_content, make_bad_files  # noqa: F401


@pytest.mark.parametrize("suffix", [".webm", ".mp4", ".avi"])
def test_written_video_has_every_frame(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", 15)
    frames = decode_all(path)
    assert frames.shape == (15, 48, 64, 3)
    # consecutive frames differ, so a wrong frame index is always visible
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(14))


def test_awkward_corpus_is_awkward(tmp_path):
    corpus = awkward_corpus(tmp_path, frames=20)
    for name, item in corpus.items():
        frames = decode_all(item.path)
        assert len(frames) == item.decodable == 20, name
        assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(19)), name
    with av.open(str(corpus["mpeg4_gaps.avi"].path)) as c:   # null frames: the header counts the gaps
        assert c.streams.video[0].frames > 25
    with av.open(str(corpus["h264_bframes.mp4"].path)) as c:  # B-frames: decode order != presentation order
        pts = [p.pts for p in c.demux(video=0) if p.size]
        assert pts != sorted(pts)
    with av.open(str(corpus["h264_trailing_empty.mp4"].path)) as c:  # 21 packets with data, 20 frames
        assert sum(1 for p in c.demux(video=0) if p.size) == 21
