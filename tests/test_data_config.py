"""Tests of data YAML parsing: split forms, names, nc, path resolution, errors naming file and key, generation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from utils.data.data_config import check_dataset, load_yaml
from utils.data.label_scan import list_image_files
from utils.errors import ConfigError, DatasetError
from utils.paths import ROOT


@pytest.fixture()
def root(tmp_path):
    """A dataset root with two image folders and a .txt list (files need not be images here)."""
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "images" / split / "a.jpg").write_bytes(b"")
    (tmp_path / "extra.txt").write_text("./images/train/a.jpg\n")
    return tmp_path


def _write(path: Path, data: dict) -> Path:
    """Write data as YAML to path; returns path."""
    path.write_text(yaml.safe_dump(data))
    return path


def test_folder_txt_and_list_forms(root):
    f = _write(root / "d.yaml", {"path": str(root), "train": ["images/train", "extra.txt"], "val": "images/val",
                                 "test": "extra.txt", "names": ["a", "b"]})
    d = check_dataset(f)
    assert d["path"] == root and d["yaml_file"] == str(f.resolve())
    assert d["train"] == [str(root / "images/train"), str(root / "extra.txt")]
    assert d["val"] == str(root / "images/val") and d["test"] == str(root / "extra.txt")
    assert d["names"] == {0: "a", 1: "b"} and d["nc"] == 2


def test_files_that_are_not_text_are_named(root):
    binary = root / "binary.yaml"
    binary.write_bytes(b"path: \xff\xfe")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a text YAML file \(not UTF-8 at byte 6\)"):
        check_dataset(binary)
    (root / "bin.txt").write_bytes(b"images/train/a.jpg\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"bin\.txt: not a text list of image paths"):
        list_image_files(root / "bin.txt")
    (root / "bom.txt").write_bytes("\ufeffimages/train/a.jpg\n".encode())
    assert list_image_files(root / "bom.txt") == [str(root / "images/train/a.jpg")]  # a BOM is not part of a path


def test_names_dict_nc_and_missing_test(root):
    d = check_dataset({"path": str(root), "train": "images/train", "val": "images/val",
                       "names": {1: "dog", 0: "cat"}, "nc": 2})
    assert d["names"] == {0: "cat", 1: "dog"} and d["test"] is None and d["yaml_file"] is None
    d = check_dataset({"path": str(root), "train": "images/train", "val": "images/val", "nc": 3})
    assert d["names"] == {0: "class0", 1: "class1", 2: "class2"}


def test_an_absent_test_split_is_checked_only_when_validated_on(root):
    f = _write(root / "rf.yaml", {"path": str(root), "train": "images/train", "val": "images/val",
                                  "test": "images/test", "names": ["a"]})  # as exported without a test split
    assert check_dataset(f)["test"].endswith("images/test")  # train.py's check: train and val
    with pytest.raises(DatasetError, match=r"rf\.yaml: 'test' path not found: .*images/test"):
        check_dataset(f, only=("test",))  # val.py --task test


def test_hidden_files_and_folders_are_not_images(root):
    hidden = root / "images" / "train" / ".ipynb_checkpoints"
    hidden.mkdir()
    (hidden / "a-checkpoint.jpg").write_bytes(b"")  # a notebook's copy
    (root / "images" / "train" / "._a.jpg").write_bytes(b"")  # macOS metadata beside a.jpg
    assert [Path(f).name for f in list_image_files(root / "images" / "train")] == ["a.jpg"]


def test_nc_mismatch_names_the_file(root):
    f = _write(root / "bad.yaml", {"path": str(root), "train": "images/train", "val": "images/val",
                                   "names": ["a", "b"], "nc": 3})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*nc is 3 but 2 names"):
        check_dataset(f)


@pytest.mark.parametrize("names", [{0: "a", 2: "c"}, "abc", []])
def test_bad_names(root, names):
    with pytest.raises(ConfigError, match="names"):
        check_dataset({"path": str(root), "train": "images/train", "val": "images/val", "names": names})


def test_missing_split_path_names_key_and_path(root):
    f = _write(root / "m.yaml", {"path": str(root), "train": "images/train", "val": "images/nope", "names": ["a"]})
    with pytest.raises(DatasetError, match=r"m\.yaml: 'val' path not found: .*images/nope"):
        check_dataset(f)
    f = _write(root / "k.yaml", {"path": str(root), "train": "images/train", "names": ["a"]})
    with pytest.raises(ConfigError, match=r"k\.yaml: missing required key 'val'"):
        check_dataset(f)


def test_relative_path_resolves_against_project_root(root, monkeypatch):
    rel = os.path.relpath(root, ROOT)
    monkeypatch.chdir(root / "images")  # the working directory must not matter
    d = check_dataset({"path": rel, "train": "images/train", "val": "images/val", "names": ["a"]})
    assert d["path"] == root.resolve() and d["train"] == str(root.resolve() / "images/train")


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(DatasetError, match="data YAML not found: .*nothere.yaml"):
        check_dataset(tmp_path / "nothere.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: images\nnames: [a, b\nval: x\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+: malformed YAML"):
        load_yaml(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        check_dataset(bad)


def test_builtin_dataset_is_generated(tmp_path):
    data = {"path": str(tmp_path / "shapes"), "train": "images/train", "val": "images/val",
            "names": ["circle", "square", "triangle", "star", "cross", "ring"],
            "generate": {"name": "shapes", "seed": 1, "n_train": 3, "n_val": 2, "imgsz": 64}}
    with pytest.raises(DatasetError, match="built-in dataset missing"):
        check_dataset(data, autogenerate=False)
    d = check_dataset(data)
    assert len(list(Path(d["train"]).glob("*.jpg"))) == 3 and len(list(Path(d["val"]).glob("*.jpg"))) == 2
    with pytest.raises(ConfigError, match="unknown generator 'cubes'"):
        check_dataset({**data, "generate": "cubes"})


def test_default_shapes_yaml_is_valid():
    d = load_yaml(ROOT / "data/shapes.yaml")
    assert d["path"] == "datasets/shapes" and d["generate"]["name"] == "shapes"
    from utils.data.synth import CLASS_NAMES
    assert [d["names"][i] for i in range(len(d["names"]))] == CLASS_NAMES


@pytest.mark.skipif(not (ROOT.parent / "shared").is_dir(), reason="../shared is absent")
def test_coco128_yaml():
    d = check_dataset("../shared/data/coco128/coco128.yaml")
    assert d["nc"] == 80 and d["names"][0] == "person" and Path(d["train"]).is_dir()
