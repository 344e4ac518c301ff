"""Knowledge distillation from a trained teacher detector (``train.py --teacher yolov5n.pt``).

Objectness-scaled output distillation (Mehta & Ozturk 2018, "Object detection at 200 Frames Per Second",
arXiv 1805.06361, Sec. 3): the student's raw head outputs learn the teacher's on the same augmented batch, and the
class and box terms are weighted by the teacher's objectness, so the many background cells, where the teacher's
class and box outputs mean nothing, do not drown the few cells that hold objects. Per level l, with teacher
objectness o = sigmoid(t_obj) and KL(q || p) the element-wise Bernoulli divergence:

    obj_l = mean_cells KL(sigmoid(t_obj) || sigmoid(s_obj))
    cls_l = sum_cells o * mean_c KL(q_c || sigmoid(s_c)) / sum_cells o          (bce students; q the teacher's scores)
          = sum_cells o * KL(q || softmax(s)) / (nc sum_cells o)                (ce students, q a distribution)
    box_l = sum_cells o * |d(s) - d(t)|_1 / (4 sum_cells o),  d = (2 sigmoid(xy) - 0.5, (2 sigmoid(wh))^2)

    loss = distill_weight * (box_gain * sum_l box_l + obj_gain * sum_l balance_l obj_l + cls_gain * sum_l cls_l) * bs

with YOLOv5's level balance and gains: hyp.scratch-low's box 0.05, obj 1.0 and cls 0.5, scaled for levels, classes
and image size as the run's own gains are (``scale_loss_gains``), whatever the student's recipe. Recipes that re-tune
their obj or cls gain for a differently normalised loss (hyp.focal.yaml's obj is 35x smaller, hyp.centernet.yaml's
151x) would otherwise all but switch the distillation's objectness off; ``--distill-weight`` scales all three. The
ce class term is divided by nc as ComputeLoss's ce term is, and with one class there is no class term (as in
ComputeLoss). d is YOLOv5's box parameterisation in grid cells and anchor multiples, which is why teacher and student
must share strides and anchors: a student trained from scratch takes the teacher's anchors. KL rather than BCE
against soft targets: the gradient is the same and the logged term is 0 when the student matches the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.boxes import box_params
from utils.errors import CheckpointError, ConfigError
from utils.log import colorstr, get_logger
from utils.loss import level_balance
from utils.torch_utils import de_parallel


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(sigmoid(t) || sigmoid(s)) = BCE(s, q) - BCE(t, q) with q = sigmoid(t)."""
    q = teacher_logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(student_logits, q, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, q, reduction="none"))


def teacher_class_probs(t_cls: torch.Tensor, teacher_act: str, student_kind: str) -> torch.Tensor:
    """The teacher's class scores as the student's targets: per-class sigmoid or softmax, a distribution for ce."""
    q = t_cls.softmax(-1) if teacher_act == "softmax" else t_cls.sigmoid()
    return q / q.sum(-1, keepdim=True).clamp_min(1e-9) if student_kind == "ce" else q


def class_divergence(s_cls: torch.Tensor, q: torch.Tensor, student_kind: str) -> torch.Tensor:
    """Per-cell KL of the student's class scores from the targets q: mean over classes (bce), or categorical (ce)."""
    if student_kind == "ce":
        return (q * (q.clamp_min(1e-9).log() - s_cls.log_softmax(-1))).sum(-1)
    return (F.binary_cross_entropy_with_logits(s_cls, q, reduction="none")
            - F.binary_cross_entropy(q, q, reduction="none")).mean(-1)


REFERENCE_GAINS = {"box": 0.05, "obj": 1.0, "cls": 0.5}  # hyp.scratch-low's, before scale_loss_gains


def class_names(m: nn.Module) -> list[str]:
    """A model's class names as a list in class order (names may be a dict or a list)."""
    names = getattr(m, "names", None) or {}
    return [str(v) for _, v in sorted(names.items())] if isinstance(names, dict) else [str(v) for v in names]


def check_compatible(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """ConfigError unless both heads share classes (and their names), levels, anchors per level, strides, anchors."""
    from models.yolo import Detect

    if not isinstance(getattr(teacher, "model", [None])[-1], Detect):
        raise ConfigError(f"--teacher {source}: not a YOLOv5 detector (its model does not end in a Detect head)")
    t, s = teacher.model[-1], de_parallel(student).model[-1]
    problems = [f"{what} {a} (teacher) vs {b} (student)" for what, a, b in (
        ("classes", t.nc, s.nc), ("detection levels", t.nl, s.nl), ("anchors per cell", t.na, s.na),
        ("strides", [int(x) for x in t.stride], [int(x) for x in s.stride])) if a != b]
    if not problems and not torch.allclose(t.anchors.cpu().float(), s.anchors.cpu().float(), atol=1e-4):
        problems.append("anchors differ (train the student from scratch to take the teacher's, or with "
                        "--weights whose anchors match)")
    tn, sn = class_names(teacher), class_names(de_parallel(student))
    if not problems and tn and sn and tn != sn:
        problems.append(f"class names {tn} (teacher) vs {sn} (student)")
    if problems:
        raise ConfigError(f"--teacher {source}: the teacher's head does not match the student's: "
                          + "; ".join(problems))


def adopt_anchors(teacher: nn.Module, student: nn.Module) -> None:
    """Give a student built from scratch the teacher's anchors (grid units), when the two heads have equal shape."""
    t, s = teacher.model[-1], de_parallel(student).model[-1]
    if t.anchors.shape == s.anchors.shape:
        s.anchors.copy_(t.anchors.to(s.anchors))


class Distiller:
    """The distillation term of one training run: ``loss, items = distiller.loss(student_pred, teacher_pred)``.

    items is (3,) box, obj, cls, added to ComputeLoss's items so the progress bar and results.csv show the total.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, weight: float = 1.0, source: str = "teacher",
                 gains: tuple[float, float, float] | None = None) -> None:
        """gains: (box, obj, cls) of the three terms; None takes the student's hyp gains (make_distiller passes the
        reference gains scaled for the run)."""
        check_compatible(teacher, student, source)
        h = de_parallel(student).hyp
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher.model[-1].train()  # the head alone in training mode: raw maps, no box decode (it has no BN)
        self.weight = float(weight)
        self.gains = gains or (float(h["box"]), float(h["obj"]), float(h["cls"]))
        self.kind = h.get("cls_loss_type", "bce")
        self.nc = int(teacher.model[-1].nc)
        self.teacher_act = getattr(teacher.model[-1], "class_act", "sigmoid")
        self.balance = level_balance(teacher.model[-1].nl)

    @torch.no_grad()
    def teacher_outputs(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw head outputs (list of (bs, na, ny, nx, 5 + nc)) on a batch, without gradients."""
        return [x.float() for x in self.teacher(imgs)]

    def loss(self, pred: list[torch.Tensor], tpred: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The formula of the module docstring for student outputs pred and teacher outputs tpred."""
        dev = pred[0].device
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        for s, t, bal in zip(pred, tpred, self.balance):
            s = s.float()
            o = t[..., 4].sigmoid()
            norm = o.sum().clamp_min(1e-6)
            lobj = lobj + bal * bernoulli_kl(s[..., 4], t[..., 4]).mean()
            if self.nc > 1:
                q = teacher_class_probs(t[..., 5:], self.teacher_act, self.kind)
                per_cell = class_divergence(s[..., 5:], q, self.kind) / (self.nc if self.kind == "ce" else 1)
                lcls = lcls + (o * per_cell).sum() / norm
            lbox = lbox + (o * (box_params(s[..., :4]) - box_params(t[..., :4])).abs().mean(-1)).sum() / norm
        gb, go, gc = self.gains
        lbox, lobj, lcls = lbox * gb * self.weight, lobj * go * self.weight, lcls * gc * self.weight
        return (lbox + lobj + lcls) * pred[0].shape[0], torch.cat((lbox, lobj, lcls)).detach()


def reference_gains(nl: int, nc: int, imgsz: int) -> tuple[float, float, float]:
    """(box, obj, cls) of the distillation terms: hyp.scratch-low's gains scaled as the run's (scale_loss_gains)."""
    from utils.train.transfer import scale_loss_gains

    h = scale_loss_gains(REFERENCE_GAINS, nl, nc, imgsz)
    return float(h["box"]), float(h["obj"]), float(h["cls"])


def make_distiller(path: str, weight: float, student: nn.Module, device: torch.device, from_scratch: bool,
                   imgsz: int = 640, memory_format: torch.memory_format = torch.contiguous_format) -> Distiller:
    """Load the teacher checkpoint (FP32, fused, eval), match the student's anchors when it starts from scratch."""
    from utils.checkpoint import attempt_load

    if weight <= 0:
        raise ConfigError(f"--distill-weight {weight}: must be > 0 (leave out --teacher to train without one)")
    try:
        teacher = attempt_load(path, device).float().to(memory_format=memory_format)
    except CheckpointError as e:
        raise ConfigError(f"--teacher: {e}") from e
    if from_scratch:
        adopt_anchors(teacher, student)
    head = de_parallel(student).model[-1]
    distiller = Distiller(teacher, student, weight, source=path, gains=reference_gains(head.nl, head.nc, imgsz))
    get_logger().info(f"{colorstr('distillation:')} teacher {path}, weight {weight:g} (objectness-scaled output "
                      "distillation of box, objectness and class outputs)")
    return distiller
