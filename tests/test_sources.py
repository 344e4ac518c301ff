"""Inference sources: image, folder (unreadable file skipped), glob, .txt list, video with vid_stride, streams."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import SHARED, needs_shared

from utils.deploy import sources
from utils.deploy.sources import (
    IMG_FORMATS,
    VID_FORMATS,
    LoadImages,
    LoadStreams,
    expand_source,
    is_stream,
    load_source,
)
from utils.errors import DatasetError

VIDEO = SHARED / "samples" / "vtest_30f.mp4"


@pytest.fixture
def images(tmp_path):
    """A folder with two small readable images (100x60 and 80x120, BGR) and one corrupt .jpg."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((60, 100, 3), (255, 0, 0), np.uint8))  # blue in BGR
    cv2.imwrite(str(folder / "b.png"), np.zeros((120, 80, 3), np.uint8))
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.md").write_text("ignored: not an image")
    return folder


def test_single_image_letterboxed_rgb_chw(images):
    items = list(LoadImages(images / "a.jpg", img_size=64, stride=32))
    assert len(items) == 1
    path, im, im0, cap, s = items[0]
    assert path.endswith("a.jpg") and cap is None and im0.shape == (60, 100, 3)
    assert im.dtype == np.uint8 and im.shape == (3, 64, 64) and im.flags["C_CONTIGUOUS"]
    assert im[2, 32, 32] > 200 and im[0, 32, 32] < 50  # blue moved to channel 2 (RGB)
    assert s.startswith("image 1/1 ") and s.endswith(": ")


def test_auto_pads_to_stride_only(images):
    _, im, *_ = next(iter(LoadImages(images / "a.jpg", img_size=128, stride=32, auto=True)))
    assert im.shape == (3, 96, 128)
    _, im, *_ = next(iter(LoadImages(images / "a.jpg", img_size=[64, 96], stride=32, auto=False)))
    assert im.shape == (3, 64, 96)


def test_folder_skips_unreadable_image_and_names_it(images, logs):
    loader = LoadImages(images, img_size=64)
    assert len(loader) == 3  # a.jpg, b.png, broken.jpg; notes.md is not an image
    paths = [p for p, *_ in loader]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.jpg", "b.png"]
    assert any("broken.jpg" in m and "skipped" in m for m in logs)


def test_glob_and_txt_list(images, tmp_path):
    assert [p.rsplit("/", 1)[-1] for p, *_ in LoadImages(str(images / "*.png"), img_size=64)] == ["b.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"imgs/b.png\n\n{images / 'a.jpg'}\n")  # relative to the list's folder, and absolute
    assert [p.rsplit("/", 1)[-1] for p, *_ in LoadImages(listing, img_size=64)] == ["b.png", "a.jpg"]
    assert len(expand_source([images / "a.jpg", str(images / "*.png")])) == 2


def test_paths_with_brackets_are_paths_hidden_files_are_skipped_and_a_list_may_start_with_a_bom(images, tmp_path):
    dated = tmp_path / "photos [2024]"
    images.rename(dated)
    (dated / "._a.jpg").write_bytes(b"macOS metadata")
    assert [p.rsplit("/", 1)[-1] for p in expand_source(dated)] == ["a.jpg", "b.png", "broken.jpg", "notes.md"]
    single = dated / "photo[1].jpg"
    (dated / "a.jpg").rename(single)
    assert expand_source(single) == [str(single)]  # not read as a glob pattern
    assert expand_source(str(tmp_path / "photos ?2024?" / "*.png")) == [str(dated / "b.png")]  # a pattern still is
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{single}\r\n".encode())  # as Notepad saves it
    assert expand_source(listing) == [str(single)]


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.jpg"):
        LoadImages(tmp_path / "nowhere.jpg")
    with pytest.raises(DatasetError, match="matches no file"):
        LoadImages(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images or videos") as e:
        LoadImages(tmp_path / "empty")
    assert "jpg" in str(e.value) and "mp4" in str(e.value)
    with pytest.raises(DatasetError, match="not downloaded"):
        LoadImages("https://example.com/bus.jpg")


def test_formats_and_stream_detection():
    assert "jpg" in IMG_FORMATS and "png" in IMG_FORMATS and "mp4" in VID_FORMATS
    assert is_stream("0") and is_stream("rtsp://cam/live") and not is_stream("video.mp4")
    assert not is_stream("https://host/x.jpg")


@needs_shared(VIDEO)
@pytest.mark.parametrize("vid_stride,frames", [(1, 30), (4, 8)])
def test_video_frames_with_vid_stride(vid_stride, frames):
    loader = LoadImages(VIDEO, img_size=64, vid_stride=vid_stride)
    items = list(loader)
    assert len(items) == frames == loader.frames
    path, im, im0, cap, s = items[-1]
    assert im0.shape == (576, 768, 3) and im.shape == (3, 64, 64) and cap is not None
    assert s.startswith(f"video 1/1 (frame {frames}/{frames}) ")
    assert loader.mode == "video"


@needs_shared(VIDEO)
def test_mixed_images_and_video(images):
    loader = LoadImages([images / "a.jpg", VIDEO], img_size=64, vid_stride=10)
    modes = [(s.split()[0], cap is None) for _, _, _, cap, s in loader]
    assert modes == [("image", True)] + [("video", False)] * 3


@needs_shared(VIDEO)
def test_load_streams_reads_until_end():
    stream = load_source(str(VIDEO), img_size=64)
    assert isinstance(stream, LoadImages)
    frames = list(LoadStreams(str(VIDEO), img_size=64, vid_stride=3))
    assert len(frames) == 10 and frames[0][4] == f"stream {VIDEO} (frame 1): "


def test_webcam_index_opens_capture_by_int(monkeypatch):
    opened = []

    class FakeCapture:
        def __init__(self, target):
            opened.append(target)

        def isOpened(self):  # noqa: N802 - cv2's name
            return False

    monkeypatch.setattr(sources.cv2, "VideoCapture", FakeCapture)
    with pytest.raises(DatasetError, match="webcam 0"):
        load_source("0")
    assert opened == [0]
