"""Tests of the YOLO dataset: label checks and their messages, .cache, EXIF, rect batches, caching, batch contract."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.dataset import LoadImagesAndLabels, create_dataloader
from utils.data.label_scan import img2label_paths, list_image_files
from utils.errors import ConfigError, DatasetError, LabelError
from utils.log import colorstr
from utils.paths import ROOT

RED = (0, 0, 255)  # BGR


def add_image(root: Path, name: str, rows: str | None, hw=(64, 96), box=(24, 16, 56, 40), split="train") -> Path:
    """Write images/<split>/name (grey, red rectangle at xyxy box) and its label text (None: no label file)."""
    im_file = root / "images" / split / name
    im_file.parent.mkdir(parents=True, exist_ok=True)
    im = np.full((*hw, 3), 114, np.uint8)
    im[box[1]:box[3], box[0]:box[2]] = RED
    cv2.imwrite(str(im_file), im)
    if rows is not None:
        lb = root / "labels" / split / Path(name).with_suffix(".txt")
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_text(rows)
    return im_file


def box_row(cls: int, box=(24, 16, 56, 40), hw=(64, 96)) -> str:
    """Label row for an xyxy pixel box in an (h, w) image."""
    (x1, y1, x2, y2), (h, w) = box, hw
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"


def test_label_checks_and_summary(tmp_path, logs):
    add_image(tmp_path, "good.png", box_row(0) + box_row(1, (0, 0, 10, 10)))
    add_image(tmp_path, "dup.png", box_row(1) + box_row(0) + box_row(1))
    add_image(tmp_path, "bg.png", None)
    add_image(tmp_path, "empty.png", "\n")
    add_image(tmp_path, "poly.png", "2 0.25 0.25 0.75 0.25 0.75 0.5 0.25 0.5\n")
    (tmp_path / "images/train/corrupt.jpg").write_bytes(b"not an image at all")
    add_image(tmp_path, "badrow.png", box_row(0) + "0 0.5 0.5 0.2\n")
    add_image(tmp_path, "text.png", "cat 0.5 0.5 0.2 0.2\n")
    add_image(tmp_path, "range.png", "0 1.5 0.5 0.2 0.2\n")
    add_image(tmp_path, "fraction.png", "1.5 0.5 0.5 0.2 0.2\n")
    add_image(tmp_path, "nan.png", "nan 0.5 0.5 0.2 0.2\n")
    ds = LoadImagesAndLabels(tmp_path / "images/train", img_size=96, prefix="train: ")
    assert sorted(Path(f).name for f in ds.im_files) == ["bg.png", "dup.png", "empty.png", "good.png", "poly.png"]
    text = "\n".join(logs)
    assert "corrupt.jpg: cannot read image" in text
    assert "badrow.txt:2: expected 5 numbers" in text and "text.txt:1: expected 5 numbers" in text
    assert "range.txt:1: coordinates outside [0, 1]" in text
    assert "fraction.txt:1: class id must be a non-negative integer" in text
    assert "dup.txt: 1 duplicate rows dropped" in text
    assert "nan.txt:1: class id must be a non-negative integer" in text
    assert "train: 5 images, 2 backgrounds, 6 corrupt, 1 duplicates" in text
    labels = dict(zip((Path(f).name for f in ds.im_files), ds.labels))
    assert labels["dup.png"][:, 0].tolist() == [1, 0] and labels["bg.png"].shape == (0, 5)
    np.testing.assert_allclose(labels["poly.png"][0], [2, 0.5, 0.375, 0.5, 0.25], atol=1e-6)
    assert all(lb.dtype == np.float32 for lb in ds.labels)


def test_a_label_file_saved_with_a_byte_order_mark_keeps_its_first_row(tmp_path, logs):
    add_image(tmp_path, "bom.png", "\ufeff" + box_row(2) + box_row(1, (0, 0, 10, 10)))  # as Notepad saves UTF-8
    lb = tmp_path / "labels" / "train" / "latin1.txt"
    add_image(tmp_path, "latin1.png", "")
    lb.write_bytes(b"0 0.5 0.5 0.2 0.2 # caf\xe9\n")  # not UTF-8
    ds = LoadImagesAndLabels(tmp_path / "images/train", img_size=96, prefix="train: ")
    assert [Path(f).name for f in ds.im_files] == ["bom.png"] and ds.labels[0][:, 0].tolist() == [2, 1]
    assert "latin1" in "\n".join(logs) and "train: 1 images, 0 backgrounds, 1 corrupt" in "\n".join(logs)


def test_class_id_out_of_range_names_file_line_and_nc(tmp_path):
    add_image(tmp_path, "a.png", box_row(0))
    add_image(tmp_path, "cls.png", box_row(1) + "\n" + box_row(5))
    LoadImagesAndLabels(tmp_path / "images/train", 96)  # nc unknown: accepted
    with pytest.raises(LabelError, match=r"cls\.txt:3: class id 5 >= nc 2"):
        LoadImagesAndLabels(tmp_path / "images/train", 96, nc=2)
    with pytest.raises(LabelError, match="nc 3"):
        LoadImagesAndLabels(tmp_path / "images/train", 96, names=["a", "b", "c"])
    ds = LoadImagesAndLabels(tmp_path / "images/train", 96, nc=1, single_cls=True)
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)


def test_no_usable_images_is_a_dataset_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images found") as e:
        LoadImagesAndLabels(tmp_path / "empty", 64, prefix=colorstr("train: "))
    assert str(e.value).startswith("train: ") and "\x1b" not in str(e.value)  # the prefix, without colour codes
    with pytest.raises(DatasetError, match="does not exist"):
        LoadImagesAndLabels(tmp_path / "missing", 64)
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "images/train/x.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no usable images"):
        LoadImagesAndLabels(tmp_path / "images/train", 64)


def test_txt_lists_and_unsupported_suffix(tmp_path, logs):
    add_image(tmp_path, "a.png", box_row(0))
    add_image(tmp_path, "b.png", box_row(1), split="val")
    (tmp_path / "images/train/c.gif").write_bytes(b"GIF89a")
    (tmp_path / "list.txt").write_text("./images/train/a.png\nimages/train/c.gif\n\n")
    files = list_image_files([tmp_path / "list.txt", tmp_path / "images/val"])
    assert sorted(Path(f).name for f in files) == ["a.png", "b.png", "c.gif"]
    assert img2label_paths([str(tmp_path / "images/train/a.png")]) == [str(tmp_path / "labels/train/a.txt")]
    ds = LoadImagesAndLabels([tmp_path / "list.txt", tmp_path / "images/val"], 96)
    assert ds.n == 2 and "unsupported image suffix '.gif'" in "\n".join(logs)


def test_cache_written_reused_and_invalidated(tmp_path, logs):
    add_image(tmp_path, "a.png", box_row(0))
    add_image(tmp_path, "b.png", box_row(1))
    LoadImagesAndLabels(tmp_path / "images/train", 96)
    cache = tmp_path / "labels/train.cache"
    assert cache.is_file() and any("New cache created" in m for m in logs)
    logs.clear()
    LoadImagesAndLabels(tmp_path / "images/train", 96)
    assert any("Using cache" in m for m in logs)
    (tmp_path / "labels/train/b.txt").write_text(box_row(2) + box_row(3, (0, 0, 20, 20)))
    logs.clear()
    ds = LoadImagesAndLabels(tmp_path / "images/train", 96)
    assert any("New cache created" in m for m in logs)
    assert ds.labels[1][:, 0].tolist() == [2, 3]


def test_read_only_labels_folder_skips_cache(tmp_path, logs):
    add_image(tmp_path, "a.png", box_row(0))
    labels = tmp_path / "labels"
    os.chmod(labels, 0o555)
    try:
        ds = LoadImagesAndLabels(tmp_path / "images/train", 96, cache="disk")
    finally:
        os.chmod(labels, 0o755)
    assert ds.n == 1 and not (labels / "train.cache").exists()
    assert any("cache not saved" in m for m in logs)


def test_exif_orientation(tmp_path):
    (tmp_path / "images/train").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (80, 40), (200, 10, 10)).save(tmp_path / "images/train/r.jpg", exif=exif)
    ds = LoadImagesAndLabels(tmp_path / "images/train", 80)
    assert ds.shapes.tolist() == [[40, 80]]  # (w, h) as displayed
    im, (h0, w0), _ = ds.load_image(0)
    assert (h0, w0) == (80, 40) and im.shape[:2] == (80, 40)


def test_rect_batches_are_stride_multiples(tmp_path):
    for i, hw in enumerate([(64, 96), (96, 64), (40, 120), (80, 80), (50, 70)]):
        add_image(tmp_path, f"{i}.png", box_row(0, (4, 4, 20, 20), hw), hw=hw, box=(4, 4, 20, 20))
    loader, ds = create_dataloader(tmp_path / "images/train", 128, 2, 32, rect=True, pad=0.5, workers=0,
                                   shuffle=True)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all() and (ds.batch_shapes % 32 == 0).all()
    for (imgs, _, _, shapes), bs in zip(loader, ds.batch_shapes):
        assert tuple(imgs.shape[2:]) == tuple(bs)
        for (h0, w0), ((gh, gw), (pw, ph)) in shapes:
            assert round(h0 * gh + 2 * ph) == bs[0] and round(w0 * gw + 2 * pw) == bs[1]


def test_batch_contract_and_box_on_pixels(tmp_path):
    box = (24, 16, 56, 40)
    for i in range(3):
        add_image(tmp_path, f"{i}.png", box_row(i, box), box=box)
    add_image(tmp_path, "bg.png", None)
    loader, ds = create_dataloader(tmp_path / "images/train", 128, 4, 32, workers=0, nc=3)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 3, 128, 128)
    assert targets.dtype == torch.float32 and targets.shape == (3, 6)
    assert targets[:, 0].tolist() == [0, 1, 2] and targets[:, 1].tolist() == [0, 1, 2]
    assert isinstance(paths, tuple) and paths[0].endswith("0.png")
    (h0, w0), ((gh, gw), (pw, ph)) = shapes[0]
    assert (h0, w0) == (64, 96) and gh == 86 / 64 and gw == 128 / 96 and (pw, ph) == (0, 21)  # 64 * 4/3 -> ceil 86
    im = imgs[0].numpy()
    assert im[0].max() == 255 and im[2].max() < 200  # RGB: the red rectangle lands in channel 0
    ys, xs = np.nonzero(im[0] > 200)
    cx, cy, w, h = (targets[0, 2:] * 128).tolist()
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                               [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1.5)


def test_mosaic_training_batch(tmp_path):
    for i in range(4):
        add_image(tmp_path, f"{i}.png", box_row(i % 2))
    np.random.seed(0)
    loader, ds = create_dataloader(tmp_path / "images/train", 64, 4, 32, augment=True, workers=2, shuffle=True,
                                   hyp={"mixup": 0.5, "degrees": 5.0})
    for imgs, targets, _, shapes in loader:
        assert imgs.shape == (4, 3, 64, 64) and shapes == (None,) * 4
        assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
        assert set(targets[:, 1].tolist()) <= {0.0, 1.0}


_COLLATE = LoadImagesAndLabels.collate_fn


def _collate_with_niceness(batch):
    """The dataset's collate, plus the niceness of the worker process that ran it."""
    return (*_COLLATE(batch), os.nice(0))


def test_workers_run_at_the_niceness_asked(tmp_path, monkeypatch):
    for i in range(4):
        add_image(tmp_path, f"{i}.png", box_row(0))
    monkeypatch.setattr(LoadImagesAndLabels, "collate_fn", staticmethod(_collate_with_niceness))
    base = os.nice(0)
    loader, _ = create_dataloader(tmp_path / "images/train", 64, 2, 32, workers=2, worker_nice=3)
    assert [batch[-1] for batch in loader] == [min(base + 3, 19)] * 2  # both workers, lowered by 3
    plain, _ = create_dataloader(tmp_path / "images/train", 64, 2, 32, workers=2)
    assert [batch[-1] for batch in plain] == [base] * 2  # by default at this process's priority
    assert os.nice(0) == base  # the training process itself is untouched


def test_image_cache_modes_give_same_items(tmp_path, logs):
    for i in range(2):
        add_image(tmp_path, f"{i}.png", box_row(0))
    plain = LoadImagesAndLabels(tmp_path / "images/train", 64)
    ram = LoadImagesAndLabels(tmp_path / "images/train", 64, cache="ram")
    disk = LoadImagesAndLabels(tmp_path / "images/train", 64, cache="disk")
    assert ram.cache == "ram" and disk.cache == "disk" and (tmp_path / "images/train/0.npy").is_file()
    for i in range(2):
        assert torch.equal(plain[i][0], ram[i][0]) and torch.equal(plain[i][0], disk[i][0])
    os.chmod(tmp_path / "images/train", 0o555)
    try:
        fallback = LoadImagesAndLabels(tmp_path / "images/train", 64, cache="disk")
    finally:
        os.chmod(tmp_path / "images/train", 0o755)
    assert fallback.cache == "ram" and any("caching images in RAM" in m for m in logs)


def test_a_disk_cache_follows_an_image_replaced_since(tmp_path):
    im_file = add_image(tmp_path, "a.png", box_row(0), hw=(64, 96))
    LoadImagesAndLabels(tmp_path / "images/train", 96, cache="disk")
    add_image(tmp_path, "a.png", box_row(0), hw=(48, 80))  # the user replaces the picture
    old = os.stat(tmp_path / "images/train/a.npy").st_mtime - 60
    os.utime(im_file, (old, old))  # even with an older time (cp -p, an archive), it differs from the cached one
    ds = LoadImagesAndLabels(tmp_path / "images/train", 96, cache="disk")
    assert ds.load_image(0)[1] == (48, 80) and np.load(tmp_path / "images/train/a.npy").shape == (48, 80, 3)


def test_rect_batches_and_image_weights_do_not_combine(tmp_path):
    add_image(tmp_path, "a.png", box_row(0))
    with pytest.raises(ConfigError, match="--rect and --image-weights do not combine"):
        create_dataloader(tmp_path / "images/train", 64, 2, 32, rect=True, image_weights=True, workers=0)


def test_a_split_without_any_label_says_where_labels_are_looked_for(tmp_path, logs):
    add_image(tmp_path, "a.png", None)
    (tmp_path / "Labels" / "train").mkdir(parents=True)  # labels beside, in a folder the layout does not use
    LoadImagesAndLabels(tmp_path / "images/train", 64, prefix="train: ")
    assert any("no labels found, every image is a background" in m and str(tmp_path / "labels/train/a.txt") in m
               for m in logs)


def test_distributed_sampler(tmp_path):
    import torch.distributed as dist

    for i in range(4):
        add_image(tmp_path, f"{i}.png", box_row(0))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader, _ = create_dataloader(tmp_path / "images/train", 64, 2, 32, rank=0, workers=0, shuffle=True)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        assert sum(len(b[0]) for b in loader) == 4
        quad, _ = create_dataloader(tmp_path / "images/train", 64, 8, 32, rank=0, workers=0, shuffle=True, quad=True)
        assert [tuple(b[0].shape) for b in quad] == [(1, 3, 128, 128)]  # the rank's 4 images make one group
    finally:
        dist.destroy_process_group()


SHARED = ROOT.parent / "shared" / "data" / "coco128"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
def test_coco128_real_images(logs):
    before = sorted(os.listdir(SHARED / "labels"))
    loader, ds = create_dataloader(str(SHARED / "images/train2017"), 640, 32, 32, rect=True, pad=0.5, workers=2,
                                   nc=80)
    assert ds.n == 128 and sum(len(lb) for lb in ds.labels) == 929
    assert sum(len(lb) == 0 for lb in ds.labels) == 2
    assert "128 images, 2 backgrounds, 0 corrupt, 0 duplicates" in "\n".join(logs)
    assert sorted(os.listdir(SHARED / "labels")) == before  # the read-only share is never written
    assert (ds.batch_shapes % 32 == 0).all() and ds.batch_shapes.max() == 672
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape[0] == 32 and targets.shape[1] == 6


def test_truncated_jpeg_warning_names_the_file_and_what_is_done(tmp_path):
    from utils.data.label_scan import verify_pair

    im_file = tmp_path / "images" / "cut.jpg"
    im_file.parent.mkdir()
    cv2.imwrite(str(im_file), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    im_file.write_bytes(im_file.read_bytes()[:-200])
    lb_file = tmp_path / "labels" / "cut.txt"
    lb_file.parent.mkdir()
    lb_file.write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    out = verify_pair((str(im_file), str(lb_file)))
    assert out["status"] == "ok"  # kept for training
    assert out["msg"].startswith(f"{im_file}: truncated JPEG") and "left unchanged" in out["msg"]
    assert f"{lb_file}: 1 duplicate rows dropped" in out["msg"]  # both notes survive


def test_two_txt_lists_over_one_labels_folder_keep_their_own_cache(tmp_path, logs):
    for name in ("a.png", "b.png", "c.png"):
        add_image(tmp_path, name, box_row(0), split="all")
    (tmp_path / "train.txt").write_text("images/all/a.png\nimages/all/b.png\n")
    (tmp_path / "val.txt").write_text("images/all/c.png\n")
    train = LoadImagesAndLabels(tmp_path / "train.txt", 64, 2)
    val = LoadImagesAndLabels(tmp_path / "val.txt", 64, 2)
    assert (len(train), len(val)) == (2, 1)
    assert (tmp_path / "train.cache").is_file() and (tmp_path / "val.cache").is_file()
    assert not (tmp_path / "labels" / "all.cache").exists()
    logs.clear()
    LoadImagesAndLabels(tmp_path / "train.txt", 64, 2)
    LoadImagesAndLabels(tmp_path / "val.txt", 64, 2)
    assert not any("New cache created" in m for m in logs)  # each reuses its own, nothing rewritten
    assert sum("Using cache" in m for m in logs) == 2


def test_quad_loader_gives_a_quarter_as_many_images_of_twice_the_side(tmp_path):
    """10 images, batch 8: one batch of 2 images at 128 (the incomplete last batch is dropped, as upstream)."""
    for i in range(10):
        add_image(tmp_path, f"{i}.png", box_row(i % 2))
    loader, _ = create_dataloader(tmp_path / "images/train", 64, 8, 32, workers=0, quad=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 1
    imgs, targets, paths, shapes = batches[0]
    assert imgs.shape == (2, 3, 128, 128) and len(paths) == len(shapes) == 2
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0} and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_quad_with_rect_tiles_each_rect_batch_at_twice_its_shape(tmp_path):
    for i, hw in enumerate([(64, 96)] * 4 + [(96, 64)] * 4):
        add_image(tmp_path, f"{i}.png", box_row(0, (4, 4, 20, 20), hw), hw=hw, box=(4, 4, 20, 20))
    loader, ds = create_dataloader(tmp_path / "images/train", 128, 4, 32, rect=True, pad=0.5, workers=0,
                                   quad=True)
    sizes = [tuple(imgs.shape) for imgs, *_ in loader]
    assert sizes == [(1, 3, *(2 * ds.batch_shapes[0])), (1, 3, *(2 * ds.batch_shapes[1]))]
    assert sizes[0] != sizes[1]  # wide images, then tall ones


def test_quad_loader_refuses_what_cannot_make_a_group_of_four(tmp_path):
    for i in range(3):
        add_image(tmp_path, f"{i}.png", box_row(0))
    with pytest.raises(ConfigError, match="a batch of 6 images per process is not a multiple of 4"):
        create_dataloader(tmp_path / "images/train", 64, 6, 32, workers=0, quad=True)
    with pytest.raises(DatasetError, match="--quad groups each batch's images in fours: 3 training image"):
        create_dataloader(tmp_path / "images/train", 64, 8, 32, workers=0, quad=True)
