"""Hyperparameter files: the schema of every key, loading and validation with errors that name file and key.

A hyp file holds YOLOv5's keys (optimizer, loss gains, augmentation) plus this project's loss options:
``slide_ratio`` (Slide Loss blend), ``fl_gamma`` / ``fl_alpha`` (Focal Loss), ``cls_loss_type`` (bce | ce),
``loss_norm``, ``cls_weights`` (class-balanced weights), ``slide_mu``, ``obj_loss_type``, ``heatmap_peak``,
``heatmap_target``, ``heatmap_alpha`` / ``heatmap_beta`` (CornerNet's exponents) and ``box_l1``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.errors import ConfigError
from utils.paths import project_candidates


@dataclass(frozen=True)
class Key:
    """One hyperparameter: allowed range (or choices), default when optional, and what it does."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = False  # True: value must be < high (else <= high)
    choices: tuple[str, ...] | None = None
    default: Any = None
    required: bool = True
    integer: bool = False
    sequence: bool = False  # True: a list of numbers in the range (or null)

    def allowed(self) -> str:
        """Human-readable allowed values, e.g. '[0, 1]', '> 0', 'one of bce, ce'."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.sequence:
            return f"a list of numbers {Key(self.help, self.low, self.high, self.low_open, self.high_open).allowed()}"
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return "a number"


def _r(help_: str, low=None, high=None, **kw) -> Key:
    """Shorthand for a required numeric key."""
    return Key(help_, low, high, **kw)


def _o(help_: str, default, low=None, high=None, **kw) -> Key:
    """Shorthand for an optional key with a default."""
    return Key(help_, low, high, default=default, required=False, **kw)


SCHEMA: dict[str, Key] = {
    "lr0": _r("initial learning rate (SGD 1e-2, Adam 1e-3)", 0, None, low_open=True),
    "lrf": _r("final learning rate as a fraction of lr0", 0, 1, low_open=True),
    "momentum": _r("SGD momentum / Adam beta1", 0, 1, high_open=True),
    "weight_decay": _r("optimizer weight decay", 0),
    "warmup_epochs": _r("warmup epochs (fractions ok)", 0),
    "warmup_momentum": _r("warmup initial momentum", 0, 1, high_open=True),
    "warmup_bias_lr": _r("warmup initial bias lr", 0),
    "box": _r("box loss gain", 0),
    "cls": _r("cls loss gain", 0),
    "cls_pw": _r("cls BCE positive weight", 0, low_open=True),
    "obj": _r("obj loss gain (scales with pixels)", 0),
    "obj_pw": _r("obj BCE positive weight", 0, low_open=True),
    "iou_t": _r("IoU training threshold (unused, kept for YOLOv5 files)", 0, 1),
    "anchor_t": _r("anchor-multiple threshold for target assignment", 1, low_open=True),
    "fl_gamma": _r("focal loss gamma (0 = off; EfficientDet default 1.5)", 0),
    "hsv_h": _r("image HSV-Hue augmentation (fraction)", 0, 1),
    "hsv_s": _r("image HSV-Saturation augmentation (fraction)", 0, 1),
    "hsv_v": _r("image HSV-Value augmentation (fraction)", 0, 1),
    "degrees": _r("image rotation (+/- deg)", 0, 180),
    "translate": _r("image translation (+/- fraction)", 0, 1),
    "scale": _r("image scale (+/- gain)", 0, 1, high_open=True),
    "shear": _r("image shear (+/- deg)", 0, 90),
    "perspective": _r("image perspective (+/- fraction), range 0-0.001", 0, 0.001),
    "flipud": _r("image flip up-down (probability)", 0, 1),
    "fliplr": _r("image flip left-right (probability)", 0, 1),
    "mosaic": _r("image mosaic (probability)", 0, 1),
    "mixup": _r("image mixup (probability)", 0, 1),
    "copy_paste": _o("segment copy-paste (probability; needs segments, so a no-op on box labels)", 0.0, 0, 1),
    "anchors": _o("anchors per output level (AutoAnchor recomputes them)", None, 1, None, integer=True),
    "label_smoothing": _o("label smoothing epsilon (set from --label-smoothing)", 0.0, 0, 1, high_open=True),
    "slide_ratio": _o("Slide Loss blend: 0 = off, 1 = the paper (YOLO-FaceV2)", 0.0, 0, 1),
    "fl_alpha": _o("focal loss alpha (positive-class weight), used when fl_gamma > 0", 0.25, 0, 1,
                   low_open=True, high_open=True),
    "cls_loss_type": _o("class loss: bce (sigmoid, multi-label) or ce (softmax, mutually exclusive)", "bce",
                        choices=("bce", "ce")),
    "fl_type": _o("focal modulation when fl_gamma > 0: focal (RetinaNet, alpha_t (1 - p_t)^gamma) or quality "
                  "(GFL's |t - p|^gamma, for the IoU-valued objectness targets)", "focal",
                  choices=("focal", "quality")),
    "loss_norm": _o("reduction of the obj and cls terms: mean (YOLOv5), pos (/ positives, RetinaNet) or weighted "
                    "(/ sum of the weights)", "mean", choices=("mean", "pos", "weighted")),
    "cls_weights": _o("per-class weights of the class term from the training labels: none, inverse (1/n_c) or "
                      "effective (Cui et al. 2019)", "none", choices=("none", "inverse", "effective")),
    "cls_weights_beta": _o("beta of the effective-number class weights", 0.999, 0, 1, low_open=True, high_open=True),
    "cls_weights_values": _o("the class weights in use (written by train.py from the training labels)", None, 0,
                             None, low_open=True, sequence=True),
    "slide_mu": _o("Slide threshold mu per level: batch (the paper) or ema (moving average, kept on --resume)",
                   "batch", choices=("batch", "ema")),
    "obj_loss_type": _o("objectness loss: bce (YOLOv5) or gaussian_focal (CenterNet heatmap focal loss)", "bce",
                        choices=("bce", "gaussian_focal")),
    "heatmap_peak": _o("cells at 1 in the gaussian_focal heatmap: assigned (every YOLOv5-assigned cell) or centre "
                       "(only the cell holding the object's centre, as CenterNet)", "assigned",
                       choices=("assigned", "centre")),
    "heatmap_target": _o("target of the gaussian_focal positives: one (CornerNet) or iou (their box's CIoU, as "
                         "YOLOv5's objectness, with Quality Focal Loss)", "one", choices=("one", "iou")),
    "heatmap_alpha": _o("CornerNet's alpha in the gaussian_focal loss: the focal exponent on (1 - p) at the positives "
                        "and on p at the negatives", 2.0, 0),
    "heatmap_beta": _o("CornerNet's beta in the gaussian_focal loss: the exponent of (1 - y), the penalty reduction "
                       "of negatives near a centre", 4.0, 0),
    "box_l1": _o("gain of an L1 term on the positives' box regression (0 = off)", 0.0, 0),
}

LOSS_KEYS = ("slide_ratio", "fl_gamma", "fl_alpha", "fl_type", "cls_loss_type", "loss_norm", "cls_weights",
             "cls_weights_beta", "slide_mu", "obj_loss_type", "heatmap_peak", "heatmap_target",
             "heatmap_alpha", "heatmap_beta", "box_l1")


def _yaml_number(value: Any) -> Any:
    """A float written without a dot in its mantissa ('1e-3'), which YAML 1.1 loads as a string, as that float."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def _check_value(name: str, key: Key, value: Any, source: str) -> Any:
    """Return value if it fits key's range or choices; else raise ConfigError naming source and key."""
    where = f"{source}: '{name}'"
    if key.choices:
        if value not in key.choices:
            raise ConfigError(f"{where} is {value!r}, allowed values: {key.allowed()}")
        return value
    if value is None and not key.required:
        return value
    if key.sequence:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where} is {value!r}, expected {key.allowed()}")
        item = Key(key.help, key.low, key.high, key.low_open, key.high_open)
        return [_check_value(f"{name}[{i}]", item, v, source) for i, v in enumerate(value)]
    value = _yaml_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} is {value!r}, expected a number {key.allowed()}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} is {value!r}, expected a finite number {key.allowed()}")
    if key.integer and value != int(value):
        raise ConfigError(f"{where} is {value!r}, expected an integer {key.allowed()}")
    too_low = key.low is not None and (value <= key.low if key.low_open else value < key.low)
    too_high = key.high is not None and (value >= key.high if key.high_open else value > key.high)
    if too_low or too_high:
        raise ConfigError(f"{where} is {value!r}, allowed range: {key.allowed()}")
    return value


def _with_suggestions(unknown: list) -> str:
    """The unknown keys quoted, each followed by the closest known key when one is close (a misspelling)."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(SCHEMA), n=1)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(parts)


def validate_hyp(hyp: dict, source: str = "hyp", require_all: bool = True) -> dict:
    """Return a validated copy of hyp with optional keys filled in.

    Raises ConfigError naming source and key for an unknown key, a missing required key (when require_all)
    or a value out of range.
    """
    if not isinstance(hyp, dict):
        raise ConfigError(f"{source}: expected a mapping of hyperparameters, got {type(hyp).__name__}")
    unknown = sorted(set(hyp) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {_with_suggestions(unknown)}; allowed keys: "
                          f"{', '.join(SCHEMA)}")
    out = {}
    for name, key in SCHEMA.items():
        if name in hyp:
            out[name] = _check_value(name, key, hyp[name], source)
        elif key.required and require_all:
            raise ConfigError(f"{source}: missing required key '{name}' ({key.help}, {key.allowed()})")
        elif not key.required:
            out[name] = key.default
    return out


def load_hyp(path: str | Path | dict) -> dict:
    """Load and validate a hyp YAML file (or a dict); every problem is a ConfigError naming the file and key."""
    if isinstance(path, dict):
        return validate_hyp(path, source="hyp dict")
    candidates = project_candidates(path, "data/hyps")  # so the default and bare names work from any directory
    p = next((c for c in candidates if c.is_file()), None)
    if p is None:
        looked = list(map(str, dict.fromkeys(candidates)))
        where = f" (looked at {', '.join(looked)})" if looked != [str(path)] else ""  # an absolute path: no echo
        raise ConfigError(f"hyp file {path}: file not found{where}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"hyp file {p}: not valid YAML ({e})") from e
    return validate_hyp(data, source=f"hyp file {p}")


def check_hyp_for_classes(hyp: dict, nc: int, source: str = "hyp") -> None:
    """ConfigError naming source when hyp cannot train nc classes: ce with one class, or cls_weights_values that do
    not give one weight per class."""
    if hyp.get("cls_loss_type") == "ce" and nc < 2:
        raise ConfigError(f"{source}: 'cls_loss_type' ce needs at least 2 classes and this run has {nc} (single-class "
                          "data or --single-cls), where softmax cross-entropy is identically zero; use bce")
    values = hyp.get("cls_weights_values")  # used only by cls_weights inverse / effective
    if values is not None and hyp.get("cls_weights", "none") != "none" and len(values) != nc:
        raise ConfigError(f"{source}: 'cls_weights_values' has {len(values)} values, one per class is needed and "
                          f"this run has {nc} classes")
