"""Data YAML parsing and validation (``check_dataset``), in the YOLOv5 format.

A data YAML holds ``train`` and ``val`` (and optionally ``test``), each a folder of images, a ``.txt`` list of image
paths, or a list of these, resolved against ``path``; ``path`` itself is resolved against the project root when
relative. ``names`` is a list or an ``{id: name}`` dict; ``nc``, if given, must equal the number of names.
A ``generate:`` key marks the built-in procedural dataset (``utils/data/synth.py``), our local stand-in for YOLOv5's
``download:`` step: the folder is generated when missing or incomplete. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import yaml

from utils.data import synth
from utils.errors import ConfigError, DatasetError
from utils.log import get_logger
from utils.paths import ROOT, project_candidates, resolve_path

SPLITS = ("train", "val", "test")
GENERATORS = {"shapes": synth}
GENERATE_KEYS = {"name", "seed", "n_train", "n_val", "imgsz"}
SplitPath = Union[str, list]


def load_yaml(path: str | Path) -> dict:
    """Load a YAML file holding a mapping; ConfigError naming the file (and line) if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read YAML file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text YAML file (not UTF-8 at byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


def find_data_yaml(data: str | Path) -> Path:
    """Locate a data YAML as given, then under the project root and ROOT/data; DatasetError if absent."""
    candidates = project_candidates(data, "data")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = list(dict.fromkeys(str(c.resolve()) for c in candidates))  # each place once
    where = f" (looked at {', '.join(looked)})" if looked != [str(data)] else ""  # an absolute path: no echo
    raise DatasetError(f"data YAML not found: {data}{where}")


def normalise_names(data: dict, source: str) -> dict[int, str]:
    """Return names as {0: name0, ...} from a list or dict, checked against nc; ConfigError naming source."""
    names, nc = data.get("names"), data.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or nc < 1):
        raise ConfigError(f"{source}: 'nc' must be a positive integer, got {nc!r}")
    if names is None:
        if nc is None:
            raise ConfigError(f"{source}: missing required key 'names' (a list or an id: name mapping)")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, (list, tuple)):
        out = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict):
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: 'names' keys must be integer class ids, got {list(names)}") from None
        if sorted(out) != list(range(len(out))):
            raise ConfigError(f"{source}: 'names' ids must be 0..{len(out) - 1} without gaps, got {sorted(out)}")
        out = dict(sorted(out.items()))
    else:
        raise ConfigError(f"{source}: 'names' must be a list or an id: name mapping, got {type(names).__name__}")
    if not out:
        raise ConfigError(f"{source}: 'names' is empty")
    if nc is not None and nc != len(out):
        raise ConfigError(f"{source}: nc is {nc} but {len(out)} names are given; make them agree")
    return out


def _resolve_one(entry: Any, base: Path, source: str, key: str) -> str:
    """Resolve one split entry against base (YOLOv5 also tries a leading '../' as relative to base)."""
    if not isinstance(entry, (str, Path)) or not str(entry):
        raise ConfigError(f"{source}: '{key}' entries must be paths, got {entry!r}")
    x = (base / Path(entry).expanduser()).resolve()
    if not x.exists() and str(entry).startswith("../"):
        alt = (base / str(entry)[3:]).resolve()
        x = alt if alt.exists() else x
    return str(x)


def resolve_split(value: Any, base: Path, source: str, key: str) -> SplitPath | None:
    """Resolve a split (path or list of paths) against base; None when the split is empty."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, (list, tuple)):
        return [_resolve_one(v, base, source, key) for v in value]
    return _resolve_one(value, base, source, key)


def _missing(value: SplitPath | None) -> list[str]:
    """The entries of a resolved split that do not exist."""
    entries = [] if value is None else value if isinstance(value, list) else [value]
    return [e for e in entries if not Path(e).exists()]


def generator_params(spec: Any, source: str) -> tuple[Any, dict]:
    """Parse ``generate:`` ('shapes' or a mapping: name, seed, n_train, n_val, imgsz) -> (module, kwargs)."""
    spec = {"name": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: 'generate' must be a name or a mapping, got {type(spec).__name__}")
    unknown = set(spec) - GENERATE_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown 'generate' keys {sorted(unknown)}; allowed: {sorted(GENERATE_KEYS)}")
    if spec.get("name") not in GENERATORS:
        raise ConfigError(f"{source}: unknown generator {spec.get('name')!r}; allowed: {sorted(GENERATORS)}")
    return GENERATORS[spec["name"]], {k: v for k, v in spec.items() if k != "name"}


def ensure_generated(data: dict, root: Path, source: str, autogenerate: bool) -> None:
    """Generate the built-in dataset in root when it is missing or incomplete (if autogenerate)."""
    module, params = generator_params(data["generate"], source)
    if module.is_complete(root, **params):
        return
    if not autogenerate:
        raise DatasetError(f"{source}: built-in dataset missing or incomplete at {root}; "
                           f"generate it with: python -m utils.data.synth --out {root}")
    desc = ", ".join(f"{k} {v}" for k, v in params.items())
    get_logger().info(f"{source}: generating the built-in '{module.GENERATOR}' dataset ({desc}) in {root}")
    module.generate(root, **params)


def check_dataset(data: str | Path | dict, autogenerate: bool = True, only: Sequence[str] | None = None) -> dict:
    """Load, validate and resolve a data YAML (path or already-loaded dict).

    Returns the data dict with: ``path`` (Path), ``train``/``val`` (resolved str or list of str), ``test`` (same or
    None), ``names`` ({int: str}), ``nc`` (int) and ``yaml_file`` (str, or None for a dict input). Raises
    DatasetError for a missing YAML or split path and ConfigError for a malformed YAML, both naming the file.
    By default train and val must be given and exist (an optional ``test`` path is checked only when it is used:
    ``val.py --task test``); ``only`` names the splits whose paths are checked instead (val.py: the one it
    validates, and its own error when that one is absent).
    """
    if isinstance(data, dict):
        yaml_file = data.get("yaml_file")
        source = str(yaml_file) if yaml_file else "data dict"
        data = dict(data)
    else:
        yaml_path = find_data_yaml(data)
        yaml_file, source = str(yaml_path), str(yaml_path)
        data = load_yaml(yaml_path)
    for key in ("train", "val") if only is None else ():  # with only, the caller names a split that is absent
        if not data.get(key):
            raise ConfigError(f"{source}: missing required key '{key}' (a folder, .txt list or list of them)")
    names = normalise_names(data, source)
    root = resolve_path(data.get("path") or "", ROOT)
    if data.get("generate"):
        ensure_generated(data, root, source, autogenerate)
    out = {**data, "path": root, "names": names, "nc": len(names), "yaml_file": yaml_file}
    for key in SPLITS:
        out[key] = resolve_split(data.get(key), root, source, key)
        if key not in (only or ("train", "val")):  # train.py never reads 'test': a YAML naming an absent one trains
            continue
        missing = _missing(out[key])
        if missing:
            hint = " (this project never downloads: fetch the data yourself)" if data.get("download") else ""
            raise DatasetError(f"{source}: '{key}' path not found: {missing[0]}{hint}")
    return out
