"""Decode only the frames a clip needs.

PyAV (which bundles FFmpeg) is the default backend. ``VideoReader.get_frames(indices)`` seeks once to the
keyframe at or before the first requested frame, then walks the packets forward and decodes only what the
requested frames depend on: a run of packets that ends before the next requested frame is dropped when a
later keyframe makes it unnecessary, non-reference frames that were not requested are skipped by the
decoder (``skip_frame``), and decoding stops after the last requested frame. Only the requested frames are
converted to RGB. The whole video is never decoded unless the clip spans it.

Frame ``i`` is the i-th frame in presentation order. Its index is computed from its timestamp,
``round((pts - start) * time_base * fps)``, which is exact for constant-frame-rate files (the tests check
it frame by frame against a full decode).

The frame count comes from the stream metadata; containers without it (WebM) get a packet count (demuxing
only, ~30x cheaper than decoding), and a file whose packets end well before the duration its header
declares is reported as truncated.

torchcodec (optional extra ``timematters[torchcodec]``, needs the system FFmpeg libraries) is used when it
imports and decodes; otherwise, or when it fails on a file, PyAV is used.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import av
import numpy as np
from av.codec.context import ThreadType

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "torchcodec")


class DecodeError(RuntimeError):
    """A video that cannot be decoded: names the file and the reason."""

    def __init__(self, path: str | Path, reason: str = ""):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" if reason else str(path))

    def __reduce__(self):  # keeps (path, reason) through pickling (DataLoader workers)
        return (type(self), (self.path, self.reason))


@functools.cache
def torchcodec_available() -> bool:
    """True when torchcodec imports and decodes (it needs the system FFmpeg libraries)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as e:  # ImportError, or OSError/RuntimeError when the FFmpeg libraries are missing
        log.debug("torchcodec unavailable: %s", e)
        return False
    return True


class VideoReader:
    """One opened video file (PyAV). ``num_frames`` comes from the stream metadata, or, when the
    container does not store it (WebM), from counting the packets without decoding them.

    Use as a context manager, or call ``close()``.
    """

    def __init__(self, path: str | Path, *, num_frames: int | None = None, threads: int = 0):
        self.path, self.threads = str(path), threads
        p = Path(path)
        if not p.is_file():
            raise DecodeError(path, "missing file" if not p.exists() else "not a regular file")
        if p.stat().st_size == 0:
            raise DecodeError(path, "zero-byte file")
        self.container = None
        self._open()
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        if not rate or self.stream.time_base is None:
            self.close()
            raise DecodeError(path, "stream has no frame rate or time base")
        self.fps = float(rate)
        self.time_base = float(self.stream.time_base)
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        # Frame 0 is the earliest presentation timestamp. The stream's start_time is not always it (AVI
        # with B-frames starts at pts 1 while start_time says 0), so read it from the first packets.
        metadata = self.stream.frames if self.stream.frames > 0 else None
        count_needed = num_frames is None and metadata is None
        packets, first_pts = self._scan(limit=None if count_needed else 32)
        self.start_pts = first_pts if first_pts is not None else (self.stream.start_time or 0)
        if num_frames is not None:
            self.num_frames, self.count_source = int(num_frames), "given"
        elif metadata is not None:
            self.num_frames, self.count_source = int(metadata), "metadata"
        else:
            self.num_frames, self.count_source = packets, "packets"
            declared = (self.container.duration or 0) / 1e6 * self.fps  # container header, in frames
            if self.num_frames < 0.9 * declared - 1:
                self.close()
                raise DecodeError(path, f"truncated: {self.num_frames} frames present, the header declares "
                                        f"about {declared:.0f}")
        if self.num_frames <= 0:
            self.close()
            raise DecodeError(path, "no frames")

    # ----------------------------------------------------------------------------------------------
    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "container", None) is not None:
            self.container.close()
            self.container = None

    def _open(self) -> None:
        """(Re)open the container at its start."""
        self.close()
        try:
            self.container = av.open(self.path)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise DecodeError(self.path, f"cannot open container ({type(e).__name__}: {e})") from e
        if not self.container.streams.video:
            self.close()
            raise DecodeError(self.path, "no video stream")
        self.stream = self.container.streams.video[0]
        if self.threads:
            self.stream.thread_count = self.threads
        self._fresh = True  # nothing read yet: decoding can start without a seek

    def _scan(self, limit: int | None) -> tuple[int, int | None]:
        """Demux (no decoding) up to ``limit`` packets: (packets with data, smallest pts). One packet per
        frame for the codecs we read; the reorder depth of B-frames is far below 32 packets."""
        self._fresh = False
        count, first = 0, None
        try:
            for pkt in self.container.demux(self.stream):
                if pkt.size == 0:
                    continue
                count += 1
                if pkt.pts is not None and not pkt.is_discard:
                    first = pkt.pts if first is None else min(first, pkt.pts)
                if limit is not None and count >= limit:
                    break
        except av.FFmpegError as e:
            self.close()
            raise DecodeError(self.path, f"cannot read packets ({type(e).__name__}: {e})") from e
        return count, first

    def _index(self, pts: int) -> int:
        return round((pts - self.start_pts) * self.time_base * self.fps)

    def _pts(self, index: int) -> int:
        return self.start_pts + int(index / self.fps / self.time_base)

    # ----------------------------------------------------------------------------------------------
    def get_frames(self, indices) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)`` RGB."""
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("get_frames needs at least one index")
        bad = [i for i in indices if i < 0 or i >= self.num_frames]
        if bad:
            raise DecodeError(self.path, f"frame indices {bad[:5]} outside 0..{self.num_frames - 1}")
        wanted = sorted(set(indices))
        try:
            got = self._decode(wanted, seek=wanted[0] > 0)
            if got is None:  # the seek landed after the first wanted frame: decode from the start
                got = self._decode(wanted, seek=False)
            if got is None:
                raise DecodeError(self.path, "first decoded frame lies after the requested frame")
        except av.FFmpegError as e:
            raise DecodeError(self.path, f"decoding failed ({type(e).__name__}: {e})") from e
        missing = [i for i in wanted if i not in got]
        if missing:
            last = max(got) if got else -1
            raise DecodeError(self.path, f"stream ended at frame {last}, before requested frame {missing[0]} "
                                         f"({self.count_source} frame count {self.num_frames}): truncated?")
        try:
            return np.stack([got[i] for i in indices])
        except ValueError as e:
            raise DecodeError(self.path, f"frames of different sizes ({e})") from e

    def _decode(self, wanted: list[int], *, seek: bool) -> dict[int, np.ndarray] | None:
        """Decode the frames in ``wanted`` (sorted, unique). Returns None when the seek failed or overshot."""
        ctx = self.stream.codec_context
        if seek:
            try:
                self.container.seek(self._pts(wanted[0]), stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError:  # an unseekable file: decode from the start instead
                return None
            ctx.flush_buffers()
        elif not self._fresh:
            self._open()  # back to the start: reopening works for every container, seeking to 0 may not
            ctx = self.stream.codec_context
        self._fresh = False
        todo = set(wanted)
        got: dict[int, np.ndarray] = {}
        pending: list[av.Packet] = []  # packets read but not yet decoded
        first_out = True
        # skip_frame is read when a packet is decoded; with frame threading that happens later, so only
        # switch it per packet when frame threading is off (PyAV's default is slice threading).
        frame_threads_off = not (ctx.thread_type & ThreadType.FRAME)
        skipping = False
        ctx.skip_frame = "DEFAULT"

        def next_wanted() -> int:
            return min(todo)

        def feed(packets) -> bool:
            """Decode packets; keep wanted frames. Returns False when the seek overshot."""
            nonlocal first_out, skipping
            for pkt in packets:
                if pkt is not None and frame_threads_off:
                    # a frame no one asked for and no other frame refers to need not be decoded at all
                    skip = pkt.pts is not None and self._index(pkt.pts) not in todo
                    if skip != skipping:
                        ctx.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
                for frame in ctx.decode(pkt):
                    if frame.pts is None:
                        raise DecodeError(self.path, "decoded frame without a timestamp")
                    idx = self._index(frame.pts)
                    if first_out:
                        first_out = False
                        if seek and idx > wanted[0]:
                            return False
                    if idx in todo:
                        got[idx] = frame.to_ndarray(format="rgb24")
                        todo.discard(idx)
                        if not todo:
                            return True
            return True

        for pkt in self.container.demux(self.stream):
            if pkt.size == 0:  # the demuxer's end-of-stream packet
                break
            idx = None if pkt.pts is None else self._index(pkt.pts)
            if pkt.is_keyframe and pending and idx is not None and idx <= next_wanted():
                # Every packet before this keyframe holds frames earlier than it: not needed.
                pending.clear()
                ctx.flush_buffers()
            pending.append(pkt)
            if idx is None or idx >= next_wanted():
                ok = feed(pending)
                pending.clear()
                if not ok:
                    return None
                if not todo:
                    return got
        if todo and not feed(pending + [None]):  # drain the decoder
            return None
        return got


class TorchcodecReader:
    """Same surface as ``VideoReader`` on top of ``torchcodec.decoders.VideoDecoder``. With ``fallback``,
    a file torchcodec fails on is decoded with PyAV instead."""

    def __init__(self, path: str | Path, *, num_frames: int | None = None, threads: int = 0,
                 fallback: bool = False):
        from torchcodec.decoders import VideoDecoder

        self.path, self.threads, self.fallback = str(path), threads, fallback
        p = Path(path)
        if not p.is_file() or p.stat().st_size == 0:
            raise DecodeError(path, "missing file" if not p.exists() else "zero-byte or not a regular file")
        try:
            self.decoder = VideoDecoder(self.path, seek_mode="exact", num_ffmpeg_threads=threads)
        except Exception as e:
            raise DecodeError(path, f"torchcodec cannot open ({type(e).__name__}: {e})") from e
        meta = self.decoder.metadata
        self.num_frames = int(num_frames if num_frames is not None else meta.num_frames)
        self.count_source = "given" if num_frames is not None else "torchcodec"
        self.fps = float(meta.average_fps or 0.0)
        self.width, self.height = meta.width, meta.height

    def __enter__(self) -> TorchcodecReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.decoder = None

    def get_frames(self, indices) -> np.ndarray:
        indices = [int(i) for i in indices]
        try:
            batch = self.decoder.get_frames_at(indices=indices)  # data (N, C, H, W) uint8
        except Exception as e:
            if self.fallback:
                log.debug("torchcodec failed on %s (%s); decoding with PyAV", self.path, e)
                with VideoReader(self.path, num_frames=self.num_frames, threads=self.threads) as reader:
                    return reader.get_frames(indices)
            raise DecodeError(self.path, f"torchcodec decoding failed ({type(e).__name__}: {e})") from e
        return batch.data.permute(0, 2, 3, 1).contiguous().numpy()


def open_video(path: str | Path, *, backend: str = "auto", num_frames: int | None = None,
               threads: int = 0) -> VideoReader | TorchcodecReader:
    """Open ``path`` with the chosen backend ("auto": torchcodec when it works, else PyAV)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torchcodec" and not torchcodec_available():
        raise DecodeError(path, "decode backend 'torchcodec' requested but torchcodec is not installed or cannot "
                          "load the system FFmpeg libraries (pip install 'timematters[torchcodec]')")
    if backend == "torchcodec" or (backend == "auto" and torchcodec_available()):
        try:
            return TorchcodecReader(path, num_frames=num_frames, threads=threads, fallback=backend == "auto")
        except DecodeError:
            if backend == "torchcodec":
                raise
            # auto: let PyAV try (and report) the file
    return VideoReader(path, num_frames=num_frames, threads=threads)


def read_frames(path: str | Path, indices, *, backend: str = "auto", threads: int = 0) -> np.ndarray:
    """Frames at ``indices`` of the video at ``path`` as uint8 ``(T, H, W, 3)``."""
    with open_video(path, backend=backend, threads=threads) as reader:
        return reader.get_frames(indices)


def count_frames(path: str | Path, *, backend: str = "auto") -> int:
    """Number of frames (metadata, or a packet count where the container lacks it)."""
    with open_video(path, backend=backend) as reader:
        return reader.num_frames
