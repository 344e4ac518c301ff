"""Knowledge distillation from a trained teacher detector (``train.py --teacher yolov5n.pt``).

Objectness-scaled output distillation (Mehta & Ozturk 2018, "Object detection at 200 Frames Per Second",
arXiv 1805.06361, Sec. 3): the student's raw head outputs learn the teacher's on the same augmented batch, and the
class and box terms are weighted by the teacher's objectness, so the many background cells, where the teacher's
class and box outputs mean nothing, do not drown the few cells that hold objects. Per level l, with teacher
objectness o = sigmoid(t_obj) and KL(q || p) the Bernoulli divergence summed over nothing but the one output:

    obj_l = mean_cells KL(sigmoid(t_obj) || sigmoid(s_obj))
    cls_l = sum_cells o * mean_c KL(q_c || sigmoid(s_c)) / sum_cells o          (bce students; q the teacher's scores)
          = sum_cells o * KL(q || softmax(s)) / sum_cells o                     (ce students, q a distribution)
    box_l = sum_cells o * |d(s) - d(t)|_1 / (4 sum_cells o),  d = (2 sigmoid(xy) - 0.5, (2 sigmoid(wh))^2)

    loss = distill_weight * (box_gain * sum_l box_l + obj_gain * sum_l balance_l obj_l + cls_gain * sum_l cls_l) * bs

with YOLOv5's gains and level balance, so the distillation terms are on the scale of the ground-truth terms they are
added to. d is YOLOv5's box parameterisation in grid cells and anchor multiples, which is why teacher and student
must share strides and anchors: a student trained from scratch takes the teacher's anchors. KL rather than BCE
against soft targets: the gradient is the same and the logged term is 0 when the student matches the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError
from utils.log import colorstr, get_logger
from utils.loss import level_balance
from utils.torch_utils import de_parallel


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(sigmoid(t) || sigmoid(s)) = BCE(s, q) - BCE(t, q) with q = sigmoid(t)."""
    q = teacher_logits.sigmoid()
    return (F.binary_cross_entropy_with_logits(student_logits, q, reduction="none")
            - F.binary_cross_entropy_with_logits(teacher_logits, q, reduction="none"))


def box_params(raw: torch.Tensor) -> torch.Tensor:
    """YOLOv5's box outputs (..., 4) in grid cells and anchor multiples: (2 sig(xy) - 0.5, (2 sig(wh))^2)."""
    y = raw.sigmoid() * 2
    return torch.cat((y[..., :2] - 0.5, y[..., 2:] ** 2), -1)


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


def check_compatible(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """ConfigError unless both heads share classes, levels, anchors per level, strides and anchors."""
    t, s = teacher.model[-1], de_parallel(student).model[-1]
    problems = [f"{what} {a} (teacher) vs {b} (student)" for what, a, b in (
        ("classes", t.nc, s.nc), ("detection levels", t.nl, s.nl), ("anchors per cell", t.na, s.na),
        ("strides", [int(x) for x in t.stride], [int(x) for x in s.stride])) if a != b]
    if not problems and not torch.allclose(t.anchors.cpu().float(), s.anchors.cpu().float(), atol=1e-4):
        problems.append("anchors differ (train the student from scratch to take the teacher's, or with "
                        "--weights whose anchors match)")
    if problems:
        raise ConfigError(f"--teacher {source}: the teacher's head does not match the student's: "
                          + "; ".join(problems))


def adopt_anchors(teacher: nn.Module, student: nn.Module) -> None:
    """Give a student built from scratch the teacher's anchors (grid units), when the two heads have equal shape."""
    t, s = teacher.model[-1], de_parallel(student).model[-1]
    if t.anchors.shape == s.anchors.shape:
        s.anchors.copy_(t.anchors.to(s.anchors))


class Distiller:
    """The distillation term of one training run: ``loss, items = distiller(imgs, student_pred)``.

    items is (3,) box, obj, cls, added to ComputeLoss's items so the progress bar and results.csv show the total.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, weight: float = 1.0, source: str = "teacher"):
        check_compatible(teacher, student, source)
        h = de_parallel(student).hyp
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = float(weight)
        self.gains = (float(h["box"]), float(h["obj"]), float(h["cls"]))
        self.kind = h.get("cls_loss_type", "bce")
        self.teacher_act = getattr(teacher.model[-1], "class_act", "sigmoid")
        self.balance = level_balance(teacher.model[-1].nl)

    @torch.no_grad()
    def teacher_outputs(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's raw head outputs (list of (bs, na, ny, nx, 5 + nc)) on a batch, without gradients."""
        return [x.float() for x in self.teacher(imgs)[1]]

    def __call__(self, imgs: torch.Tensor, pred: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted distillation loss * bs, detached (box, obj, cls) items) for the student's raw outputs pred."""
        return self.loss(pred, self.teacher_outputs(imgs))

    def loss(self, pred: list[torch.Tensor], tpred: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The formula of the module docstring for student outputs pred and teacher outputs tpred."""
        dev = pred[0].device
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        for s, t, bal in zip(pred, tpred, self.balance):
            s = s.float()
            o = t[..., 4].sigmoid()
            norm = o.sum().clamp_min(1e-6)
            lobj = lobj + bal * bernoulli_kl(s[..., 4], t[..., 4]).mean()
            q = teacher_class_probs(t[..., 5:], self.teacher_act, self.kind)
            lcls = lcls + (o * class_divergence(s[..., 5:], q, self.kind)).sum() / norm
            lbox = lbox + (o * (box_params(s[..., :4]) - box_params(t[..., :4])).abs().mean(-1)).sum() / norm
        gb, go, gc = self.gains
        lbox, lobj, lcls = lbox * gb * self.weight, lobj * go * self.weight, lcls * gc * self.weight
        return (lbox + lobj + lcls) * pred[0].shape[0], torch.cat((lbox, lobj, lcls)).detach()


def make_distiller(path: str, weight: float, student: nn.Module, device: torch.device, from_scratch: bool,
                   memory_format: torch.memory_format = torch.contiguous_format) -> Distiller:
    """Load the teacher checkpoint (FP32, fused, eval), match the student's anchors when it starts from scratch."""
    from utils.checkpoint import attempt_load

    if weight <= 0:
        raise ConfigError(f"--distill-weight {weight}: must be > 0 (leave out --teacher to train without one)")
    teacher = attempt_load(path, device).float().to(memory_format=memory_format)
    if from_scratch:
        adopt_anchors(teacher, student)
    distiller = Distiller(teacher, student, weight, source=path)
    get_logger().info(f"{colorstr('distillation:')} teacher {path}, weight {weight:g} (objectness-scaled output "
                      "distillation of box, objectness and class outputs)")
    return distiller
