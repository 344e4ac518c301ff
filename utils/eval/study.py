"""``val.py --task study``: each weights file validated over a range of image sizes, saved and plotted.

As upstream YOLOv5's study, each weights file gets ``study_<data stem>_<weights stem>.txt``: one row per image size
(256 to 1536 in steps of 128), ten columns P, R, mAP50, mAP50-95, three validation losses, and pre-process,
inference and NMS milliseconds per image (``np.savetxt``, so upstream's ``plot_val_study`` reads it too; a ``#``
header names the columns and sizes). ``study.png`` plots mAP50-95 against image size and against inference time,
one line per weights file. Every validation run keeps its own folder inside the study's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # upstream's x axis
COLUMNS = ("P", "R", "mAP50", "mAP50-95", "box_loss", "obj_loss", "cls_loss", "pre_ms", "inference_ms", "nms_ms")


def study_file(save_dir: Path, data: str | Path | dict, weights: str | Path) -> Path:
    """Where one weights file's rows go: study_<data stem>_<weights stem>.txt."""
    stem = Path(data.get("yaml_file") or "data").stem if isinstance(data, dict) else Path(str(data)).stem
    return Path(save_dir) / f"study_{stem}_{Path(weights).stem}.txt"


def run_study(run: Callable[..., tuple], weights: Sequence[str], data: str | Path | dict, save_dir: Path,
              sizes: Sequence[int] | None = None, **kwargs) -> dict[str, np.ndarray]:
    """Validate each weights file at each size with run(weights=, data=, imgsz=, project=, name=, **kwargs)
    (val.run's signature and result) -> {weights: (len(sizes), 10) rows}; writes the txt files and study.png."""
    save_dir, sizes = Path(save_dir), STUDY_SIZES if sizes is None else sizes
    save_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, np.ndarray] = {}
    for w in weights:
        out = []
        for size in tqdm(sizes, desc=f"study {Path(w).name}", unit="size"):
            results, _, times = run(weights=w, data=data, imgsz=size, project=save_dir,
                                    name=f"{Path(w).stem}_{size}", exist_ok=True, plots=False, **kwargs)
            out.append([*results, *times])
        rows[str(w)] = np.array(out, dtype=float)
        header = f"{' '.join(COLUMNS)}; one row per image size: {' '.join(map(str, sizes))}"
        np.savetxt(study_file(save_dir, data, w), rows[str(w)], fmt="%10.4g", header=header)
    plot_study(rows, sizes, save_dir / "study.png")
    return rows


def plot_study(rows: dict[str, np.ndarray], sizes: Sequence[int], path: Path) -> Path:
    """mAP50-95 against image size and against inference ms per image, one line per weights file."""
    from utils.plots import pyplot_agg, save_figure

    plt = pyplot_agg()
    fig, (by_size, by_time) = plt.subplots(1, 2, figsize=(11, 4), tight_layout=True)
    for w, r in rows.items():
        by_size.plot(sizes, r[:, 3], ".-", linewidth=2, markersize=8, label=Path(w).stem)
        by_time.plot(r[:, 8], r[:, 3], ".-", linewidth=2, markersize=8, label=Path(w).stem)
    by_size.set(xlabel="image size (pixels)", ylabel="mAP50-95", title="Accuracy by image size")
    by_time.set(xlabel="inference (ms per image)", ylabel="mAP50-95", title="Accuracy by speed")
    for ax in (by_size, by_time):
        ax.grid(alpha=0.2)
        ax.legend(loc="lower right")
    return save_figure(plt, fig, path, dpi=150)
