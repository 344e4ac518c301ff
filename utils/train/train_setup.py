"""One training run from resolved train.py options: config, data, model, loaders, optimizer, then the epoch loop.

``run_training(opt, device, env)`` is what ``train.py`` calls once the command line, ``--resume`` and DDP are settled.
The steps, each a function here: validate the hyp file and data YAML and fill size defaults (``setup_run``), build or
transfer the model (``prepare_model``), the loaders (``make_loaders``), AutoAnchor and label plots, the optimizer
plan (``plan_run_optimizer``, writes hyp.yaml and opt.yaml) and the trainable state (``make_state``), then
``trainer.fit`` and ``trainer.finish``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import yaml
from torch.optim.lr_scheduler import LambdaLR

from models import bn_silu
from utils.data.data_config import check_dataset
from utils.data.dataset import create_dataloader
from utils.data.quad import GROUP, QUAD_LOSS_GAIN
from utils.errors import ConfigError
from utils.img_size import check_img_size
from utils.log import colorstr, get_logger
from utils.loss import ComputeLoss, describe_loss
from utils.loss_terms import class_balance_weights, class_counts
from utils.paths import increment_path, write_atomic
from utils.torch_utils import training_autocast, training_memory_format
from utils.train import dist
from utils.train.autoanchor import check_anchors
from utils.train.distill import Distiller, make_distiller
from utils.train.ema import ModelEMA
from utils.train.engine import EpochConfig, TrainState
from utils.train.hyp import check_hyp_for_classes, load_hyp, validate_hyp
from utils.train.interrupt import InterruptGuard, TrainingInterrupted, resume_hint
from utils.train.optim import (
    AUTO,
    OptimizerPlan,
    Warmup,
    accumulate_steps,
    build_optimizer,
    build_scheduler,
    plan_optimizer,
    scaled_weight_decay,
    warmup_iterations,
)
from utils.train.results import keep_results_before
from utils.train.run_logger import TensorBoardLogger
from utils.train.thread_dp import ThreadDataParallel
from utils.train.trainer import RunContext, fit_and_finish, load_val_module, restore_state
from utils.train.transfer import build_model, freeze_layers, scale_loss_gains

DEFAULTS = {"epochs": 100, "batch_size": 16, "imgsz": 640, "optimizer": "SGD"}  # YOLOv5's
BUILTIN_DEFAULTS = {"epochs": 40, "batch_size": 16, "imgsz": 320, "optimizer": AUTO}  # built-in data, 2 CPU cores
DEFAULT_CFG = "yolov5n.yaml"  # used when neither --cfg nor --weights is given
TEST_HOOKS = ("stop_after", "weights_hash")  # hidden options for tests, never saved or inherited on --resume


def run_defaults(opt: argparse.Namespace, data: dict) -> dict:
    """--epochs/--batch-size/--imgsz/--optimizer as a run on data uses them: as given, else CPU-sized for the
    built-in dataset, else YOLOv5's values."""
    defaults = BUILTIN_DEFAULTS if data.get("generate") else DEFAULTS
    return {k: v if getattr(opt, k, None) is None else getattr(opt, k) for k, v in defaults.items()}


def fill_defaults(opt: argparse.Namespace, data: dict) -> None:
    """Set --epochs/--batch-size/--imgsz/--optimizer left unset (``run_defaults``) and check the options."""
    for key, value in run_defaults(opt, data).items():
        setattr(opt, key, value)
    if opt.epochs < 1:
        raise ConfigError(f"--epochs {opt.epochs}: train for at least one epoch")
    if opt.batch_size < 1:
        get_logger().warning(f"--batch-size {opt.batch_size}: automatic batch size (AutoBatch) is not built, using 16 "
                             "(what upstream uses on a CPU)")
        opt.batch_size = 16
    if not opt.cfg and not opt.weights:
        opt.cfg = DEFAULT_CFG
    if not getattr(opt, "teacher", "") and getattr(opt, "distill_weight", None) is not None and not opt.resume:
        raise ConfigError(f"--distill-weight {opt.distill_weight} needs --teacher (the model to distil from)")
    if getattr(opt, "teacher", ""):  # absolute in opt.yaml, so --resume finds it from any folder
        if not Path(opt.teacher).is_file():
            raise ConfigError(f"--teacher {opt.teacher}: file not found")
        opt.teacher = str(Path(opt.teacher).resolve())


def prepare_save_dir(opt: argparse.Namespace, env: dist.DistEnv) -> Path:
    """The run folder (runs/train/exp{N}; kept on resume), made by the main process and shared with the others."""
    if not opt.resume and env.is_main:
        opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    opt.save_dir = dist.broadcast_object(getattr(opt, "save_dir", None))
    save_dir = Path(opt.save_dir)
    if env.is_main:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    return save_dir


def save_run_config(save_dir: Path, opt: argparse.Namespace, hyp: dict) -> None:
    """Write hyp.yaml and opt.yaml (the resolved options, hyp included) into the run folder."""
    write_atomic(save_dir / "hyp.yaml", yaml.safe_dump(hyp, sort_keys=False))
    saved = {k: v for k, v in vars(opt).items() if k not in TEST_HOOKS}
    write_atomic(save_dir / "opt.yaml", yaml.safe_dump(saved, sort_keys=False))  # --resume reads it


def init_seeds(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_info(data: dict, single_cls: bool) -> tuple[int, dict]:
    """(nc, names) of the dataset, or one class 'item' with --single-cls."""
    if single_cls:
        return 1, (data["names"] if data["nc"] == 1 else {0: "item"})
    return data["nc"], data["names"]


# Training on the CPU, the dataloader workers share the cores with the training threads; at normal priority the
# kernel's scheduler lets them preempt a training thread mid-step, and with --cpu-dp's parts (or intra-op threads)
# the others then wait for it at the next join. At nice 19 they run in the cores' idle moments instead, with a few
# batches queued ahead (docs/PERFORMANCE.md, "Dataloader workers at low priority").
LOADER_NICE = 19


def loader_nice(opt: argparse.Namespace, device: torch.device | None) -> int:
    """The training dataloader workers' niceness: ``--loader-nice``, else LOADER_NICE on the CPU and 0 elsewhere."""
    nice = getattr(opt, "loader_nice", None)  # an opt.yaml from before the option has none
    if nice is not None:
        if nice < 0:
            raise ConfigError(f"--loader-nice {nice}: must be 0 or more (it lowers the workers' priority)")
        return nice
    return LOADER_NICE if device is not None and device.type == "cpu" else 0


def make_loaders(opt: argparse.Namespace, data: dict, hyp: dict, imgsz: int, batch: int, grid: int,
                 env: dist.DistEnv, worker_nice: int = 0) -> tuple:
    """(train loader, train dataset, val loader or None): augmented shuffled training (--quad: in groups of four),
    rect validation (main, never quad); the training loader's workers run at worker_nice (``loader_nice``)."""
    nc, names = class_info(data, opt.single_cls)
    with dist.main_first(env):
        loader, dataset = create_dataloader(data["train"], imgsz, batch, grid, opt.single_cls, hyp=hyp, augment=True,
                                            cache=opt.cache, rect=opt.rect, rank=env.rank, workers=opt.workers,
                                            prefix=colorstr("train: "), shuffle=True, seed=opt.seed, nc=nc,
                                            names=names, image_weights=getattr(opt, "image_weights", False),
                                            worker_nice=worker_nice, quad=getattr(opt, "quad", False))
    val_loader = None
    if env.is_main:
        val_loader, _ = create_dataloader(data["val"], imgsz, batch * 2, grid, opt.single_cls, hyp=hyp,
                                          cache=None if opt.noval else opt.cache, rect=True, rank=-1,
                                          workers=opt.workers * 2, pad=0.5, prefix=colorstr("val: "), nc=nc,
                                          names=names)
    return loader, dataset, val_loader


def apply_class_weights(opt: argparse.Namespace, hyp: dict, model: torch.nn.Module, labels: list) -> None:
    """cls_weights inverse/effective: per-class weights from the training labels' class counts, computed once.

    The values go into hyp (hyp.yaml and the checkpoint), opt.hyp (opt.yaml, so --resume reuses them) and model.hyp
    (the loss). Values already present (a resumed run, or given in the hyp file) are kept.
    """
    if hyp["cls_weights"] == "none" or hyp.get("cls_weights_values") is not None:
        return
    counts = class_counts(labels, model.nc)
    values = [round(v, 6) for v in class_balance_weights(counts, hyp["cls_weights"], hyp["cls_weights_beta"])]
    get_logger().info(f"{colorstr('class weights:')} {hyp['cls_weights']} from {sum(counts)} boxes: " + ", ".join(
        f"{model.names[c]} {n} -> {w:.3g}" for c, (n, w) in enumerate(zip(counts, values))))
    for h in (hyp, opt.hyp, model.hyp):
        h["cls_weights_values"] = values


def prepare_model(opt: argparse.Namespace, hyp: dict, data: dict, device: torch.device) -> tuple:
    """Model (built or transferred, frozen layers, scaled hyp attached), checkpoint or None, imgsz, grid size."""
    nc, names = class_info(data, opt.single_cls)
    model, ckpt = build_model(opt.cfg, opt.weights, nc, device, hyp.get("anchors"), resume=opt.resume)
    freeze_layers(model, opt.freeze)
    model.to(memory_format=training_memory_format(device))
    grid = max(int(model.stride.max()), 32)
    imgsz = check_img_size(opt.imgsz, grid, floor=grid * 2)
    model.nc, model.names = nc, names
    model.hyp = scale_loss_gains(hyp, model.model[-1].nl, nc, imgsz)
    return model, ckpt, imgsz, grid


def setup_run(opt: argparse.Namespace, env: dist.DistEnv) -> tuple[dict, dict, ModuleType | None, Path]:
    """Validate hyp and data, fill size defaults, make the run folder -> (hyp, data, val module, run folder)."""
    hyp, source = load_hyp(opt.hyp), f"hyp file {opt.hyp}" if isinstance(opt.hyp, (str, Path)) else "hyp"
    if getattr(opt, "label_smoothing", None) is not None:  # the flag wins over the hyp file, checked as a hyp key
        hyp = validate_hyp({**hyp, "label_smoothing": opt.label_smoothing}, source="--label-smoothing")
    opt.hyp = dict(hyp)  # saved in opt.yaml (and hyp.yaml), so --resume finds the same values
    val = load_val_module()
    if val is None and not opt.noval:
        raise ConfigError("train: val.py is missing from the project, per-epoch validation needs it "
                          "(train with --noval to skip validation)")
    with dist.main_first(env):
        data = check_dataset(opt.data)
    check_hyp_for_classes(hyp, 1 if opt.single_cls else int(data["nc"]), source)  # before any scan or folder
    fill_defaults(opt, data)
    if opt.batch_size % env.world_size:
        raise ConfigError(f"--batch-size {opt.batch_size} must be a multiple of the {env.world_size} DDP processes")
    check_quad_batch(opt, env.world_size)
    save_dir = prepare_save_dir(opt, env)
    return hyp, data, val, save_dir


def check_quad_batch(opt: argparse.Namespace, world_size: int = 1) -> None:
    """--quad: ConfigError unless each process's batch (--batch-size / DDP processes) is a multiple of 4."""
    per_process = opt.batch_size // world_size
    if getattr(opt, "quad", False) and per_process % GROUP:
        ddp = f" ({per_process} per DDP process)" if world_size > 1 else ""
        fits = max(GROUP, per_process // GROUP * GROUP) * world_size
        raise ConfigError(f"--quad groups each batch's images in fours: --batch-size {opt.batch_size}{ddp} is not a "
                          f"multiple of {GROUP}; use e.g. --batch-size {fits}")


def plan_run_optimizer(opt: argparse.Namespace, hyp: dict, nb: int, save_dir: Path,
                       env: dist.DistEnv) -> OptimizerPlan:
    """Resolve --optimizer for this run's length; the main process logs the hyperparameters and saves the config."""
    plan = plan_optimizer(opt.optimizer, hyp, opt.epochs * nb, opt.batch_size)
    if env.is_main:
        if plan.reason:
            get_logger().info(f"{colorstr('optimizer:')} auto -> {plan.reason}")
        get_logger().info(colorstr("hyperparameters: ") + ", ".join(f"{k}={v}" for k, v in plan.hyp.items()))
        save_run_config(save_dir, opt, plan.hyp)
    return plan


def make_state(opt: argparse.Namespace, plan: OptimizerPlan, model: torch.nn.Module, nb: int,
               device: torch.device, env: dist.DistEnv) -> tuple[TrainState, LambdaLR]:
    """Optimizer (as planned, scaled decay), LR schedule, warmup, EMA (main process), AMP scaler, loss."""
    hyp = plan.hyp
    accumulate = accumulate_steps(opt.batch_size, plan.nominal)
    decay = scaled_weight_decay(hyp["weight_decay"], opt.batch_size, accumulate, plan.nominal)
    optimizer = build_optimizer(model, plan.name, hyp["lr0"], hyp["momentum"], decay)
    scheduler = build_scheduler(optimizer, opt.epochs, hyp["lrf"], opt.cos_lr)
    warmup = Warmup(warmup_iterations(hyp["warmup_epochs"], nb), hyp, scheduler.lr_lambdas[0], opt.batch_size,
                    plan.nominal)
    state = TrainState(model, optimizer, ComputeLoss(model), warmup, accumulate,
                       ema=ModelEMA(model) if env.is_main else None,
                       scaler=torch.amp.GradScaler("cuda") if device.type == "cuda" else None,
                       rng=random.Random(opt.seed + max(env.rank, 0)))
    return state, scheduler


def prepare_anchors_and_plots(opt: argparse.Namespace, hyp: dict, model: torch.nn.Module, dataset,
                              imgsz: int, save_dir: Path) -> None:
    """Main process, new runs: AutoAnchor check (unless --noautoanchor) and labels.jpg (unless --noplots)."""
    if getattr(opt, "teacher", ""):
        get_logger().info("AutoAnchor skipped: with --teacher the student keeps the teacher's anchors")
    elif not opt.noautoanchor:
        check_anchors(dataset, model, thr=hyp["anchor_t"], imgsz=imgsz, seed=opt.seed)
    if not opt.noplots:
        from utils.plots import plot_labels

        labels = np.concatenate([lb.reshape(-1, 5) for lb in dataset.labels], 0)
        plot_labels(labels, model.names, save_dir)


def make_run_distiller(opt: argparse.Namespace, model: torch.nn.Module, device: torch.device,
                       imgsz: int) -> Distiller | None:
    """--teacher: the run's Distiller (a student from scratch takes the teacher's anchors), else None."""
    if not getattr(opt, "teacher", ""):
        return None
    weight = 1.0 if opt.distill_weight is None else opt.distill_weight
    return make_distiller(opt.teacher, weight, model, device, from_scratch=not opt.weights,
                          imgsz=imgsz, memory_format=training_memory_format(device))


CPU_DP_AUTO = "auto"
AUTO_PART_IMAGES = 8  # auto's smallest part: 8 images of 16, the split docs/ablation/CONFIRM_CPU_DP.md checked


def check_cpu_dp(opt: argparse.Namespace) -> int | str:
    """--cpu-dp's number of parts (1: off) or "auto"; ConfigError for anything else."""
    n = getattr(opt, "cpu_dp", 1)
    n = 1 if n is None else n
    if isinstance(n, str):
        n = n.strip().lower()
        n = int(n) if n.isdigit() else n
    if n == CPU_DP_AUTO:
        return n
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"--cpu-dp {n}: the number of batch parts must be 'auto' or an integer of at least 1")
    return n


def auto_cpu_dp(batch: int, threads: int) -> int:
    """--cpu-dp auto's parts on the CPU: one per intra-op thread, each of at least AUTO_PART_IMAGES images (1: off)."""
    return max(1, min(threads, batch // AUTO_PART_IMAGES))


def cpu_dp_off_reason(state: TrainState, device: torch.device, env: dist.DistEnv) -> str:
    """Why thread data parallelism cannot run here ("" where it can): CUDA, DDP and --teacher train without it."""
    return ("it is for CPU training" if device.type != "cpu" else "DDP already splits the batch" if env.distributed
            else "not combined with --teacher" if state.distill is not None else "")


def make_cpu_dp(n: int | str, state: TrainState, device: torch.device, env: dist.DistEnv,
                batch: int = 0) -> ThreadDataParallel | None:
    """--cpu-dp N > 1 (or auto, resolved by auto_cpu_dp for a batch of this size): thread data parallelism over the
    state's model, or None where it does not apply (an explicit N logs the reason; auto is silently off)."""
    reason = cpu_dp_off_reason(state, device, env)
    if n == CPU_DP_AUTO:
        n = 1 if reason else auto_cpu_dp(batch, torch.get_num_threads())
    if n == 1:
        return None
    if reason:
        get_logger().warning(f"--cpu-dp {n} ignored: {reason}; training in one thread group")
        return None
    dp = ThreadDataParallel(state.model, n, state.compute_loss, ComputeLoss)
    get_logger().info(f"--cpu-dp {n}: each batch in {n} parts side by side, {dp.per_part} intra-op thread(s) each")
    return dp


def prepare_bn_silu(opt: argparse.Namespace, device: torch.device) -> bool:
    """The fused BatchNorm+SiLU kernel on for CPU training unless --eager-bn (models/bn_silu.py); True when on."""
    if device.type != "cpu":
        return False
    return bn_silu.prepare(not getattr(opt, "eager_bn", False))


def run_training(opt: argparse.Namespace, device: torch.device, env: dist.DistEnv) -> tuple:
    """One training run; returns the final validation results (P, R, mAP50, mAP50-95, box, obj, cls)."""
    amp, amp_dtype = training_autocast(device, getattr(opt, "bf16", False))  # a bad --bf16 fails before any work
    cpu_dp = check_cpu_dp(opt)
    nice = loader_nice(opt, device)
    hyp, data, val, save_dir = setup_run(opt, env)
    init_seeds(opt.seed + 1 + env.rank)
    model, ckpt, imgsz, grid = prepare_model(opt, hyp, data, device)
    distiller = make_run_distiller(opt, model, device, imgsz)
    if env.is_main:
        get_logger().info(describe_loss(model.hyp))
    batch, quad = opt.batch_size // env.world_size, getattr(opt, "quad", False)
    loader, dataset, val_loader = make_loaders(opt, data, hyp, imgsz, batch, grid, env, nice)
    apply_class_weights(opt, hyp, model, dataset.labels)
    if env.is_main and not opt.resume:
        prepare_anchors_and_plots(opt, hyp, model, dataset, imgsz, save_dir)
    plan = plan_run_optimizer(opt, hyp, len(loader), save_dir, env)
    state, scheduler = make_state(opt, plan, model, len(loader), device, env)
    state.distill = distiller
    start_epoch, best = restore_state(ckpt, state, scheduler, opt.weights, opt.epochs) if opt.resume else (0, 0.0)
    state.model = dist.wrap_ddp(model, env, device, opt.sync_bn)
    state.dp = make_cpu_dp(cpu_dp, state, device, env, batch // GROUP if quad else batch)  # images per step
    prepare_bn_silu(opt, device)  # after every input check: a bad data YAML fails before any compiling
    ctx = RunContext(opt, plan.hyp, data, save_dir, env, device, imgsz, batch, val, val_loader,
                     tb=TensorBoardLogger(save_dir, start_epoch) if env.is_main else None)
    if env.is_main and start_epoch:
        keep_results_before(save_dir / "results.csv", start_epoch)  # rows written after the last checkpoint
    cfg = EpochConfig(opt.epochs, imgsz, device, grid, amp=amp, amp_dtype=amp_dtype, multi_scale=opt.multi_scale,
                      env=env, save_dir=None if opt.noplots or not env.is_main else save_dir, names=model.names,
                      memory_format=training_memory_format(device), interrupt=InterruptGuard(),
                      loss_gain=QUAD_LOSS_GAIN if quad else 1.0)
    train_size = f"{imgsz} train (--quad: {imgsz * 2}, four in one)" if quad else f"{imgsz} train"
    get_logger().info(f"Image sizes {train_size}, {imgsz} val; {getattr(loader, 'num_workers', 0)} dataloader "
                      f"workers\nLogging results to {colorstr('bold', str(save_dir))} (TensorBoard: tensorboard "
                      f"--logdir {save_dir.parent})\nStarting training for "
                      f"{opt.epochs} epochs...")
    with cfg.interrupt:
        try:
            return fit_and_finish(state, scheduler, loader, ctx, cfg, start_epoch, best)
        except BaseException as e:  # Ctrl-C (or what it broke on its way): last.pt is whole, saves are atomic
            if isinstance(e, KeyboardInterrupt) or cfg.interrupt.requested:
                hint = resume_hint(ctx.weights_dir, env.world_size) if env.is_main else ""
                raise TrainingInterrupted(hint, cfg.interrupt.signum) from None
            raise
