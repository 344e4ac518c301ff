"""Inference sources for detect.py: images, folders, globs, .txt lists of paths, video files and webcams/streams.

Every loader yields ``(path, im, im0, cap, s)``: ``path`` the file (or stream) name, ``im`` the letterboxed RGB image
as a uint8 CHW numpy array (3, h, w), ``im0`` the original BGR image (h0, w0, 3), ``cap`` the cv2.VideoCapture of a
video or stream (None for an image) and ``s`` a log prefix such as ``image 1/3 /data/bus.jpg: `` or
``video 1/1 (frame 3/30) /data/vtest.mp4: ``. Loaders also expose ``mode`` ('image' | 'video' | 'stream') and
``frame`` (1-based frame number of the last video frame, 0 for images). Nothing is ever downloaded.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from utils.data.augment import letterbox
from utils.data.label_scan import text_lines
from utils.errors import DatasetError
from utils.log import get_logger

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")

Item = tuple[str, np.ndarray, np.ndarray, Optional[cv2.VideoCapture], str]


def suffix_of(path: Union[str, Path]) -> str:
    """Lower-case file suffix without the dot ('jpg')."""
    return Path(str(path)).suffix[1:].lower()


def is_stream(source: Union[str, Path]) -> bool:
    """True for a webcam index ('0') or a stream URL (rtsp/rtmp/http) that is not an image or video file."""
    s = str(source).strip()
    if s.isnumeric():
        return True
    return s.lower().startswith(STREAM_PREFIXES) and suffix_of(s) not in IMG_FORMATS + VID_FORMATS


def prepare_image(im0: np.ndarray, img_size: Union[int, Sequence[int]], stride: int, auto: bool) -> np.ndarray:
    """Letterbox a BGR HWC image to img_size ([h, w] or int) and return it as a contiguous RGB CHW uint8 array."""
    im = letterbox(im0, img_size, stride=stride, auto=auto)[0]
    return np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])


def _read_list(txt: Path) -> list[str]:
    """Paths listed one per line in a .txt file; relative ones resolve against the list's folder."""
    out = []
    for line in text_lines(txt, "text list of sources"):
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(str(p if p.is_absolute() or p.exists() else txt.parent / p))
    return out


def expand_source(source: Union[str, Path, Sequence[Union[str, Path]]]) -> list[str]:
    """Resolve a source (file, folder, glob, .txt list, or a list of these) to a sorted list of file paths.

    A missing path raises DatasetError naming it. Folders contribute their files (not recursive; hidden files, such
    as macOS's ``._x.jpg``, left out); globs may use **. A path that exists is taken as it is, even with ``[`` or ``?``
    in its name.
    """
    if isinstance(source, (list, tuple)):
        return [f for s in source for f in expand_source(s)]
    text = str(source).strip()
    if text.lower().startswith(STREAM_PREFIXES):
        raise DatasetError(f"source {text}: URLs of files are not downloaded; save the file locally and pass its path")
    p = Path(text).expanduser()
    if not p.exists() and any(c in text for c in "*?["):
        files = sorted(glob.glob(str(p), recursive=True))
        if not files:
            raise DatasetError(f"source {text}: the pattern matches no file")
        return [f for f in files if Path(f).is_file()]
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    if p.is_file() and p.suffix.lower() == ".txt":
        return expand_source(_read_list(p))
    if p.is_file():
        return [str(p)]
    raise DatasetError(f"source {text}: does not exist")


class LoadImages:
    """Iterate images and videos from a file, folder, glob, .txt list or a list of those (see module docstring).

    Images that cv2 cannot decode are logged by name and skipped. Video frames are read every ``vid_stride``-th
    frame, starting with the first; ``frames`` is the number of frames a video will yield.
    """

    def __init__(self, path: Union[str, Path, Sequence[Union[str, Path]]], img_size: Union[int, Sequence[int]] = 640,
                 stride: int = 32, auto: bool = True, vid_stride: int = 1):
        files = expand_source(path)
        images = [f for f in files if suffix_of(f) in IMG_FORMATS]
        videos = [f for f in files if suffix_of(f) in VID_FORMATS]
        if not images and not videos:
            raise DatasetError(f"source {path}: no images or videos found. Supported formats are\n"
                               f"images: {', '.join(IMG_FORMATS)}\nvideos: {', '.join(VID_FORMATS)}")
        if vid_stride < 1:
            raise DatasetError(f"source {path}: --vid-stride must be >= 1, got {vid_stride}")
        self.files = images + videos
        self.nf, self.nv = len(self.files), len(videos)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, vid_stride
        self.mode, self.frame, self.frames = "image", 0, 0
        self.count, self.cap = 0, None

    def __len__(self) -> int:
        """Number of files (images + videos)."""
        return self.nf

    def __iter__(self) -> Iterator[Item]:
        """Start from the first file."""
        self.count = 0
        self._release()
        return self

    def __next__(self) -> Item:
        """Next image or video frame as (path, im, im0, cap, s)."""
        while self.count < self.nf:
            path = self.files[self.count]
            if self.video_flag[self.count]:
                item = self._next_frame(path)
            else:
                item = self._read_image(path)
            if item is not None:
                return item
        self._release()
        raise StopIteration

    def _read_image(self, path: str) -> Optional[Item]:
        """Read one image (None if cv2 cannot decode it: logged and skipped)."""
        self.count += 1
        self.mode, self.frame = "image", 0
        im0 = cv2.imread(path)
        if im0 is None:
            get_logger().warning(f"WARNING image {path}: cannot be read (corrupt or not an image), skipped")
            return None
        return path, self.transform(im0), im0, None, f"image {self.count}/{self.nf} {path}: "

    def _next_frame(self, path: str) -> Optional[Item]:
        """Read the next frame of the current video, opening it first; None when it ends (moves to the next file)."""
        if self.cap is None:
            self._open_video(path)
        if self.frame > 0:
            for _ in range(self.vid_stride - 1):
                self.cap.grab()
        ok, im0 = self.cap.read()
        if not ok or im0 is None:
            self.count += 1
            self._release()
            return None
        self.frame += 1
        video_no = self.count - (self.nf - self.nv) + 1
        s = f"video {video_no}/{self.nv} (frame {self.frame}/{self.frames}) {path}: "
        return path, self.transform(im0), im0, self.cap, s

    def _open_video(self, path: str) -> None:
        """Open a video file with cv2; DatasetError if it cannot be opened."""
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise DatasetError(f"video {path}: cannot be opened by OpenCV")
        self.cap, self.mode, self.frame = cap, "video", 0
        self.frames = math.ceil(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) / self.vid_stride)

    def _release(self) -> None:
        """Release the open video, if any."""
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def transform(self, im0: np.ndarray) -> np.ndarray:
        """The model input of a frame (see prepare_image)."""
        return prepare_image(im0, self.img_size, self.stride, self.auto)


class LoadStreams:
    """Read frames from one webcam (numeric source, e.g. '0') or stream URL, synchronously, until it ends.

    Yields the same (path, im, im0, cap, s) tuples as LoadImages; ``path`` is the source string.
    """

    def __init__(self, source: str = "0", img_size: Union[int, Sequence[int]] = 640, stride: int = 32,
                 auto: bool = True, vid_stride: int = 1):
        self.source = str(source).strip()
        target = int(self.source) if self.source.isnumeric() else self.source
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            kind = "webcam" if self.source.isnumeric() else "stream"
            raise DatasetError(f"{kind} {self.source}: cannot be opened by OpenCV")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, max(vid_stride, 1)
        self.mode, self.frame = "stream", 0

    def __len__(self) -> int:
        """One source."""
        return 1

    def __iter__(self) -> Iterator[Item]:
        """Frames come straight from the capture."""
        return self

    def __next__(self) -> Item:
        """Next frame as (source, im, im0, cap, s); StopIteration when the stream ends."""
        if self.frame > 0:
            for _ in range(self.vid_stride - 1):
                self.cap.grab()
        ok, im0 = self.cap.read()
        if not ok or im0 is None:
            self.cap.release()
            raise StopIteration
        self.frame += 1
        im = prepare_image(im0, self.img_size, self.stride, self.auto)
        return self.source, im, im0, self.cap, f"stream {self.source} (frame {self.frame}): "


def load_source(source: Union[str, Path, Sequence[Union[str, Path]]], img_size: Union[int, Sequence[int]] = 640,
                stride: int = 32, auto: bool = True, vid_stride: int = 1) -> Union[LoadImages, LoadStreams]:
    """LoadStreams for a webcam index or stream URL, LoadImages for everything else (including lists of paths)."""
    if isinstance(source, (str, Path)) and is_stream(source):
        return LoadStreams(str(source), img_size, stride, auto, vid_stride)
    return LoadImages(source, img_size, stride, auto, vid_stride)
