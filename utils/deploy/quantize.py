"""INT8 post-training quantization of an OpenVINO IR with NNCF, calibrated on a dataset's training images.

NNCF (``nncf.quantize``, https://github.com/openvinotoolkit/nncf) runs the float model over the calibration images,
records the range of each activation that feeds a convolution or matrix product, inserts 8-bit fake-quantize
operations there (the ``MIXED`` preset: symmetric weights, asymmetric activations) and corrects the convolutions'
biases for the shift that rounding causes (fast bias correction). OpenVINO's CPU plugin then runs those layers
with integer arithmetic.

What stays in float: every operation of the Detect head after its three output convolutions (the sigmoid, the
grid and anchor arithmetic that turns offsets into pixels, the softmax of ce models). Quantizing the decode would
round box coordinates to 1/256 of their range, several pixels at 640.

Calibration reads the ``train`` split, never ``val``: val.py reports on ``val``, and calibrating on the images a
result is measured on is tuning on the report data.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from utils.data.data_config import check_dataset, find_data_yaml
from utils.data.label_scan import list_image_files
from utils.errors import ConfigError, DatasetError
from utils.log import get_logger

CALIBRATION_SPLIT = "train"


@contextlib.contextmanager
def quiet_cpp_extension() -> Iterator[None]:
    """Hide torch.utils.cpp_extension's "No CUDA runtime is found" warning, logged when nncf imports it."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_nncf() -> ModuleType:
    """The nncf module, or a ConfigError saying how to install it."""
    try:
        import nncf
    except ImportError as e:
        raise ConfigError(f"--int8 needs NNCF ({e}): pip install nncf") from e
    nncf.set_log_level(logging.WARNING)  # not one INFO line per operation left in float
    return nncf


def trained_data(weights_opt: Optional[dict], weights: Path) -> str:
    """The data YAML the weights were trained on (the checkpoint's training options), for calibration without --data;
    found as --data is (as given, then under the project and its data/ folder)."""
    trained_on = (weights_opt or {}).get("data")
    if trained_on:
        try:
            return str(find_data_yaml(trained_on))
        except DatasetError:
            pass
    why = f" ({weights.name} was trained on {trained_on}, which is not here)" if trained_on else ""
    raise ConfigError(f"--int8 needs calibration images: give --data your_data.yaml{why}")


def calibration_files(data_yaml: str, n: int, seed: int = 0) -> list[str]:
    """Up to n image paths drawn without replacement (fixed seed) from the data YAML's training split, sorted."""
    if n < 1:
        raise ConfigError(f"--int8-images {n}: must be at least 1")
    data = check_dataset(data_yaml, only=[CALIBRATION_SPLIT])
    files = list_image_files(data[CALIBRATION_SPLIT], prefix=f"{data_yaml} '{CALIBRATION_SPLIT}': ")
    if not files:
        raise DatasetError(f"{data_yaml}: no images in the '{CALIBRATION_SPLIT}' split to calibrate INT8 on")
    if len(files) > n:
        pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
        files = [files[i] for i in sorted(pick)]
    return readable(files, data_yaml)


def readable(files: list[str], source: str) -> list[str]:
    """The files OpenCV can decode, read once before any export work; the others are named in a warning."""
    import cv2

    ok = [f for f in files if cv2.imread(f, cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None]
    if len(ok) < len(files):
        bad = sorted(set(files) - set(ok))
        get_logger().warning(f"WARNING {source}: {len(bad)} calibration image(s) cannot be read and are left out "
                             f"(first: {bad[0]})")
    if not ok:
        raise DatasetError(f"{source}: none of the {len(files)} calibration images can be read")
    return ok


def calibration_batches(files: Sequence[str], imgsz: Sequence[int], stride: int, batch: int) -> Iterator[np.ndarray]:
    """Letterboxed float32 (batch, 3, h, w) arrays in [0, 1], the input the exported graph expects; last one padded."""
    import cv2

    from utils.deploy.sources import prepare_image

    for i in range(0, len(files), batch):
        chunk = list(files[i:i + batch])
        chunk += [chunk[-1]] * (batch - len(chunk))  # a static batch size needs full batches
        ims = []
        for f in chunk:
            im0 = cv2.imread(f)
            if im0 is None:
                raise DatasetError(f"{f}: cannot be read as an image (INT8 calibration)")
            ims.append(prepare_image(im0, list(imgsz), stride, auto=False))
        yield np.stack(ims).astype(np.float32) / 255.0


def head_float_pattern(head_index: int) -> str:
    """Regex of the Detect head's operations to keep in float: all but its output convolutions ``m.<i>/Conv``."""
    return rf"/model\.{head_index}/(?!m\.\d+/Conv).*"


def quantize_openvino(ov_model: Any, files: Sequence[str], imgsz: Sequence[int], stride: int, batch: int,
                      head_index: int) -> Any:
    """The INT8 version of an OpenVINO model, calibrated on files (see the module docstring for what is quantized)."""
    batches = list(calibration_batches(files, imgsz, stride, batch))
    with quiet_cpp_extension():
        nncf = import_nncf()
        return nncf.quantize(ov_model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(batches), ignored_scope=nncf.IgnoredScope(
                                 patterns=[head_float_pattern(head_index)]))
