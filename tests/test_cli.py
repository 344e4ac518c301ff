"""utils/cli.py: the help text of the entry points shows defaults where they tell the user something."""

from __future__ import annotations

import argparse

import pytest

from utils.cli import DefaultsHelpFormatter


def test_help_appends_only_informative_defaults():
    p = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    p.add_argument("--imgsz", type=int, default=640, help="image size")
    p.add_argument("--device", default="", help="cuda device or cpu")
    p.add_argument("--half", action="store_true", help="FP16 inference")
    p.add_argument("--epochs", type=int, default=None, help="epochs (100; 40 on the built-in data)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU (default 0.45, as YOLOv5)")
    p.add_argument("--seed", type=int, default=0, help="global seed")
    text = " ".join(p.format_help().split())
    assert "image size (default: 640)" in text and "(default: 0.45)" not in text
    assert "default: )" not in text and "default: False" not in text and "default: None" not in text
    assert "global seed (default: 0)" in text  # 0 is a default, though it equals False
    assert text.count("default") == 3  # --imgsz's, --seed's, and --iou's own words


@pytest.mark.parametrize("script", ["train", "val", "detect", "export"])
def test_every_entry_point_uses_it(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.parse_opt(["-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert script == "train" or "(default: " in text
