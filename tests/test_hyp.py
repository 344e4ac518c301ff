"""Hyperparameter files: shipped files load; each mistake is an error naming the file, key and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.errors import ConfigError
from utils.train.hyp import SCHEMA, load_hyp

HYPS = Path(__file__).resolve().parents[1] / "data" / "hyps"


@pytest.mark.parametrize("name", ["scratch-low", "scratch-med", "scratch-high", "slide", "focal", "ce",
                                  "slide-focal-ce"])
def test_shipped_hyp_files_are_valid_and_complete(name):
    hyp = load_hyp(HYPS / f"hyp.{name}.yaml")
    assert set(hyp) == set(SCHEMA)


def test_yolov5_values_and_option_files():
    low = load_hyp(HYPS / "hyp.scratch-low.yaml")
    assert (low["lr0"], low["box"], low["cls"], low["obj"], low["anchor_t"], low["mosaic"]) == (0.01, 0.05, 0.5, 1.0,
                                                                                                  4.0, 1.0)
    assert (low["slide_ratio"], low["fl_gamma"], low["fl_alpha"], low["cls_loss_type"]) == (0.0, 0.0, 0.25, "bce")
    med = load_hyp(HYPS / "hyp.scratch-med.yaml")
    assert (med["lrf"], med["cls"], med["obj"], med["scale"], med["mixup"]) == (0.1, 0.3, 0.7, 0.9, 0.1)
    assert load_hyp(HYPS / "hyp.scratch-high.yaml")["copy_paste"] == 0.1


RECIPES = {  # every loss recipe is scratch-low with exactly these changes
    "slide": {"slide_ratio": 1.0},
    "slide-ema": {"slide_ratio": 1.0, "slide_mu": "ema"},
    "focal": {"fl_gamma": 1.5, "loss_norm": "weighted", "obj": 0.0288, "cls": 0.265},
    "ce": {"cls_loss_type": "ce"},
    "ce-balanced": {"cls_loss_type": "ce", "cls_weights": "effective", "loss_norm": "weighted"},
    "centernet": {"obj_loss_type": "gaussian_focal", "obj": 0.0054, "heatmap_alpha": 0.0},
    "box-l1": {"box": 0.0333, "box_l1": 0.002},
    "slide-focal-ce": {"slide_ratio": 1.0, "fl_gamma": 1.5, "cls_loss_type": "ce", "loss_norm": "weighted",
                       "obj": 0.022, "cls": 0.28},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_loss_recipes_change_only_their_keys(name):
    low = load_hyp(HYPS / "hyp.scratch-low.yaml")
    recipe = load_hyp(HYPS / f"hyp.{name}.yaml")
    assert {k: v for k, v in recipe.items() if low[k] != v} == RECIPES[name]


def test_bare_name_resolves_in_data_hyps():
    assert load_hyp("hyp.slide.yaml")["slide_ratio"] == 1.0


def test_project_relative_path_works_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # train.py's default --hyp is data/hyps/hyp.scratch-low.yaml, relative to the project
    assert load_hyp("data/hyps/hyp.slide.yaml")["slide_ratio"] == 1.0
    with pytest.raises(ConfigError, match=r"looked at nope\.yaml, .*data/hyps/nope\.yaml"):
        load_hyp("nope.yaml")
    with pytest.raises(ConfigError, match=r"file not found$"):  # an absolute path is looked for there only
        load_hyp(tmp_path / "gone.yaml")


def write_hyp(tmp_path: Path, **changes) -> Path:
    """scratch-low with changes (a value of None deletes the key), written to tmp_path/hyp.yaml."""
    data = yaml.safe_load((HYPS / "hyp.scratch-low.yaml").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    path = tmp_path / "hyp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_choice_names_file_key_and_allowed_values(tmp_path):
    path = write_hyp(tmp_path, cls_loss_type="softmax")
    with pytest.raises(ConfigError, match=r"hyp\.yaml: 'cls_loss_type' is 'softmax', allowed values: one of bce, ce"):
        load_hyp(path)


def test_out_of_range_names_file_key_and_range(tmp_path):
    with pytest.raises(ConfigError, match=r"hyp\.yaml: 'slide_ratio' is 2, allowed range: \[0, 1\]"):
        load_hyp(write_hyp(tmp_path, slide_ratio=2))
    with pytest.raises(ConfigError, match=r"'fl_alpha' is 1.0, allowed range: \(0, 1\)"):
        load_hyp(write_hyp(tmp_path, fl_alpha=1.0))
    with pytest.raises(ConfigError, match=r"'fl_gamma' is -1"):
        load_hyp(write_hyp(tmp_path, fl_gamma=-1))
    with pytest.raises(ConfigError, match=r"'lr0' is 'fast', expected a number"):
        load_hyp(write_hyp(tmp_path, lr0="fast"))
    for bad in (float("nan"), float("inf")):  # YAML's .nan and .inf
        with pytest.raises(ConfigError, match=rf"'lr0' is {bad}, expected a finite number > 0"):
            load_hyp(write_hyp(tmp_path, lr0=bad))


def test_an_exponent_without_a_dot_is_a_number(tmp_path):
    f = tmp_path / "adam.yaml"  # YAML 1.1 reads 1e-3 (no dot) as a string; the hyp files' comments write it so
    f.write_text(write_hyp(tmp_path).read_text().replace("lr0: 0.01", "lr0: 1e-3"))
    assert "lr0: 1e-3" in f.read_text() and load_hyp(f)["lr0"] == 0.001


@pytest.mark.parametrize("key, value, message", [
    ("loss_norm", "median", r"'loss_norm' is 'median', allowed values: one of mean, pos, weighted"),
    ("cls_weights", "sqrt", r"'cls_weights' is 'sqrt', allowed values: one of none, inverse, effective"),
    ("cls_weights_beta", 1.0, r"'cls_weights_beta' is 1.0, allowed range: \(0, 1\)"),
    ("cls_weights_values", [1.0, -2.0], r"'cls_weights_values\[1\]' is -2.0, allowed range: > 0"),
    ("cls_weights_values", 3.0, r"'cls_weights_values' is 3.0, expected a list of numbers > 0"),
    ("fl_type", "varifocal", r"'fl_type' is 'varifocal', allowed values: one of focal, quality"),
    ("slide_mu", "median", r"'slide_mu' is 'median', allowed values: one of batch, ema"),
    ("obj_loss_type", "focal", r"'obj_loss_type' is 'focal', allowed values: one of bce, gaussian_focal"),
    ("heatmap_peak", "peak", r"'heatmap_peak' is 'peak', allowed values: one of assigned, centre"),
    ("heatmap_target", "soft", r"'heatmap_target' is 'soft', allowed values: one of one, iou"),
    ("heatmap_alpha", -1.0, r"'heatmap_alpha' is -1.0, allowed range: >= 0"),
    ("heatmap_beta", "four", r"'heatmap_beta' is 'four', expected a number"),
    ("box_l1", -0.1, r"'box_l1' is -0.1, allowed range: >= 0")])
def test_phase2_loss_keys_are_validated(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=r"hyp\.yaml: " + message):
        load_hyp(write_hyp(tmp_path, **{key: value}))


def test_phase2_loss_keys_default_to_yolov5(tmp_path):
    hyp = load_hyp(HYPS / "hyp.scratch-low.yaml")
    assert (hyp["loss_norm"], hyp["cls_weights"], hyp["slide_mu"], hyp["obj_loss_type"], hyp["box_l1"]) == (
        "mean", "none", "batch", "bce", 0.0)
    assert hyp["cls_weights_values"] is None and hyp["cls_weights_beta"] == 0.999 and hyp["heatmap_peak"] == "assigned"
    assert hyp["heatmap_target"] == "one" and (hyp["heatmap_alpha"], hyp["heatmap_beta"]) == (2.0, 4.0)
    assert load_hyp(write_hyp(tmp_path, cls_weights_values=[0.5, 2]))["cls_weights_values"] == [0.5, 2]


def test_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"hyp\.yaml: unknown key\(s\) 'foo_bar'; allowed keys: lr0"):
        load_hyp(write_hyp(tmp_path, foo_bar=1.0))


def test_misspelled_key_names_the_key_it_resembles(tmp_path):
    """A misspelling is named with the known key it is closest to, before the long list of allowed keys."""
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'fl_gama' \(did you mean 'fl_gamma'\?\), 'slide_raito' "
                                          r"\(did you mean 'slide_ratio'\?\); allowed keys: lr0"):
        load_hyp(write_hyp(tmp_path, slide_raito=1.0, fl_gama=1.5))


def test_missing_required_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"hyp\.yaml: missing required key 'anchor_t'"):
        load_hyp(write_hyp(tmp_path, anchor_t=None))


def test_missing_optional_keys_get_defaults(tmp_path):
    hyp = load_hyp(write_hyp(tmp_path, slide_ratio=None, fl_alpha=None, cls_loss_type=None, copy_paste=None))
    assert (hyp["slide_ratio"], hyp["fl_alpha"], hyp["cls_loss_type"], hyp["copy_paste"]) == (0.0, 0.25, "bce", 0.0)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_hyp(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr0: [0.01\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_hyp(bad)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"lr0: \xff\xfe\x00")
    with pytest.raises(ConfigError, match="binary.yaml: not valid YAML"):
        load_hyp(binary)


CONTROLS = {  # benchmarks/hyps: a recipe that differs from a shipped one only in its obj and cls gains
    "slide-gain-control": ("scratch-low", {"obj": 1.31, "cls": 0.78}),  # raised by Slide's gradient ratios
    "focal-v1": ("focal", {"obj": 0.022, "cls": 0.17}),  # hyp.focal.yaml before its gains were raised by them
}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_gain_controls_change_only_the_gains(name):
    base, changes = CONTROLS[name]
    control = load_hyp(HYPS.parents[1] / "benchmarks" / "hyps" / f"hyp.{name}.yaml")
    assert {k: v for k, v in control.items() if load_hyp(HYPS / f"hyp.{base}.yaml")[k] != v} == changes


def test_class_count_checks_name_the_source_and_ignore_unused_weights():
    from utils.train.hyp import check_hyp_for_classes

    hyp = load_hyp("hyp.ce.yaml")
    with pytest.raises(ConfigError, match=r"my.yaml: 'cls_loss_type' ce needs at least 2 classes and this run has 1"):
        check_hyp_for_classes(hyp, 1, "my.yaml")
    check_hyp_for_classes(hyp, 2, "my.yaml")
    weighted = {**load_hyp("hyp.scratch-low.yaml"), "cls_weights": "inverse", "cls_weights_values": [1.0, 2.0]}
    with pytest.raises(ConfigError, match=r"my.yaml: 'cls_weights_values' has 2 values, .* this run has 3 classes"):
        check_hyp_for_classes(weighted, 3, "my.yaml")
    check_hyp_for_classes({**weighted, "cls_weights": "none"}, 3, "my.yaml")  # values a run's hyp.yaml kept, unused
