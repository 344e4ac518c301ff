"""utils/deploy/detection_writer.py: the per-image summary line and every file detect.py can save."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import torch

from utils.deploy.detection_writer import ResultWriter, crop_box, describe, save_one_box

NAMES = {0: "person", 1: "square", 5: "bus"}


def test_describe_counts_classes_with_plural():
    det = torch.tensor([[0, 0, 1, 1, 0.9, 0], [2, 2, 3, 3, 0.8, 0], [4, 4, 5, 5, 0.7, 5]])
    assert describe(det, NAMES) == "2 persons, 1 bus, "
    assert describe(torch.zeros(0, 6), NAMES) == "(no detections), "


def test_writer_saves_image_txt_csv_and_crop(tmp_path):
    im = np.full((100, 200, 3), 90, np.uint8)
    det = torch.tensor([[10.0, 20.0, 60.0, 80.0, 0.9, 1.0]])  # x1 y1 x2 y2 conf cls, image pixels
    w = ResultWriter(tmp_path, NAMES, save_img=True, save_txt=True, save_conf=True, save_csv=True, save_crop=True,
                     line_thickness=2, hide_labels=False, hide_conf=False)
    annotated = w.annotate(im, det)
    assert annotated.shape == im.shape and (annotated != im).any() and (im == 90).all()  # drawn on a copy
    w.write("some/dir/img.jpg", im, det, "image", 0, None, annotated)

    assert (tmp_path / "labels" / "img.txt").read_text() == "1 0.175 0.5 0.25 0.6 0.9\n"  # normalized xywh + conf
    rows = list(csv.reader((tmp_path / "predictions.csv").open()))
    assert rows == [["Image Name", "Prediction", "Confidence", "frame", "x1", "y1", "x2", "y2"],  # upstream's 3 first
                    ["img.jpg", "square", "0.9000", "0", "10.0", "20.0", "60.0", "80.0"]]
    crop = cv2.imread(str(tmp_path / "crops" / "square" / "img.jpg"))
    assert crop is not None and crop.shape[:2] == (71, 61)  # box 50x60 px, x1.02 + 10 px, clipped to the image
    assert cv2.imread(str(tmp_path / "img.jpg")).shape == im.shape


def test_crops_of_one_class_are_numbered_as_upstream(tmp_path):
    im = np.full((100, 200, 3), 90, np.uint8)
    box = torch.tensor([10.0, 20.0, 60.0, 80.0])
    assert crop_box(box, im.shape) == (4, 14, 65, 85)  # 50x60 px, x1.02 + 10 px around the centre (35, 50)
    files = [save_one_box(box, im, tmp_path / "crops" / "square" / "img.jpg") for _ in range(3)]
    assert [f.name for f in files] == ["img.jpg", "img-2.jpg", "img-3.jpg"]
    assert cv2.imread(str(files[1])).shape[:2] == (71, 61)


def test_writer_writes_video_frames_to_one_mp4(tmp_path):
    w = ResultWriter(tmp_path, NAMES, save_img=True, save_txt=True, save_conf=False, save_csv=False,
                     save_crop=False, line_thickness=1, hide_labels=True, hide_conf=True)
    frame = np.zeros((64, 96, 3), np.uint8)
    one_box = torch.tensor([[10.0, 20.0, 60.0, 50.0, 0.9, 1.0]])
    for i in range(3):
        w.write("clips/walk.mp4", frame, one_box if i == 1 else torch.zeros(0, 6), "video", i, None, frame)
    w.close()
    cap = cv2.VideoCapture(str(tmp_path / "walk.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    # one label file per frame with detections, none for empty frames (as YOLOv5)
    assert [f.name for f in (tmp_path / "labels").iterdir()] == ["walk_1.txt"] and w.n_txt == 1
