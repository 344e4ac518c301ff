"""utils/img_size.py: --imgsz rounded up to the model's largest stride, for square and [h, w] sizes."""

from __future__ import annotations

from utils.img_size import check_img_size


def test_a_square_size_rounds_up_to_the_stride_with_a_floor(logs):
    assert check_img_size(320, 32) == 320 and not logs
    assert check_img_size(300, 32) == 320 and check_img_size(10, 32, floor=64) == 64
    assert "--imgsz 300 must be a multiple of the max stride 32, using 320" in logs


def test_detect_sizes_are_height_and_width(logs):
    assert check_img_size([640], 32) == [640, 640] and not logs  # one value: a square
    assert check_img_size([480, 650], 32) == [480, 672]
    assert check_img_size((0, 0), 32, floor=32) == [32, 32]
    assert "--imgsz [480, 650] must be a multiple of the max stride 32, using [480, 672]" in logs
