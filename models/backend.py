"""DetectMultiBackend: one inference call for PyTorch (.pt), TorchScript (.torchscript), ONNX (.onnx, in onnxruntime
or OpenCV DNN) and OpenVINO (``*_openvino_model/`` folders, run by the ``openvino`` package on the CPU) weights.

Every backend takes a float tensor (bs, 3, h, w) in [0, 1] and returns the decoded prediction (bs, N, 5 + nc) as a
float32 tensor on the backend's device: xywh in input pixels, objectness, class scores (sigmoid or softmax, see
``class_act``). Exported files carry their own metadata (written by utils/deploy/export.py): ``stride``, ``names``,
``class_act``, ``imgsz``, ``dynamic``, ``nc``; TorchScript in the ``config.txt`` extra file (JSON), ONNX in
``metadata_props`` (Python-literal values, as upstream YOLOv5 writes them; this project's files before 2026-12-07 hold
JSON), OpenVINO in ``<stem>.yaml`` beside the IR (``metadata.yaml`` in older exports of this project). Files
exported by upstream YOLOv5 (``shape``/``stride``/``names`` keys) are read as well.
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from models.tta import augmented_inference
from utils.checkpoint import attempt_load
from utils.deploy.export import onnx_session
from utils.deploy.ort_engine import pt_session, resolve_engine
from utils.errors import CheckpointError, ConfigError
from utils.log import get_logger
from utils.torch_utils import select_device

ORT_CHUNK = 8  # images per onnxruntime call for .pt models on the onnxruntime engine
SUPPORTED_SUFFIXES = (".pt", ".torchscript", ".onnx")  # and OpenVINO: a *_openvino_model folder or its .xml

OPENVINO_CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # not bfloat16 on CPUs that have it


def openvino_xml(w: Path) -> Optional[Path]:
    """The IR file of an OpenVINO export: w itself (.xml) or the one .xml inside a ``*_openvino_model`` folder."""
    if w.suffix.lower() == ".xml":
        return w
    if w.is_dir():
        found = sorted(w.glob("*.xml"))
        return found[0] if found else None
    return None


def _parse_value(text: Union[str, bytes]) -> Any:
    """Decode one metadata value: JSON (ours) or a Python literal (upstream YOLOv5); else the raw string."""
    if isinstance(text, bytes):
        text = text.decode()
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def _normalize_metadata(meta: dict, nc_hint: Optional[int] = None) -> dict:
    """Fill the metadata keys (stride, names, class_act, imgsz, dynamic, nc) from what a file provides."""
    names = meta.get("names")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else None
    nc = int(meta.get("nc") or (len(names) if names else 0) or nc_hint or 0)
    if names is None:
        names = {i: f"class{i}" for i in range(nc)}
    imgsz = meta.get("imgsz") or (list(meta["shape"][2:]) if meta.get("shape") else None)
    return {
        "stride": int(meta.get("stride") or 32),
        "names": names,
        "nc": nc,
        "class_act": str(meta.get("class_act") or "sigmoid"),
        "imgsz": [int(s) for s in imgsz] if imgsz else None,
        "dynamic": bool(meta.get("dynamic", False)),
        "batch": int(meta.get("batch") or (meta["shape"][0] if meta.get("shape") else 1)),
    }


class DetectMultiBackend(nn.Module):
    """Load .pt / .torchscript / .onnx / OpenVINO weights and run them with one call: ``backend(im) -> y``.

    Attributes: ``pt``, ``jit``, ``onnx``, ``openvino`` (which backend), ``stride`` (int, the largest model stride),
    ``names`` (dict int -> str), ``nc``, ``class_act`` ('sigmoid' | 'softmax'), ``imgsz`` ([h, w] the file was
    exported at, None for .pt), ``batch`` (exported batch size; 1 for .pt), ``dynamic`` (True when any input size is
    accepted: .pt, or ONNX / OpenVINO exported with dynamic axes), ``fp16``, ``device``, ``engine`` (what runs a .pt
    model: 'torch' or 'onnxruntime', see utils/deploy/ort_engine.py; ``engine="auto"`` picks onnxruntime on a CPU;
    an .onnx file runs in onnxruntime, or in OpenCV's DNN module with ``dnn=True``: engine 'opencv-dnn').
    TorchScript traces are treated as fixed-size (``dynamic`` False). ``input_size(imgsz)`` gives the [h, w] to feed;
    ``warmup(shape)`` runs zeros through once.
    """

    def __init__(self, weights: Union[str, Path], device: Union[str, torch.device] = "cpu", fp16: bool = False,
                 fuse: bool = True, engine: str = "auto", dnn: bool = False):
        super().__init__()
        w = Path(weights)
        suffix = w.suffix.lower()
        xml = openvino_xml(w)
        if xml is None and suffix not in SUPPORTED_SUFFIXES:
            raise CheckpointError(f"weights {w}: unsupported format '{suffix or w.name}' "
                                  f"(supported suffixes: {', '.join(SUPPORTED_SUFFIXES)}, or an OpenVINO "
                                  "*_openvino_model folder)")
        if not (xml or w).is_file():
            raise CheckpointError(f"weights {w}: file not found (this project never downloads weights; "
                                  "pass the path of a local .pt, .torchscript, .onnx file or OpenVINO folder)")
        if dnn and suffix != ".onnx":
            raise ConfigError(f"weights {w}: --dnn runs .onnx files through OpenCV DNN; export this model with "
                              "`python export.py --include onnx` first, or drop --dnn")
        self.device = select_device(device)
        if fp16 and self.device.type != "cuda":  # as upstream's val.py: scripts passing --half everywhere still run
            get_logger().warning(f"WARNING --half: FP16 inference runs on CUDA only; {w} runs in FP32 on "
                                 f"'{self.device}'")
            fp16 = False
        self.weights, self.fp16 = w, fp16
        self.pt, self.jit, self.onnx = suffix == ".pt", suffix == ".torchscript", suffix == ".onnx"
        self.openvino = xml is not None
        self.model, self.session = None, None
        self.engine = resolve_engine(engine, self.device, fp16)  # for a .pt file; other formats name their runtime
        if not self.pt:
            self.engine = "openvino" if self.openvino else "opencv-dnn" if dnn else suffix.lstrip(".")
        self.dnn = dnn
        if self.pt:
            meta = self._load_pt(w, fuse)
        elif self.jit:
            meta = self._load_torchscript(w)
        elif self.openvino:
            meta = self._load_openvino(xml)
        elif dnn:
            meta = self._load_dnn(w)
        else:
            meta = self._load_onnx(w)
        for k, v in meta.items():
            setattr(self, k, v)

    def _load_pt(self, w: Path, fuse: bool) -> dict:
        """Load a PyTorch checkpoint; metadata comes from the model's attributes."""
        model = attempt_load(w, device=self.device, fuse=fuse)
        self.model = model.half() if self.fp16 else model
        stride = int(max(model.stride.tolist())) if hasattr(model, "stride") else 32
        meta = {"stride": stride, "names": getattr(model, "names", None), "nc": getattr(model, "nc", None),
                "class_act": getattr(model, "class_act", "sigmoid")}
        if self.engine == "onnxruntime":
            self._attach_session(w)
        return {**_normalize_metadata(meta), "dynamic": True, "imgsz": None}

    def _attach_session(self, w: Path) -> None:
        """Run the loaded .pt model through its cached onnxruntime export; PyTorch (with the reason logged) if not."""
        self.session, reason = pt_session(self.model, w, self.device)
        if self.session is None:
            get_logger().warning(f"WARNING {w}: onnxruntime engine unavailable, running PyTorch ({reason})")
            self.engine = "torch"
            return
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_fp16 = False

    def _load_torchscript(self, w: Path) -> dict:
        """Load a TorchScript file and its 'config.txt' metadata."""
        extra = {"config.txt": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
                model = torch.jit.load(str(w), map_location=self.device, _extra_files=extra)
        except Exception as e:  # corrupt or not a TorchScript archive
            raise CheckpointError(f"weights {w}: cannot be read as TorchScript ({type(e).__name__}: {e})") from e
        self.model = model.half() if self.fp16 else model.float()
        self.model.eval()
        meta = _parse_value(extra["config.txt"]) if extra["config.txt"] else {}
        if not isinstance(meta, dict):
            meta = {}
        if not meta:
            get_logger().warning(f"WARNING {w}: no metadata (config.txt); assuming stride 32 and numbered classes")
        return {**_normalize_metadata(meta), "dynamic": False}

    def _load_onnx(self, w: Path) -> dict:
        """Open an onnxruntime session (CUDA provider when the device is CUDA and it is available) with torch's
        intra-op thread count, as the .pt files' onnxruntime engine has."""
        try:
            self.session = onnx_session(w, self.device, threads=torch.get_num_threads())
        except Exception as e:  # invalid protobuf, unsupported opset
            raise CheckpointError(f"weights {w}: cannot be opened by onnxruntime ({type(e).__name__}: {e})") from e
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_names = inp.name, [o.name for o in self.session.get_outputs()]
        self.input_fp16 = inp.type == "tensor(float16)"
        raw = {k: _parse_value(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}
        nc_hint = out.shape[-1] - 5 if isinstance(out.shape[-1], int) else None
        meta = _normalize_metadata(raw, nc_hint)
        static = all(isinstance(d, int) for d in inp.shape)
        meta["dynamic"] = not static
        if static:
            meta["imgsz"], meta["batch"] = [int(inp.shape[2]), int(inp.shape[3])], int(inp.shape[0])
        return meta

    def _load_dnn(self, w: Path) -> dict:
        """Read an ONNX file into OpenCV's DNN module (CPU); metadata and input shape from the file itself."""
        import cv2
        import onnx

        try:
            proto = onnx.load(str(w), load_external_data=False)
            self.session = cv2.dnn.readNetFromONNX(str(w))
        except Exception as e:  # invalid protobuf, an operator OpenCV lacks
            raise CheckpointError(f"weights {w}: cannot be read by OpenCV DNN ({type(e).__name__}: {e})") from e
        if self.device.type != "cpu":
            get_logger().warning(f"WARNING {w.name}: --dnn runs on the CPU here (OpenCV's CPU backend)")
        raw = {p.key: _parse_value(p.value) for p in proto.metadata_props}
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in proto.graph.input[0].type.tensor_type.shape.dim]
        last = proto.graph.output[0].type.tensor_type.shape.dim[-1]
        meta = _normalize_metadata(raw, last.dim_value - 5 if last.HasField("dim_value") else None)
        meta["dynamic"] = None in dims
        if not meta["dynamic"]:
            meta["imgsz"], meta["batch"] = [dims[2], dims[3]], dims[0]
        self.input_fp16 = False  # OpenCV takes float32 input for FP16 graphs too
        return meta

    def _load_openvino(self, xml: Path) -> dict:
        """Compile an OpenVINO IR for the CPU in float32; metadata from <stem>.yaml beside it (upstream's file and
        ours; metadata.yaml in this project's older exports), else the IR's rt_info.

        OpenVINO's CPU plugin otherwise runs in bfloat16 on CPUs that have it (AVX-512 BF16, AMX), which moved
        yolov5n's outputs by 0.04 against PyTorch; float32 keeps the parity of every other backend.
        """
        import openvino as ov
        import yaml

        try:
            model = ov.Core().read_model(str(xml))
            config = {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": torch.get_num_threads()}  # as torch's
            self.session = ov.Core().compile_model(model, "CPU", config)
        except Exception as e:  # missing .bin, not an IR
            raise CheckpointError(f"weights {xml}: cannot be read by OpenVINO ({type(e).__name__}: {e})") from e
        meta_file = next((f for f in (xml.with_suffix(".yaml"), xml.parent / "metadata.yaml") if f.is_file()), None)
        raw = yaml.safe_load(meta_file.read_text()) if meta_file else {}
        if not raw and model.has_rt_info("model_info"):
            raw = {k: _parse_value(v.astype(str)) for k, v in model.get_rt_info("model_info").items()}
        shape = model.inputs[0].get_partial_shape()
        meta = _normalize_metadata(raw or {}, None)
        meta["dynamic"] = not shape.is_static
        if shape.is_static:
            dims = [d.get_length() for d in shape]
            meta["imgsz"], meta["batch"] = [dims[2], dims[3]], dims[0]
        self.input_fp16 = False
        return meta

    def describe(self) -> str:
        """How log lines and errors name this model: its weights path (an Ensemble names all of its members)."""
        return str(self.weights)

    def forward(self, im: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Run inference on im (bs, 3, h, w) float in [0, 1]; returns y (bs, N, 5 + nc) float32 on self.device.

        ``augment``: test-time augmentation (models/tta.py) for .pt weights, on either engine; other formats do not
        know their detection levels, so they raise ConfigError (YOLOv5 silently ignores it there).
        """
        if augment:
            self.check_augment()
            head = self.model.model[-1]
            return augmented_inference(self._forward_plain, im, head.stride.tolist(), head.na)
        return self._forward_plain(im)

    def check_augment(self) -> None:
        """ConfigError unless these weights can run test-time augmentation (.pt: the detection levels are known)."""
        if not self.pt:
            raise ConfigError(f"weights {self.weights}: --augment (test-time augmentation) needs .pt weights; "
                              f"an exported {self.engine} model runs one fixed pass")

    def _forward_plain(self, im: torch.Tensor) -> torch.Tensor:
        """One pass of the loaded model or session."""
        if (self.openvino or self.onnx) and not self.dynamic and self.batch and len(im) != self.batch:
            return self._forward_fixed_batches(im)
        if self.dnn or self.openvino:
            self._check_fixed_size(im)
            x = im.detach().cpu().float().numpy()
            if self.dnn:
                self.session.setInput(x)
                y = self.session.forward()
            else:
                y = self.session(x)[0]
            return torch.from_numpy(y).float().to(self.device)
        if self.onnx or self.session is not None:  # an .onnx file, or a .pt model on the onnxruntime engine
            return self._forward_onnx(im)
        im = im.to(self.device, torch.float16 if self.fp16 else torch.float32)
        with torch.inference_mode():
            y = self.model(im)
        if isinstance(y, (list, tuple)):  # .pt eval output is (y, raw)
            y = y[0]
        return y.float()

    def _forward_fixed_batches(self, im: torch.Tensor) -> torch.Tensor:
        """A fixed-batch export fed any number of images: runs of its batch, the last one padded with blank images
        whose rows are dropped (a batch-3 export takes one image from detect.py, or val.py's last partial batch)."""
        n, b = len(im), self.batch
        if n % b:
            im = torch.cat([im, im.new_zeros((b - n % b, *im.shape[1:]))])
        return torch.cat([self._forward_plain(im[i:i + b]) for i in range(0, len(im), b)])[:n]

    def _check_fixed_size(self, im: torch.Tensor) -> None:
        """ConfigError when a fixed-size export gets images of another size (or layout)."""
        if not self.dynamic and tuple(im.shape[1:]) != (3, *self.imgsz):
            h, w = self.imgsz
            hint = f"--imgsz {h}" if h == w else f"detect.py --imgsz {h} {w}; val.py needs a square export"
            raise ConfigError(f"weights {self.weights}: exported for the fixed input size {h}x{w} (3 channels), got "
                              f"{tuple(im.shape[1:])}; feed that size ({hint}) or re-export with --dynamic")

    def _forward_onnx(self, im: torch.Tensor) -> torch.Tensor:
        """onnxruntime inference; a wrong input size on a fixed-size export raises ConfigError.

        A .pt model on the onnxruntime engine runs ``ORT_CHUNK`` images at a time: onnxruntime keeps its largest
        activations allocated, and on a CPU a bigger batch is not faster per image, only larger in memory.
        """
        self._check_fixed_size(im)
        dtype = np.float16 if self.input_fp16 else np.float32
        x = im.detach().cpu().numpy()
        x = x if x.dtype == dtype else x.astype(dtype)  # no copy for the usual float32 input
        step = ORT_CHUNK if self.pt else len(x)
        first = self.session.run(self.output_names, {self.input_name: x[:step]})[0]
        if len(x) <= step:
            return torch.from_numpy(first).float().to(self.device)
        y = np.empty((len(x), *first.shape[1:]), dtype=first.dtype)  # later chunks are written into it directly
        y[:step] = first
        binding = self.session.io_binding()
        for i in range(step, len(x), step):
            out = y[i:i + step]
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x[i:i + step]))
            binding.bind_output(self.output_names[0], "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            self.session.run_with_iobinding(binding)
        return torch.from_numpy(y).float().to(self.device)

    def warmup(self, imgsz: Sequence[int] = (1, 3, 640, 640), runs: int = 1) -> None:
        """Run a few zero images through the model (first-call allocations, cuDNN/ORT kernel selection)."""
        im = torch.zeros(tuple(imgsz), device=self.device)
        for _ in range(runs):
            self.forward(im)

    def input_size(self, imgsz: Sequence[int]) -> list[int]:
        """The [h, w] to feed this backend: imgsz for dynamic models, else the exported size (warning if different)."""
        imgsz = list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)
        if self.dynamic or not self.imgsz or imgsz == self.imgsz:
            return imgsz
        get_logger().warning(f"WARNING {self.weights.name} was exported at fixed size {self.imgsz}; "
                             f"using it instead of --imgsz {imgsz}")
        return list(self.imgsz)
