"""Hyperparameter search (``train.py --evolve N``) on Optuna, in a storage that outlives the process.

Each trial is one ordinary training run (``--noval --nosave --noplots``, as upstream's evolve) with hyp values the
sampler proposes; its fitness is YOLOv5's 0.1 mAP50 + 0.9 mAP50-95 of the final validation. The sampler is Optuna's
TPE (multivariate, seeded): it handles the mix of continuous keys (YOLOv5's and ours) and categorical ones
(``cls_loss_type``, ``loss_norm``, ...) in one model and is sample-efficient at the tens of trials a detector search
affords; the first trial is the hyp file itself. The study lives in an SQLite file in the run folder by default or
in any Optuna RDB URL (``--evolve-storage postgresql://...``), so several processes or machines can share one
study. Only complete trials count toward N; a trial of a killed process is failed and queued again on
``--resume-evolve``, so none is lost or counted twice. After every trial the run folder gets evolve.csv (every
complete trial of the study) and hyp_evolve.yaml (the best); evolve.png (one panel per searched key, a few seconds
to draw) is redrawn after a trial at most once every PLOT_EVERY_S seconds, and always when the search stops.
"""

from __future__ import annotations

import argparse
import copy
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from utils.errors import ConfigError
from utils.log import get_logger
from utils.paths import project_candidates, write_atomic
from utils.train.engine import TrainingDivergedError
from utils.train.hyp import load_hyp, validate_hyp
from utils.train.interrupt import TrainingInterrupted
from utils.train.optim import AUTO, AUTO_ADAMW_HYP, plan_optimizer

PLOT_EVERY_S = 60.0  # evolve.png's redraws during a search: every trial of a real search, not every few seconds

# YOLOv5's evolve ranges (train.py `meta`), obj on a log scale down to 0.001 so that the weighted-focal and
# heatmap recipes (obj 0.0288, 0.0054) are inside the space, plus this project's loss keys.
SEARCH_SPACE: dict[str, tuple] = {
    "lr0": (1e-5, 1e-1, "log"), "lrf": (0.01, 1.0), "momentum": (0.6, 0.98), "weight_decay": (0.0, 0.001),
    "warmup_epochs": (0.0, 5.0), "warmup_momentum": (0.0, 0.95), "warmup_bias_lr": (0.0, 0.2),
    "box": (0.02, 0.2), "cls": (0.2, 4.0), "cls_pw": (0.5, 2.0), "obj": (0.001, 4.0, "log"), "obj_pw": (0.5, 2.0),
    "anchor_t": (2.0, 8.0), "hsv_h": (0.0, 0.1), "hsv_s": (0.0, 0.9), "hsv_v": (0.0, 0.9), "degrees": (0.0, 45.0),
    "translate": (0.0, 0.9), "scale": (0.0, 0.9), "shear": (0.0, 10.0), "perspective": (0.0, 0.001),
    "flipud": (0.0, 1.0), "fliplr": (0.0, 1.0), "mosaic": (0.0, 1.0), "mixup": (0.0, 1.0),
    "slide_ratio": (0.0, 1.0), "fl_gamma": (0.0, 2.0), "fl_alpha": (0.05, 0.95), "box_l1": (0.0, 0.02),
    "cls_loss_type": ("bce", "ce"), "loss_norm": ("mean", "pos", "weighted"), "fl_type": ("focal", "quality"),
    "cls_weights": ("none", "inverse", "effective"), "slide_mu": ("batch", "ema"),
    "obj_loss_type": ("bce", "gaussian_focal"), "heatmap_peak": ("assigned", "centre"),
    "heatmap_target": ("one", "iou"), "heatmap_alpha": (0.0, 3.0), "heatmap_beta": (1.0, 6.0),
}
STUDY_NAME = "evolve"
STORAGE_ATTEMPTS = 5


def search_space(nc: int) -> dict[str, tuple]:
    """The keys searched for a dataset of nc classes (no softmax CE or class weights for one class)."""
    skip = {"cls_loss_type", "cls_weights"} if nc < 2 else set()
    return {k: v for k, v in SEARCH_SPACE.items() if k not in skip}


def fixed_by_optimizer(opt: argparse.Namespace, hyp: dict) -> dict:
    """The hyp values ``--optimizer auto`` sets itself for the search's runs (lr0 and warmup_bias_lr when it picks
    AdamW for a run this short), which are therefore not searched: {} for any other optimizer or run length."""
    from utils.data.data_config import check_dataset
    from utils.data.label_scan import list_image_files
    from utils.train.train_setup import run_defaults

    if opt.optimizer not in (None, AUTO):  # an explicit optimizer uses the hyp's own values
        return {}
    data = check_dataset(opt.data)
    run = run_defaults(opt, data)  # what each trial's fill_defaults will pick
    if run["optimizer"] != AUTO:
        return {}
    batch = max(int(run["batch_size"]), 1)
    iterations = int(run["epochs"]) * math.ceil(len(list_image_files(data["train"])) / batch)
    plan = plan_optimizer(AUTO, hyp, iterations, batch)
    return {k: plan.hyp[k] for k in AUTO_ADAMW_HYP} if plan.name == "AdamW" else {}


def suggest(trial: Any, name: str, spec: tuple) -> Any:
    """One value from an Optuna trial: a category (strings) or a float in [low, high] (log scale if marked)."""
    if isinstance(spec[0], str):
        return trial.suggest_categorical(name, list(spec))
    return trial.suggest_float(name, spec[0], spec[1], log=len(spec) > 2 and spec[2] == "log")


def start_params(hyp: dict, space: dict[str, tuple]) -> dict:
    """The hyp file's values as the first trial, clipped into the search ranges."""
    out = {}
    for k, spec in space.items():
        v = hyp[k]
        out[k] = v if isinstance(spec[0], str) else min(max(float(v), spec[0]), spec[1])
    return out


def population_files(path: str | Path) -> list[Path]:
    """The hyp files of ``--evolve-population``: a folder's *.yaml files (sorted), or one file; a relative path is
    looked for from the working directory, then under the project (as ``--hyp`` is)."""
    found = next((c for c in project_candidates(path, "data") if c.exists()), None)
    if found is None:
        raise ConfigError(f"--evolve-population {path}: no such folder or file (give a folder of hyp YAML files)")
    files = sorted(found.glob("*.yaml")) if found.is_dir() else [found]
    if not files:
        raise ConfigError(f"--evolve-population {found}: no .yaml hyp files in this folder")
    return files


def population_hyp(base: dict, file: Path) -> dict:
    """A population file's hyp: checked as --hyp is, then its own keys over the base hyp (keys it leaves out keep
    the base's values, not the defaults)."""
    load_hyp(file)  # every problem named with the file and key
    return validate_hyp({**base, **(yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {})}, source=str(file))


def first_trials(base: dict, space: dict[str, tuple], population: str | Path | None = None) -> list[dict]:
    """The search's first trials: the base hyp's values, then each population file's (as upstream's
    --evolve_population seeds its first generation), clipped into the search ranges, each distinct set once."""
    hyps = [base] + [population_hyp(base, f) for f in (population_files(population) if population else [])]
    out: list[dict] = []
    for params in (start_params(h, space) for h in hyps):
        if params not in out:
            out.append(params)
    return out


def fitness(results: tuple) -> float:
    """YOLOv5's fitness: 0.1 mAP50 + 0.9 mAP50-95 of (P, R, mAP50, mAP50-95, ...)."""
    return 0.1 * float(results[2]) + 0.9 * float(results[3])


def sqlalchemy_url(url: str) -> str:
    """url with the installed PostgreSQL driver named: SQLAlchemy 2 reads a bare postgresql:// as psycopg 3, while
    requirements.txt installs psycopg2."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def shown_url(url: str) -> str:
    """url as printed: its password replaced by *** (SQLAlchemy's rendering), or as given if it does not parse."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_study(storage_url: str, seed: int, resume: bool):
    """The study in storage (created if new); on resume, trials left running by a killed process fail and requeue."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    for attempt in range(STORAGE_ATTEMPTS):  # processes started together race to create the tables: retry
        try:
            storage = optuna.storages.RDBStorage(sqlalchemy_url(storage_url))
            study = optuna.create_study(storage=storage, sampler=sampler, study_name=STUDY_NAME,
                                        direction="maximize", load_if_exists=True)
            break
        except (SQLAlchemyError, ValueError, ImportError) as e:
            if attempt + 1 == STORAGE_ATTEMPTS or not isinstance(e, SQLAlchemyError) or "connect" in str(e):
                reason = str(e).splitlines()[0].replace(storage_url, shown_url(storage_url))
                raise ConfigError(f"--evolve-storage {shown_url(storage_url)}: cannot open the Optuna storage "
                                  f"({type(e).__name__}: {reason})") from e
            time.sleep(0.5 * (attempt + 1))
    if resume:
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params)
            get_logger().info(f"evolve: trial {t.number} was interrupted; queued again")
    return study


def write_outputs(study: Any, save_dir: Path, base_hyp: dict, plot: bool = True) -> None:
    """evolve.csv, hyp_evolve.yaml and (plot=True) evolve.png from every complete trial of the study."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return
    keys = sorted({k for t in done for k in t.params})
    metrics = ("P", "R", "mAP50", "mAP50-95")
    lines = [",".join(["trial", "fitness", *metrics, *keys])]
    for t in sorted(done, key=lambda t: t.number):
        vals = [t.user_attrs.get(m, "") for m in metrics] + [t.params.get(k, "") for k in keys]
        lines.append(",".join(str(x) for x in [t.number, f"{t.value:.5f}", *vals]))
    write_atomic(save_dir / "evolve.csv", "\n".join(lines) + "\n")
    best = max(done, key=lambda t: t.value)
    hyp = validate_hyp({**base_hyp, **best.params}, source="evolve")
    header = f"# Best of {len(done)} trials: trial {best.number}, fitness {best.value:.5f}\n"
    write_atomic(save_dir / "hyp_evolve.yaml", header + yaml.safe_dump(hyp, sort_keys=False))
    if plot:
        plot_evolve(done, keys, save_dir / "evolve.png")


def plot_evolve(trials: list, keys: list[str], path: Path) -> Path:
    """One panel per searched key: its value against fitness for every trial, the best in red."""
    from utils.plots import pyplot_agg, save_figure

    plt = pyplot_agg()
    cols = 6
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    margin = 0.25 / (2.4 * rows)  # fixed margins in inches: tight_layout took half of the figure's 4-5 s
    fig.subplots_adjust(left=0.04, right=0.99, bottom=2 * margin, top=1 - 1.5 * margin, wspace=0.35, hspace=0.45)
    best = max(trials, key=lambda t: t.value)
    for ax, k in zip(axes.ravel(), keys):
        xs = [t.params[k] for t in trials if k in t.params]
        ys = [t.value for t in trials if k in t.params]
        ax.scatter(xs, ys, s=12, c="tab:blue", alpha=0.7)
        ax.scatter([best.params.get(k)], [best.value], s=40, c="red", marker="+")
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="both" if all(isinstance(x, (int, float)) for x in xs) else "y", nbins=4)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    return save_figure(plt, fig, path, dpi=110)


def prepare(opt: argparse.Namespace, classes: Callable[[argparse.Namespace], int]) -> argparse.Namespace:
    """The search's options and folder: a new runs/evolve/exp{N}, or the folder of --resume-evolve with its saved
    options (a new --evolve N still wins); evolve_opt.yaml records them. ``classes(opt)`` gives the class count of
    those options (checking their hyp file and data), before a new folder is made."""
    from utils.paths import increment_path

    if opt.resume_evolve:
        folder = Path(opt.resume_evolve)
        saved = folder / "evolve_opt.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume-evolve {folder}: no evolve_opt.yaml there; pass a runs/evolve/exp* folder")
        given_n = opt.evolve
        opt = argparse.Namespace(**{**vars(opt), **yaml.safe_load(saved.read_text()), "resume_evolve": str(folder)})
        opt.evolve = given_n or opt.evolve
        nc = classes(opt)
    else:
        nc = classes(opt)
        population = getattr(opt, "evolve_population", None)
        for f in population_files(population) if population else []:
            load_hyp(f)  # a bad file stops here, before a run folder is made
        if opt.evolve_storage:  # a URL that cannot be opened stops here, before a run folder is made
            open_study(opt.evolve_storage, opt.seed, resume=False)
        project = Path(opt.project).parent / "evolve" if Path(opt.project).name == "train" else Path(opt.project)
        folder = increment_path(project / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    opt.save_dir, opt.nc = str(folder), nc
    keep = {k: v for k, v in vars(opt).items() if k not in ("stop_after", "weights_hash", "resume_evolve")}
    write_atomic(folder / "evolve_opt.yaml", yaml.safe_dump(keep, sort_keys=False))  # --resume-evolve reads it
    return opt


def hyp_and_space(opt: argparse.Namespace) -> tuple[dict, dict[str, tuple]]:
    """The search's base hyp and the keys it searches; keys --optimizer auto sets itself are fixed, not searched."""
    base = load_hyp(opt.hyp)
    space = search_space(int(opt.nc))
    fixed = fixed_by_optimizer(opt, base)
    if fixed:  # searching them would record values that never trained
        get_logger().info(f"evolve: --optimizer auto trains these short runs with AdamW at "
                          f"{', '.join(f'{k} {v}' for k, v in fixed.items())}, so those keys are not searched "
                          "(pass --optimizer SGD, Adam or AdamW to search them)")
    return {**base, **fixed}, {k: v for k, v in space.items() if k not in fixed}


def evolve(opt: argparse.Namespace, train_fn: Callable[[argparse.Namespace], tuple]) -> Any:
    """Run trials until the study holds opt.evolve complete ones; train_fn(opt) trains one run and returns results."""
    import optuna

    save_dir = Path(opt.save_dir)
    base, space = hyp_and_space(opt)
    url = opt.evolve_storage or f"sqlite:///{(save_dir / 'evolve.db').resolve()}"
    study = open_study(url, opt.seed, resume=bool(opt.resume_evolve))
    if not study.trials:
        population = getattr(opt, "evolve_population", None)
        queued = first_trials(base, space, population)
        for params in queued:
            study.enqueue_trial(params)
        if population:
            get_logger().info(f"evolve: the first {len(queued)} trials are {opt.hyp} and the distinct hyp files of "
                              f"--evolve-population {population}")

    def objective(trial: Any) -> float:
        hyp = validate_hyp({**base, **{k: suggest(trial, k, s) for k, s in space.items()}}, source="evolve")
        run = copy.copy(opt)
        run.hyp, run.evolve, run.name, run.evolve_storage = hyp, None, f"trial{trial.number}", ""  # no URL in opt.yaml
        run.project, run.exist_ok, run.noval, run.nosave, run.noplots = str(save_dir / "trials"), True, True, True, True
        try:
            results = train_fn(run)
        except TrainingDivergedError as e:  # an outcome of these hyperparameters, not a fault of the search
            get_logger().warning(f"evolve: trial {trial.number} diverged ({e}); recorded as failed")
            return float("nan")  # Optuna marks the trial FAIL and proposes the next one
        except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: as for a killed process, the values run again on resume
            study.enqueue_trial(trial.params)
            interrupted.append(trial.number)
            stop_signal[0] = getattr(e, "signum", signal.SIGINT)
            study.stop()
            return float("nan")
        for m, v in zip(("P", "R", "mAP50", "mAP50-95"), results):
            trial.set_user_attr(m, float(v))
        return fitness(results)

    last_plot = [time.monotonic()]  # the first redraw once a trial ends PLOT_EVERY_S into the search

    def after(study_: Any, trial: Any) -> None:
        plot = time.monotonic() - last_plot[0] >= PLOT_EVERY_S
        write_outputs(study_, save_dir, base, plot=plot)
        last_plot[0] = time.monotonic() if plot else last_plot[0]
        if trial.number in interrupted:
            get_logger().info(f"evolve: trial {trial.number} was interrupted; queued again for --resume-evolve")
            return
        value = f"fitness {trial.value:.4f}" if trial.value is not None else str(trial.state.name).lower()
        done = study_.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        best = f"{study_.best_value:.4f}" if done else "none yet"
        get_logger().info(f"evolve: trial {trial.number} {value}; best so far {best}")

    complete, interrupted, stop_signal = (optuna.trial.TrialState.COMPLETE,), [], [signal.SIGINT]
    try:
        if len(study.get_trials(deepcopy=False, states=complete)) < opt.evolve:
            stop = optuna.study.MaxTrialsCallback(opt.evolve, states=complete)
            study.optimize(objective, callbacks=[stop, after], gc_after_trial=True, show_progress_bar=False)
    finally:  # also when a trial raised: the outputs (evolve.png included) show every trial that completed
        write_outputs(study, save_dir, base)
    if interrupted:
        raise TrainingInterrupted("", stop_signal[0])
    done = study.get_trials(deepcopy=False, states=complete)
    best = f"best fitness {study.best_value:.5f}" if done else "none complete"
    get_logger().info(f"evolve: {len(study.trials)} trials in the study; {best}; "
                      f"results in {save_dir} (evolve.csv, hyp_evolve.yaml, evolve.png)")
    return study
