"""Detection metrics: AP (COCO 101-point), per-class P/R/F1/AP, prediction-to-label matching, fitness, confusion matrix.

Box format everywhere here: xyxy pixels. Labels are (m, 5) rows cls, x1, y1, x2, y2; detections are (n, 6) rows
x1, y1, x2, y2, conf, cls as ``utils.nms.non_max_suppression`` returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from utils.boxes import box_iou

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Moving average of a 1-D curve with an odd box window of about f times its length, edges padded by replication.

    For the 1,000-point F1 curve and f=0.1 the window is 101 points, as YOLOv5 uses to pick the F1-optimal threshold.
    """
    half = int(round(len(y) * f)) // 2
    window = 2 * half + 1
    padded = np.pad(np.asarray(y, dtype=float), half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def _envelope(p: np.ndarray) -> np.ndarray:
    """Precision envelope p_interp(k) = max_{j >= k} p(j) of a (k,) curve (running max from the right)."""
    return np.flip(np.maximum.accumulate(np.flip(p)))


def compute_ap(recall: np.ndarray, precision: np.ndarray, method: str = "interp"
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class from (k,) recall and precision in descending-confidence order -> (ap, mpre, mrec).

    101-point interpolated AP (Lin et al., "Microsoft COCO", 2014) at r = 0, 0.01, ..., 1 of the precision envelope
    p_interp(r) = max_{r' >= r} p(r'). mrec, mpre: the curve with sentinels, for plotting.

    method "interp" (default, YOLOv5's rule): add sentinels (recall 0, precision 1) and, when recall stops short of
    1, (recall 1, precision 0); sample the envelope by linear interpolation and integrate with the trapezoidal rule.
    Unlike upstream, no (1, 0) sentinel is added when recall reaches 1, so a perfect detector scores 1.0, not 0.995.
    The linear ramp from the last point down to (1, 0) adds (1 - r_last) * p_last / 2 that COCO does not count:
    negligible at conf_thres 0.001 (p_last ~ 0) but large when few low-score predictions are kept.
    method "coco" (pycocotools' rule): the mean of the 101 samples of a step function, the envelope at the first
    point with recall >= r and 0 beyond the last recall; no sentinels.
    """
    recall, precision = np.asarray(recall, dtype=float), np.asarray(precision, dtype=float)
    mrec, mpre = np.concatenate(([0.0], recall)), np.concatenate(([1.0], precision))
    if mrec[-1] < 1.0:
        mrec, mpre = np.append(mrec, 1.0), np.append(mpre, 0.0)
    mpre = _envelope(mpre)
    x = np.linspace(0, 1, 101)
    if method == "interp":
        return float(_trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec
    if method == "coco":
        if not len(recall):
            return 0.0, mpre, mrec
        env, idx = _envelope(precision), np.searchsorted(recall, x, side="left")
        q = np.where(idx < len(recall), env[np.minimum(idx, len(recall) - 1)], 0.0)
        return float(q.mean()), mpre, mrec
    raise ValueError(f"compute_ap method must be 'interp' or 'coco', got {method!r}")


def _call(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs): the inline stand-in for ``PlotJobs.run``."""
    return fn(*args, **kwargs)


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, plot: bool = False,
                 save_dir: Path = Path("."), names: Optional[dict] = None, eps: float = 1e-16, prefix: str = "",
                 ap_method: str = "interp", jobs: Any = None) -> tuple[np.ndarray, ...]:
    """Per-class metrics from matched predictions -> (tp, fp, p, r, f1, ap, unique_classes).

    tp (n, t) bool: prediction i is correct at IoU threshold t (``process_batch``); conf (n,), pred_cls (n,) of the
    predictions of the whole dataset; target_cls (m,) classes of all labels. Only classes with at least one label are
    reported (c of them, sorted): ap is (c, t); p, r, f1, tp, fp are (c,) at IoU 0.5 and at one confidence shared by
    all classes, the one that maximises the mean F1 curve after a box filter of ~10 % of its 1,000 points (``smooth``).
    A class without predictions gets zeros, not NaN. With ``plot``, PR/F1/P/R curves are written to save_dir, through
    ``jobs.run(fn, *args)`` when jobs is given (``utils.eval.plot_jobs.PlotJobs``: drawn in worker processes).
    ap_method: "interp" (YOLOv5) or "coco" (pycocotools' integration), see ``compute_ap``.
    """
    tp, conf, pred_cls = np.asarray(tp, dtype=float), np.asarray(conf, dtype=float), np.asarray(pred_cls)
    tp = tp[:, None] if tp.ndim == 1 else tp
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    unique_classes, nt = np.unique(np.asarray(target_cls), return_counts=True)
    nc, nt_iou = unique_classes.shape[0], tp.shape[1]
    if nc == 0:
        z = np.zeros(0)
        return z, z, z, z, z, np.zeros((0, nt_iou)), unique_classes.astype(int)

    px = np.linspace(0, 1, 1000)
    ap, p, r, py = np.zeros((nc, nt_iou)), np.zeros((nc, 1000)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        if not i.any():
            continue
        tpc, fpc = tp[i].cumsum(0), (1 - tp[i]).cumsum(0)
        recall = tpc / (nt[ci] + eps)
        precision = tpc / (tpc + fpc)
        # curves against confidence (x reversed so np.interp sees increasing abscissae)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(nt_iou):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j], ap_method)
            if j == 0:
                py[ci] = np.interp(px, mrec, mpre)  # precision at recall px, for the PR plot

    f1 = 2 * p * r / (p + r + eps)
    if plot:
        from utils.plots import plot_mc_curve, plot_pr_curve

        names = names or {}
        present = {k: names.get(int(c), str(int(c))) for k, c in enumerate(unique_classes)}
        save_dir, run = Path(save_dir), (jobs.run if jobs is not None else _call)
        run(plot_pr_curve, px, py, ap, save_dir / f"{prefix}PR_curve.png", present)
        run(plot_mc_curve, px, f1, save_dir / f"{prefix}F1_curve.png", present, ylabel="F1")
        run(plot_mc_curve, px, p, save_dir / f"{prefix}P_curve.png", present, ylabel="Precision")
        run(plot_mc_curve, px, r, save_dir / f"{prefix}R_curve.png", present, ylabel="Recall")

    k = int(smooth(f1.mean(0), 0.1).argmax())
    p, r, f1 = p[:, k], r[:, k], f1[:, k]
    tp_count = (r * nt).round()
    fp_count = (tp_count / (p + eps) - tp_count).round()
    return tp_count, fp_count, p, r, f1, ap, unique_classes.astype(int)


def _greedy_match(iou: torch.Tensor, allowed: torch.Tensor) -> np.ndarray:
    """One-to-one matches (k, 2) label index, detection index from (m, n) IoU where ``allowed``, highest IoU first.

    Equivalent to walking all allowed pairs by IoU descending and keeping a pair when neither side is taken yet;
    done in rounds, each keeping every pair that is the best remaining one for both its label and its detection.
    Ties break by lower detection index (higher confidence), then lower label index.
    """
    li, di = torch.nonzero(allowed, as_tuple=True)
    li, di = li.cpu().numpy(), di.cpu().numpy()
    vals = iou[allowed].cpu().numpy() if li.size else np.zeros(0)
    order = np.lexsort((li, di, -vals))  # last key is primary: IoU desc, then det, then label
    li, di = li[order], di[order]
    matches = []
    while li.size:
        first_l = np.unique(li, return_index=True)[1]
        first_d = np.unique(di, return_index=True)[1]
        mutual = np.intersect1d(first_l, first_d)  # positions best for both sides
        matches.append(np.stack((li[mutual], di[mutual]), 1))
        keep = ~(np.isin(li, li[mutual]) | np.isin(di, di[mutual]))
        li, di = li[keep], di[keep]
    return np.concatenate(matches, 0) if matches else np.zeros((0, 2), dtype=int)


def _match_coco(iou: np.ndarray, conf: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """COCO rule on (m, n) same-class IoU, (n,) conf, (t,) thresholds -> (n, t) bool true positives.

    As pycocotools' ``evaluateImg``, at each threshold independently: detections in descending confidence each claim
    the free label of highest IoU, if that IoU >= the threshold.
    """
    correct = np.zeros((iou.shape[1], thr.shape[0]), dtype=bool)
    order = np.argsort(-conf, kind="stable")
    candidates = order[iou[:, order].max(0) >= thr.min()]  # only boxes that can match at all
    claimed = np.zeros((iou.shape[0], thr.shape[0]), dtype=bool)  # label claimed at threshold j
    for d in candidates:
        ok = (iou[:, d, None] >= thr) & ~claimed  # (m, t) labels still free and close enough
        best = np.where(ok, iou[:, d, None], -1.0).argmax(0)  # highest-IoU free label per threshold
        hit = ok.any(0)
        claimed[best[hit], hit] = True
        correct[d, hit] = True
    return correct


def _match_yolov5(iou: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """YOLOv5 v7 rule on (m, n) same-class IoU of detections in NMS order, (t,) thresholds -> (n, t) bool.

    At each threshold: every detection keeps only its highest-IoU label (IoU >= threshold); each label then goes to the
    first detection (highest confidence) that kept it. A detection whose best label went elsewhere does not fall back
    to its second-best label, the one way this differs from the COCO rule.
    """
    correct = np.zeros((iou.shape[1], thr.shape[0]), dtype=bool)
    for j, th in enumerate(thr):
        ok = iou >= th
        dets = np.nonzero(ok.any(0))[0]  # ascending index = NMS (confidence) order
        if dets.size:
            best = np.where(ok[:, dets], iou[:, dets], -1.0).argmax(0)
            correct[dets[np.unique(best, return_index=True)[1]], j] = True
    return correct


def process_batch(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor, rule: str = "coco"
                  ) -> torch.Tensor:
    """Correctness of (n, 6) xyxy detections against (m, 5) cls+xyxy labels at each IoU in iouv (t,) -> (n, t) bool.

    Detections and labels pair one-to-one within a class, at each threshold independently. rule "coco" (default)
    is pycocotools' greedy matching in confidence order (``_match_coco``); rule "yolov5" reproduces upstream val.py
    (``_match_yolov5``; expects NMS order). Both let the best-scored box take a label, so AP is not lost to a
    lower-scored box of higher IoU; they differ only when a box's best label is taken and another one is free.
    """
    n, t = detections.shape[0], iouv.shape[0]
    if rule not in ("coco", "yolov5"):
        raise ValueError(f"process_batch rule must be 'coco' or 'yolov5', got {rule!r}")
    if not n or not labels.shape[0]:
        return torch.zeros((n, t), dtype=torch.bool, device=iouv.device)
    iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())
    same = (labels[:, 0:1] == detections[:, 5]).cpu().numpy()
    iou = np.where(same, iou.cpu().numpy(), -1.0)  # -1: never a match across classes
    thr = iouv.cpu().numpy()
    correct = _match_coco(iou, detections[:, 4].cpu().numpy(), thr) if rule == "coco" else _match_yolov5(iou, thr)
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


def fitness(x: Union[np.ndarray, Sequence[float]]) -> np.ndarray:
    """Model fitness of (n, >=4) rows [P, R, mAP50, mAP50-95, ...] -> (n,): 0.1 * mAP50 + 0.9 * mAP50-95."""
    x = np.asarray(x, dtype=float)
    x = x.reshape(-1, x.shape[-1])
    return x[:, :4] @ np.array([0.0, 0.0, 0.1, 0.9])


class ConfusionMatrix:
    """(nc + 1) x (nc + 1) counts: rows = predicted class, columns = true class; index nc is background.

    Column nc counts false positives (a detection matched to no label), row nc false negatives (a label matched by no
    detection). Detections below ``conf`` are ignored; pairing is one-to-one and class-agnostic at IoU > ``iou_thres``,
    highest IoU first (``_greedy_match``), so a well-placed box of the wrong class lands in that class's row.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        """Create an empty matrix for nc classes."""
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: Optional[torch.Tensor], labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) xyxy, conf, cls or None; labels (m, 5) cls, xyxy."""
        gt_cls = labels[:, 0].long().tolist() if labels is not None and len(labels) else []
        if detections is None or not len(detections):
            for gc in gt_cls:
                self.matrix[self.nc, gc] += 1
            return
        detections = detections[detections[:, 4] > self.conf]
        det_cls = detections[:, 5].long().tolist()
        if gt_cls:
            iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())
            m = _greedy_match(iou, iou > self.iou_thres)
        else:
            m = np.zeros((0, 2), dtype=int)
        label_to_det = dict(zip(m[:, 0].tolist(), m[:, 1].tolist()))
        for li, gc in enumerate(gt_cls):
            row = det_cls[label_to_det[li]] if li in label_to_det else self.nc
            self.matrix[row, gc] += 1
        matched = set(label_to_det.values())
        for di, dc in enumerate(det_cls):
            if di not in matched:
                self.matrix[dc, self.nc] += 1

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true and false positive counts (nc,), (nc,) from the matrix (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, normalize: bool = True, save_dir: Union[str, Path] = "", names: Sequence[str] = ()) -> Path:
        """Write confusion_matrix.png to save_dir (a heatmap; columns normalized to 1 when ``normalize``)."""
        from utils.plots import plot_confusion_matrix

        return plot_confusion_matrix(self.matrix, Path(save_dir) / "confusion_matrix.png", names, normalize)
