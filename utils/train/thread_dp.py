"""Data parallelism in threads on the CPU (``train.py --cpu-dp N``): one batch, N parts, one core each.

On a few-core CPU a small model's training step scales poorly over intra-op threads (yolov5n at 320, batch 16: 1.3x
from one core to two), while independent halves of the batch run side by side almost perfectly. So each batch is
split into N parts; part k runs forward, loss and backward in worker thread k with ``cores // N`` intra-op threads,
on a replica of the model that shares its parameters (``shared_replica``). What changes is what changes under
PyTorch DDP with N processes, and nothing more:

- BatchNorm normalises each part with that part's own statistics; the model's running statistics are part 0's
  (DDP's ``broadcast_buffers`` keeps rank 0's);
- each part has its own loss (``ComputeLoss`` per replica), so per-batch state such as Slide's mean IoU is per
  part, as it is per rank; the loss of part k carries its own batch-size factor, so their sum scales like one
  batch's, as upstream's ``loss * WORLD_SIZE`` under DDP's averaging does.

Gradients are summed in a fixed order (part 0 accumulates into ``.grad`` by its backward pass, the others are
returned by ``torch.autograd.grad`` and added afterwards), so two runs with the same seed give the same weights.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import Callable

import torch
from torch import nn

LossFn = Callable[[list, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PartFn = Callable[[nn.Module, LossFn, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def shared_replica(model: nn.Module) -> nn.Module:
    """A copy of model whose parameters are model's own tensors (one set of weights and gradients); buffers, such
    as BatchNorm's running statistics, are its own."""
    replica = deepcopy(model)
    originals = dict(model.named_modules())
    for name, module in replica.named_modules():
        for pname in list(module._parameters):
            module._parameters[pname] = originals[name]._parameters[pname]
    return replica


def split_targets(targets: torch.Tensor, bounds: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Targets (image index, class, x, y, w, h) of each image range [lo, hi), image indices made part-relative."""
    parts = []
    for lo, hi in bounds:
        t = targets[(targets[:, 0] >= lo) & (targets[:, 0] < hi)].clone()
        t[:, 0] -= lo
        parts.append(t)
    return parts


def part_bounds(bs: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) image ranges of n parts of a batch of bs images, sizes differing by at most one (none empty)."""
    n = min(n, bs)
    edges = [round(k * bs / n) for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


class ThreadDataParallel:
    """Runs each batch as N parts in N worker threads; ``losses`` then ``backward`` per batch (see the module)."""

    def __init__(self, model: nn.Module, n: int, loss: LossFn, loss_factory: Callable[[nn.Module], LossFn],
                 threads: int | None = None):
        self.model, self.n = model, n
        self.replicas = [model] + [shared_replica(model) for _ in range(n - 1)]
        self.loss_fns = [loss] + [loss_factory(r) for r in self.replicas[1:]]
        per_part = max(1, (threads or torch.get_num_threads()) // n)
        main_threads = torch.get_num_threads()
        # one single-thread executor per part, so part k always runs in the same thread with its intra-op setting
        self.pools = [ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(per_part,),
                                         thread_name_prefix=f"cpu-dp{k}") for k in range(n)]
        for f in [p.submit(torch.get_num_threads) for p in self.pools]:
            f.result()  # start the threads now
        torch.set_num_threads(main_threads)  # the main thread (validation) keeps its own
        self.per_part = per_part
        self._pending: list[tuple[torch.Tensor, int]] = []

    def losses(self, imgs: torch.Tensor, targets: torch.Tensor, part: PartFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and loss of every part in its thread: (sum of the parts' losses, items averaged by image count).

        ``part(model, loss_fn, imgs, targets)`` returns one part's (loss, items) as the single-process loop would.
        """
        for rep in self.replicas[1:]:
            rep.train(self.model.training)  # the replicas follow the model's mode (BatchNorm, Detect)
        bounds = part_bounds(imgs.shape[0], self.n)
        tparts = split_targets(targets, bounds)
        futures: list[Future] = [pool.submit(part, rep, fn, imgs[lo:hi], t) for pool, rep, fn, (lo, hi), t in
                                 zip(self.pools, self.replicas, self.loss_fns, bounds, tparts)]
        out = [f.result() for f in futures]
        self._pending = [(loss, hi - lo) for (loss, _), (lo, hi) in zip(out, bounds)]
        total = sum(loss.detach() for loss, _ in out)
        items = sum(it.detach() * (hi - lo) for (_, it), (lo, hi) in zip(out, bounds)) / imgs.shape[0]
        return total, items

    def backward(self) -> None:
        """Backward of every part from ``losses`` in its thread; part k > 0's gradients are added in order k."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        futures = [pool.submit(self._backward_part, loss, params, k == 0)
                   for k, (pool, (loss, _)) in enumerate(zip(self.pools, self._pending))]
        grads = [f.result() for f in futures]
        self._pending = []
        for part_grads in grads[1:]:
            for p, g in zip(params, part_grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g

    @staticmethod
    def _backward_part(loss: torch.Tensor, params: list[torch.Tensor], accumulate: bool) -> list | None:
        """Part 0: ``loss.backward()`` into ``.grad``; other parts: their gradients, returned."""
        if accumulate:
            loss.backward()
            return None
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    def close(self) -> None:
        """Stop the worker threads."""
        for pool in self.pools:
            pool.shutdown(wait=True)
