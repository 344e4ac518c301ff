"""COCO-format ground truth and detections, and bbox mAP by pycocotools (the reference implementation).

Image ids, as upstream YOLOv5 writes them: if every image file stem is a decimal integer and the stems are unique
(COCO's own ``000000000139.jpg``), the id is that integer; otherwise the file stem (``"maksssksksss12"``), or where
two files share a stem, the path below the images' common folder without its suffix (``"train/a"``). The rule is
applied to the whole list at once (``coco_image_ids``) so ground truth and detections always agree.
Category ids are the class indices (0-based); pass ``class_map`` to ``detections_to_coco`` and ``yolo_to_coco_gt`` to
use other ids (``COCO80_TO_91``: COCO's own 1-90 ids, which val.py uses for COCO val2017 as upstream does). Boxes
are COCO [x_top_left, y_top_left, width, height] in original-image pixels. Annotation ids start at 1 (pycocotools
treats id 0 as "unmatched").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

JsonLike = Union[dict, list, str, Path]
ImageId = Union[int, str]
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids of COCO's 91-category list without any annotation
COCO80_TO_91 = [i for i in range(1, 91) if i not in COCO_UNUSED_IDS]  # the 80 detection classes' category ids


def _pycocotools():
    """Import pycocotools lazily -> (COCO, COCOeval); a clear ImportError if it is missing."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from e
    return COCO, COCOeval


def coco_image_ids(im_files: Sequence[Union[str, Path]]) -> list[ImageId]:
    """Image ids for a list of files: the numeric stems if all are numeric and unique, else the stems if unique,
    else the paths below the files' common folder without suffix."""
    paths = [Path(f) for f in im_files]
    stems = [p.stem for p in paths]
    if stems and all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(root).with_suffix("").as_posix() for p in paths]


def yolo_to_coco_gt(im_files: Sequence[Union[str, Path]], labels: Sequence[np.ndarray], shapes: np.ndarray,
                    names: Union[Sequence[str], dict], class_map: Optional[Sequence[int]] = None) -> dict:
    """COCO ground-truth dict from YOLO labels: labels[i] (k, 5) cls, cx, cy, w, h normalized; shapes (n, 2) w, h.

    Keys: images (id, file_name, width, height), annotations (id, image_id, category_id, bbox xywh top-left pixels,
    area = w * h pixels, iscrowd 0), categories (id, name).
    """
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    cat_id = (lambda c: int(class_map[c])) if class_map is not None else int
    ids = coco_image_ids(im_files)
    images, annotations = [], []
    for f, img_id, lb, (w, h) in zip(im_files, ids, labels, np.asarray(shapes).reshape(-1, 2)):
        images.append({"id": img_id, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        lb = np.asarray(lb, dtype=float).reshape(-1, 5)
        for c, cx, cy, bw, bh in lb:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": cat_id(int(c)),
                                "bbox": [round(float(v), 3) for v in box], "area": round(float(box[2] * box[3]), 3),
                                "iscrowd": 0})
    categories = [{"id": cat_id(int(k)), "name": str(v)} for k, v in sorted(names.items())]
    return {"info": {"description": "YOLO labels converted to COCO"}, "images": images,
            "annotations": annotations, "categories": categories}


def detections_to_coco(detections: Union[torch.Tensor, np.ndarray], image_id: ImageId,
                       class_map: Optional[Sequence[int]] = None) -> list[dict]:
    """COCO results of one image from (n, 6) x1, y1, x2, y2, conf, cls in original-image pixels.

    Each dict: image_id, category_id, bbox [x, y, w, h] top-left pixels rounded to 3 decimals, score to 5.
    """
    d = detections.detach().cpu().float().numpy() if isinstance(detections, torch.Tensor) else np.asarray(detections)
    out = []
    for x1, y1, x2, y2, conf, c in d.reshape(-1, 6).astype(float):
        out.append({"image_id": image_id if isinstance(image_id, str) else int(image_id),
                    "category_id": int(class_map[int(c)]) if class_map is not None else int(c),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(conf, 5)})
    return out


def save_json(obj: Union[dict, list], path: Union[str, Path]) -> Path:
    """Write obj as JSON to path (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _load(obj: JsonLike):
    """A dict/list as is, or the parsed content of a JSON file path."""
    return json.loads(Path(obj).read_text()) if isinstance(obj, (str, Path)) else obj


def _is_val2017(entry: object) -> bool:
    """Whether a data YAML's split entry is COCO's val2017 list (upstream's test: it ends in coco/val2017.txt)."""
    return isinstance(entry, (str, Path)) and Path(entry).as_posix().endswith("coco/val2017.txt")


def is_coco_val(data: dict) -> bool:
    """Whether a data dict's val split is COCO val2017 (upstream's test: its entry ends in coco/val2017.txt)."""
    return _is_val2017(data.get("val"))


@dataclass
class CocoScoring:
    """How --save-json scores a split: category ids (None: the class indices) and the ground-truth file (None: the
    split's labels, converted)."""

    class_map: Optional[list[int]] = None
    annotations: Optional[Path] = None


def coco_scoring(data: dict, split: str, nc: int) -> CocoScoring:
    """COCO's 1-90 category ids for 80-class predictions on COCO data (upstream's test, ``is_coco_val``), and COCO's
    own instances_val2017.json where the split validated is val2017 itself and the file exists."""
    if not (is_coco_val(data) and nc == 80):  # other data, or --single-cls
        return CocoScoring()
    return CocoScoring(COCO80_TO_91, official_coco_annotations(data) if _is_val2017(data.get(split)) else None)


def official_coco_annotations(data: dict) -> Optional[Path]:
    """COCO's own instances_val2017.json under the data's path, where it is (upstream scores against it)."""
    f = Path(data.get("path") or ".") / "annotations" / "instances_val2017.json"
    return f if f.is_file() else None


def coco_evaluate(gt: JsonLike, dets: JsonLike, verbose: bool = False,
                  img_ids: Optional[Sequence[ImageId]] = None) -> tuple[float, float]:
    """Bbox mAP by pycocotools -> (mAP@0.5:0.95, mAP@0.5), over the images of gt (dict or JSON path), or over
    img_ids (those validated, when gt is a larger set such as COCO's own annotations).

    dets: list of result dicts or a JSON path. pycocotools' rules apply: at most 100 detections per image (highest
    scores), matching per detection in score order, area range "all". Returns (0.0, 0.0) when there is no detection;
    pycocotools' -1 (no ground truth at all) is passed through. Its printout is shown only when ``verbose``.
    """
    COCO, COCOeval = _pycocotools()  # noqa: N806
    gt, dets = _load(gt), [dict(d) for d in _load(dets)]  # loadRes adds keys to the dicts it gets
    if not dets:
        return 0.0, 0.0
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = sorted(img_ids if img_ids is not None else (img["id"] for img in gt["images"]))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])
