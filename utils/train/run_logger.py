"""TensorBoard event files of a training run (``torch.utils.tensorboard``, the ``tensorboard`` package).

Each epoch the main process writes the row it appends to results.csv (train losses, P, R, mAP50, mAP50-95, val
losses, learning rates) as scalars under YOLOv5's names, with the epoch as the step; at the end of the run the
result images (results.png, PR and F1 curves, confusion matrix) go in as images. ``tensorboard --logdir runs/train``
shows them. A resumed run appends a new event file to the same folder; TensorBoard merges them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from utils.log import get_logger
from utils.train.results import RESULT_COLUMNS, results_row

RESULT_IMAGES = ("results.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png")


class TensorBoardLogger:
    """Scalars per epoch and result images at the end, in ``save_dir``; a no-op if tensorboard is missing."""

    def __init__(self, save_dir: str | Path, start_epoch: int = 0):
        """start_epoch > 0 (a resumed run): events of that epoch and later, written before the interruption, are
        purged, so no epoch appears twice."""
        self.save_dir = Path(save_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is in requirements.txt; a bare install still trains
            get_logger().warning(f"TensorBoard logging off: {e} (pip install tensorboard)")
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(self.save_dir), purge_step=start_epoch or None)

    def epoch(self, epoch: int, train_loss: Sequence[float], val_results: Sequence[float],
              lrs: Sequence[float]) -> None:
        """The results.csv row of an epoch, one scalar per column."""
        if self.writer is None:
            return
        row = results_row(epoch, train_loss, val_results, lrs)
        for name, value in zip(RESULT_COLUMNS[1:], row[1:]):
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def images(self, epoch: int) -> list[str]:
        """Add the run's result images that exist (HWC uint8); returns the names added."""
        if self.writer is None:
            return []
        import cv2

        added = []
        for name in RESULT_IMAGES:
            f = self.save_dir / name
            im = cv2.imread(str(f)) if f.is_file() else None
            if im is not None:
                self.writer.add_image(Path(name).stem, np.ascontiguousarray(im[..., ::-1]), epoch, dataformats="HWC")
                added.append(name)
        self.writer.flush()
        return added

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
