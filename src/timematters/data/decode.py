"""Decode only the frames a clip needs; frame ``i`` is the i-th frame in presentation order.

The frame index. Demuxing a file (reading its packets, no decoding) lists every frame: one packet with data
per frame, each with a presentation timestamp (pts; the decode timestamp where a container stores none).
Sorted by timestamp, that list is the video's frames in presentation order; ``num_frames`` is its length,
whatever the header claims (AVI headers count null frames, MP4 headers may count a trailing packet that
decodes to nothing). Empty and discarded packets are left out. The index is cached per process (keyed by
path, size and modification time; least recently used entries are dropped), so a dataset demuxes each
video once, not once per epoch.

Decoding (PyAV, the default backend, works everywhere). For every requested frame the index knows the
packet that holds it and the keyframe decoding must start from (the last one before it in decode order
whose own timestamp is not later; with open GOPs the frames just before a keyframe are decoded after it
and need the previous keyframe). Requested frames whose spans overlap are decoded in one run; the demuxer
seeks to a run's keyframe (or reads forward when it is close), packets no requested frame depends on are
never decoded, non-reference frames that were not requested are skipped by the decoder, and only the
requested frames are converted to RGB. Decoded frames are matched to requested ones by their timestamp.

Frames that do not decode. Many H.264 files end with a packet that yields no frame; a request for it gets
the nearest decoded frame before it, and ``substituted`` counts such frames. A file is reported truncated
when its packets stop well before the duration its header declares, or when a requested frame and the
frames before it do not decode; the message says how many frames are there.

torchcodec (optional extra ``timematters[torchcodec]``, needs the system FFmpeg libraries) gets the same
index as its frame mapping, so both backends return the same frames; ``backend="auto"`` uses it when it
loads and falls back to PyAV on a file it fails on.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.codec.context import ThreadType

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "torchcodec")
INDEX_CACHE_SIZE = 20_000    # videos whose frame index a process keeps (~2-3 KB each for a 4 s clip)
READ_AHEAD = 64              # a keyframe at most this many packets ahead is reached by reading, not seeking
TRUNCATED_SHARE = 0.75       # packets covering less than this share of the declared duration: truncated
NOTS = np.iinfo(np.int64).min  # "no timestamp" in the index arrays


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


# ------------------------------------------------------------------------------------------------ frame index
@dataclass(frozen=True)
class FrameIndex:
    """The frames of one video stream in presentation order, from its packets."""
    pts: np.ndarray          # (N,) int64, increasing: frame i's timestamp (stream time base)
    duration: np.ndarray     # (N,) int64: time to the next frame (the last frame: its packet duration)
    keyframe: np.ndarray     # (N,) bool: frame i's packet is a keyframe
    packet: np.ndarray       # (N,) int32: position of frame i's packet in decode order
    start: np.ndarray        # (N,) int32: decode position of the keyframe decoding frame i starts from
    seek_ts: np.ndarray      # (P,) int64 per packet in decode order: timestamp to seek to for it (min(pts, dts))
    packet_ts: np.ndarray    # (P, 2) int64 per packet in decode order: (pts, dts), NOTS where missing
    time_base: Fraction
    fps: float               # average frame rate (frames / covered duration)
    declared_frames: int     # the header's frame count (0 when it has none), for reports only

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def position(self, ts: int) -> int | None:
        """Index position of a decoded frame with timestamp ``ts`` (exact, else the nearest frame within
        half a frame interval), or None."""
        i = int(np.searchsorted(self.pts, ts))
        if i < len(self.pts) and self.pts[i] == ts:
            return i
        best = min((j for j in (i - 1, i) if 0 <= j < len(self.pts)), key=lambda j: abs(self.pts[j] - ts),
                   default=None)
        if best is not None and 2 * abs(int(self.pts[best]) - ts) < max(1, int(self.duration[best])):
            return best
        return None

    def packet_position(self, pts: int | None, dts: int | None) -> int | None:
        """Decode position of the packet with these timestamps (to know where a seek landed), or None."""
        # by pts when there is one: some demuxers (Matroska) fill in dts only while reading on from the start
        hits = np.flatnonzero(self.packet_ts[:, 0] == pts) if pts is not None else \
            np.flatnonzero((self.packet_ts[:, 0] == NOTS) & (self.packet_ts[:, 1] == (NOTS if dts is None else dts)))
        return int(hits[0]) if len(hits) else None

    def frame_mappings_json(self) -> str:
        """The index in the JSON layout torchcodec reads as ``custom_frame_mappings`` (ffprobe's)."""
        frames = [{"pts": int(p), "duration": int(d), "key_frame": int(k)}
                  for p, d, k in zip(self.pts, self.duration, self.keyframe)]
        return json.dumps({"frames": frames})


def build_index(container: av.container.InputContainer, path: str) -> FrameIndex:
    """Demux every packet of the first video stream (no decoding) and index its frames."""
    stream = container.streams.video[0]
    if stream.time_base is None:
        raise DecodeError(path, "stream has no time base")
    rows = []  # (ts, pts, dts, duration, keyframe) per packet with data, decode order
    demux_error = ""
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.is_discard:
                continue
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            if ts is None:
                continue
            rows.append((ts, pkt.pts, pkt.dts, pkt.duration or 0, pkt.is_keyframe))
    except av.FFmpegError as e:  # a damaged file: index what was read, the checks below decide
        demux_error = f"{type(e).__name__}: {e}"
    if not rows:
        raise DecodeError(path, f"no frames ({demux_error})" if demux_error else "no frames")
    ts = np.array([r[0] for r in rows], np.int64)
    order = np.argsort(ts, kind="stable")
    keep = np.ones(len(order), bool)
    keep[1:] = np.diff(ts[order]) != 0  # two packets with one timestamp are one frame (packed B-frames)
    order = order[keep]
    pts = ts[order]
    dur = np.array([r[3] for r in rows], np.int64)[order]
    gaps = np.diff(pts)
    duration = np.append(gaps, dur[-1] if dur[-1] > 0 else (np.median(gaps) if len(gaps) else 1)).astype(np.int64)
    time_base = Fraction(stream.time_base)
    span = float((pts[-1] + duration[-1] - pts[0]) * time_base)
    fps = len(pts) / span if span > 0 else float(stream.average_rate or stream.guessed_rate or 1)

    # where decoding each frame must start: the last keyframe at or before its packet whose own timestamp
    # is not later than the frame's (open GOP: frames shown before a keyframe but decoded after it)
    keyframes: list[int] = []
    start_of_packet = np.zeros(len(rows), np.int64)
    for d, row in enumerate(rows):
        if row[4]:
            keyframes.append(d)
        k = len(keyframes) - 1
        while k > 0 and rows[keyframes[k]][0] > row[0]:
            k -= 1
        start_of_packet[d] = keyframes[k] if keyframes else 0
    seek_ts = np.array([min(t for t in (r[1], r[2]) if t is not None) for r in rows], np.int64)

    declared_s = _declared_seconds(container, stream)
    if declared_s and span < TRUNCATED_SHARE * declared_s - 2 / fps:
        raise DecodeError(path, f"truncated: packets for {len(pts)} frames cover {span:.2f} s, the header "
                                f"declares {declared_s:.2f} s" + (f" ({demux_error})" if demux_error else ""))
    return FrameIndex(
        pts=pts, duration=duration, keyframe=np.array([rows[i][4] for i in order], bool),
        packet=order.astype(np.int32), start=start_of_packet[order].astype(np.int32), seek_ts=seek_ts,
        packet_ts=np.array([[NOTS if t is None else t for t in r[1:3]] for r in rows], np.int64),
        time_base=time_base, fps=fps,
        declared_frames=max(0, int(stream.frames or 0)))


def _declared_seconds(container, stream) -> float:
    """The duration the header declares (stream, else container), 0 when it declares none."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        start = container.start_time if container.start_time and container.start_time > 0 else 0
        return (container.duration - start) / 1e6
    return 0.0


_INDEX_CACHE: OrderedDict[tuple, FrameIndex] = OrderedDict()


def _cache_key(path: str | Path) -> tuple:
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def cached_index(path: str | Path) -> FrameIndex | None:
    """The frame index of ``path`` when this process has built it (and the file has not changed since)."""
    key = _cache_key(path)
    index = _INDEX_CACHE.get(key)
    if index is not None:
        _INDEX_CACHE.move_to_end(key)
    return index


def frame_index(path: str | Path, container: av.container.InputContainer | None = None) -> FrameIndex:
    """The (cached) frame index of ``path``; ``container``, when given, is used to build it (and is left
    at an unknown position)."""
    index = cached_index(path)
    if index is not None:
        return index
    key = _cache_key(path)
    if container is None:
        with _open_container(str(path)) as c:
            index = build_index(c, str(path))
    else:
        index = build_index(container, str(path))
    _INDEX_CACHE[key] = index
    while len(_INDEX_CACHE) > INDEX_CACHE_SIZE:
        _INDEX_CACHE.popitem(last=False)
    return index


def _check_file(path: str | Path) -> None:
    p = Path(path)
    if not p.is_file():
        raise DecodeError(path, "missing file" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise DecodeError(path, "zero-byte file")


def _open_container(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DecodeError(path, f"cannot open container ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise DecodeError(path, "no video stream")
    return container


def _check_indices(path: str, indices, num_frames: int) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("get_frames needs at least one index")
    bad = [i for i in indices if i < 0 or i >= num_frames]
    if bad:
        raise DecodeError(path, f"frame indices {bad[:5]} outside 0..{num_frames - 1}")
    return indices


def _substitute(path: str, index: FrameIndex, missing: int, decoded: list[int]) -> int:
    """The decoded frame that stands in for frame ``missing`` (never emitted by the decoder): the nearest
    one before it, when it is close; otherwise the file is truncated."""
    before = [i for i in decoded if i < missing]
    tolerance = max(2, index.num_frames // 20)
    if not before or missing - max(before) > tolerance:
        last = max(before) if before else -1
        raise DecodeError(path, f"truncated: frame {missing} of {index.num_frames} does not decode and neither "
                                f"do the {missing - last - 1} frames before it (about {last + 1} of "
                                f"{index.num_frames} frames decode)")
    return max(before)


# ------------------------------------------------------------------------------------------------ readers
class VideoReader:
    """One opened video file (PyAV). Use as a context manager, or call ``close()``.

    ``num_frames``: frames in the index; ``substituted``: requested frames the decoder never emitted that
    were given the nearest decoded frame before them (counted over this reader's lifetime).
    """

    def __init__(self, path: str | Path, *, threads: int = 0):
        self.path, self.threads = str(path), threads
        _check_file(path)
        self.container = None
        self._open()
        self.index = cached_index(self.path)
        if self.index is None:
            try:
                self.index = frame_index(self.path, self.container)
            except DecodeError:
                self.close()
                raise
            self._open()  # building the index read the whole file: start again
        self.num_frames, self.fps = self.index.num_frames, self.index.fps
        self.count_source = "index"
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        self.substituted = 0
        self.rejected = 0  # packets the decoder rejected

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
        self.container = _open_container(self.path)
        self.stream = self.container.streams.video[0]
        if self.threads:
            self.stream.thread_count = self.threads
        self._packets = None  # packet iterator; the next packet it yields is at decode position self._next
        self._pushed = None   # a packet read ahead (after a seek), yielded first
        self._next = 0

    # ----------------------------------------------------------------------------------------------
    def get_frames(self, indices) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)`` RGB."""
        indices = _check_indices(self.path, indices, self.num_frames)
        wanted = sorted(set(indices))
        try:
            got = self._decode(wanted, skip_unwanted=True)
            missing = [i for i in wanted if i not in got]
            if missing:  # frames the decoder never emitted: the nearest decoded frame before each
                lo = max(0, missing[0] - max(2, self.num_frames // 20) - 1)
                near = self._decode(list(range(lo, missing[-1])), skip_unwanted=False)
                for m in missing:
                    got[m] = near.get(m) if m in near else near[_substitute(self.path, self.index, m, sorted(near))]
                    self.substituted += 1
        except av.FFmpegError as e:
            raise DecodeError(self.path, f"decoding failed ({type(e).__name__}: {e})") from e
        try:
            return np.stack([got[i] for i in indices])
        except ValueError as e:
            raise DecodeError(self.path, f"frames of different sizes ({e})") from e

    def _decode(self, wanted: list[int], *, skip_unwanted: bool) -> dict[int, np.ndarray]:
        """Decode frames ``wanted`` (sorted, unique index positions) in runs of packets; returns those that
        came out of the decoder."""
        index = self.index
        runs: list[list] = []  # [first packet, last packet, frames]
        for i in sorted(wanted, key=lambda i: index.start[i]):
            s, e = int(index.start[i]), int(index.packet[i])
            if runs and s <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], e)
                runs[-1][2].add(i)
            else:
                runs.append([s, e, {i}])
        got: dict[int, np.ndarray] = {}
        for first, last, frames in runs:
            self._decode_run(first, last, frames, got, skip_unwanted)
        return got

    def _decode_run(self, first: int, last: int, frames: set[int], got: dict, skip_unwanted: bool) -> None:
        index, ctx = self.index, self.stream.codec_context
        self._goto(first)
        ctx.flush_buffers()
        # skip_frame is read when a packet is decoded; with frame threading that happens later, so only
        # switch it per packet when frame threading is off (PyAV's default is slice threading).
        per_packet = skip_unwanted and not (ctx.thread_type & ThreadType.FRAME)
        wanted_packets = {int(index.packet[i]) for i in frames}
        skipping = False
        ctx.skip_frame = "DEFAULT"

        def take(decoded) -> None:
            for frame in decoded:
                ts = frame.pts if frame.pts is not None else frame.dts
                i = None if ts is None else index.position(ts)
                if i in frames and i not in got:
                    got[i] = frame.to_ndarray(format="rgb24")

        while self._next <= last:
            pkt = self._read()
            if pkt is None:
                break
            d = self._next - 1
            if per_packet:
                # a frame no one asked for and no other frame refers to need not be decoded at all
                skip = d not in wanted_packets
                if skip != skipping:
                    ctx.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
            try:
                take(ctx.decode(pkt))
            except av.InvalidDataError:  # a packet the decoder rejects: its frame is missing (as in ffmpeg)
                self.rejected += 1
        take(ctx.decode(None))  # drain: the frames still held for reordering
        ctx.flush_buffers()

    def _read(self) -> av.Packet | None:
        """The next packet with data (decode order), or None at the end."""
        if self._pushed is not None:
            pkt, self._pushed = self._pushed, None
            self._next += 1
            return pkt
        for pkt in self._packets:
            if pkt.size == 0 or pkt.is_discard or (pkt.pts is None and pkt.dts is None):
                continue
            self._next += 1
            return pkt
        return None

    def _goto(self, target: int) -> None:
        """Position the demuxer so that the next packet read is the one at decode position ``target``."""
        fresh = self._packets is None  # just opened: reading starts at packet 0
        ahead = not fresh and self._next <= target <= self._next + READ_AHEAD
        if not ahead and not (fresh and target <= READ_AHEAD):
            if target <= READ_AHEAD or not self._seek(target):
                self._open()  # near the start, or the seek failed or overshot: read from the start
        if self._packets is None:
            self._packets, self._next = self.container.demux(self.stream), 0
        while self._next < target:
            if self._read() is None:
                raise DecodeError(self.path, f"packets end before packet {target} (file changed?)")

    def _seek(self, target: int) -> bool:
        """Seek to (or before) the keyframe at decode position ``target``; False when that did not work."""
        try:
            self.container.seek(int(self.index.seek_ts[target]), stream=self.stream, backward=True,
                                any_frame=False)
        except av.FFmpegError:
            return False
        self._packets, self._pushed = self.container.demux(self.stream), None
        for pkt in self._packets:  # where did it land? the first packet is recognised by its timestamps
            if pkt.size == 0 or pkt.is_discard or (pkt.pts is None and pkt.dts is None):
                continue
            d = self.index.packet_position(pkt.pts, pkt.dts)
            if d is None or d > target:
                return False
            self._pushed, self._next = pkt, d  # read again by the next _read()
            return True
        return False


class TorchcodecReader:
    """Same surface as ``VideoReader`` on top of ``torchcodec.decoders.VideoDecoder``, given this module's
    frame index as its frame mapping (so frame i is the same frame for both). A request torchcodec fails
    on, or answers with frames whose timestamps are not the requested ones, is decoded with PyAV instead
    (counted in ``fallbacks``)."""

    def __init__(self, path: str | Path, *, threads: int = 0):
        from torchcodec.decoders import VideoDecoder

        self.path, self.threads = str(path), threads
        _check_file(path)
        self.index = frame_index(self.path)
        self.num_frames, self.fps = self.index.num_frames, self.index.fps
        self.count_source = "index"
        self.substituted = self.fallbacks = 0
        try:
            self.decoder = VideoDecoder(self.path, num_ffmpeg_threads=threads,
                                        custom_frame_mappings=self.index.frame_mappings_json())
        except Exception as e:
            raise DecodeError(path, f"torchcodec cannot open ({type(e).__name__}: {e})") from e
        meta = self.decoder.metadata
        self.width, self.height = meta.width, meta.height

    def __enter__(self) -> TorchcodecReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.decoder = None

    def get_frames(self, indices) -> np.ndarray:
        indices = _check_indices(self.path, indices, self.num_frames)
        try:
            batch = self.decoder.get_frames_at(indices=indices)
            pts = np.round(batch.pts_seconds.double().numpy() / float(self.index.time_base)).astype(np.int64)
            if not np.array_equal(pts, self.index.pts[indices]):
                raise RuntimeError(f"returned timestamps {pts[:4].tolist()} for frames at "
                                   f"{self.index.pts[indices][:4].tolist()}")
            return batch.data.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
        except Exception as e:
            # torchcodec stops on a frame that does not decode and on some open-GOP / AVI B-frame files;
            # PyAV (same index) decodes those, substituting frames the decoder never emits
            log.debug("torchcodec failed on %s (%s); decoding with PyAV", self.path, e)
            self.fallbacks += 1
        with VideoReader(self.path, threads=self.threads) as reader:
            frames = reader.get_frames(indices)
            self.substituted += reader.substituted
            return frames


def open_video(path: str | Path, *, backend: str = "auto", threads: int = 0) -> VideoReader | TorchcodecReader:
    """Open ``path`` with the chosen backend ("auto": torchcodec when it works, else PyAV)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown decode backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torchcodec" and not torchcodec_available():
        raise DecodeError(path, "decode backend 'torchcodec' requested but torchcodec is not installed or cannot "
                          "load the system FFmpeg libraries (pip install 'timematters[torchcodec]')")
    if backend == "torchcodec" or (backend == "auto" and torchcodec_available()):
        try:
            return TorchcodecReader(path, threads=threads)
        except DecodeError as e:
            if backend == "torchcodec" or not e.reason.startswith("torchcodec"):
                raise
            # auto: let PyAV try (and report) a file torchcodec cannot open
    return VideoReader(path, threads=threads)


def read_frames(path: str | Path, indices, *, backend: str = "auto", threads: int = 0) -> np.ndarray:
    """Frames at ``indices`` of the video at ``path`` as uint8 ``(T, H, W, 3)``."""
    with open_video(path, backend=backend, threads=threads) as reader:
        return reader.get_frames(indices)


def count_frames(path: str | Path, *, backend: str = "auto") -> int:
    """Number of frames in the video's index (packets with data, not the header's claim)."""
    with open_video(path, backend=backend) as reader:
        return reader.num_frames
