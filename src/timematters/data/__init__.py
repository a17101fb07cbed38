"""Video data: annotation readers, seek-based decoding, frame sampling, clip transforms, the dataset."""
from timematters.data.annotations import FORMATS, AnnotationError, VideoRecord, read_annotations
from timematters.data.dataset import LoadFailures, TooManyFailures, VideoDataset, build_video_dataset, collate
from timematters.data.decode import DecodeError, VideoReader, open_video, read_frames
from timematters.data.sampling import dense_indices, sample_indices, tsn_indices

__all__ = [
    "FORMATS", "AnnotationError", "VideoRecord", "read_annotations",
    "LoadFailures", "TooManyFailures", "VideoDataset", "build_video_dataset", "collate",
    "DecodeError", "VideoReader", "open_video", "read_frames",
    "dense_indices", "sample_indices", "tsn_indices",
]
