"""Trained super-resolution models: save, reload, export to ONNX, run with onnxruntime, quantise.

* :func:`save_model` writes one ``.pt`` file: ``{"format": ..., "state_dict": ...,
  "metadata": {...}}`` with plain values only (method, factor, slice profile, spacings,
  intensity scale, seed, training settings), atomically. :func:`load_model` reads it with
  ``torch.load(..., weights_only=True)`` (no code is ever unpickled) and rebuilds the model.
* :func:`export_onnx` writes the network as ONNX (dynamic batch, height and width; the
  TorchScript-based exporter, opset 17). :class:`OnnxRunner` runs it with onnxruntime on
  the CPU and is accepted wherever the torch network is (``runner=`` arguments).
  **Tolerance**: onnxruntime's float32 output matches torch within ``ONNX_TOLERANCE``
  (maximum absolute difference on intensities normalised to [0, 1]); the tests check it.
* :func:`quantize_onnx` applies onnxruntime's dynamic INT8 quantisation (weights stored as
  INT8, activations quantised on the fly; convolutions become ``ConvInteger``). Its
  accuracy cost is measured in the benchmark (PSNR of the quantised model against the
  float one), not assumed.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtorch.errors import MedTorchInputError
from medtorch.jsonvalue import plain

__all__ = ["ONNX_TOLERANCE", "OnnxRunner", "export_onnx", "load_model", "quantize_onnx", "save_model"]

FORMAT = "medtorch.enhance.sr/1"
#: Largest |onnxruntime - torch| accepted on [0, 1]-normalised intensities (float32).
ONNX_TOLERANCE = 1e-4


def _plain(value: Any) -> Any:
    """Metadata reduced to what ``torch.load(weights_only=True)`` accepts."""
    return plain(value, other="str")


def save_model(model: Any, path: str | Path) -> Path:
    """Write a :class:`~medtorch.enhance.superres.SuperResolutionModel` (state dict + metadata)."""
    from medtorch.io import atomic_path

    target = Path(path)
    payload = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
               "metadata": _plain(model.metadata)}
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def load_model(path: str | Path) -> Any:
    """Read a model written by :func:`save_model` (safely: ``weights_only=True``)."""
    from medtorch.enhance.srnet import AxisSRNet
    from medtorch.enhance.superres import SuperResolutionModel

    p = Path(path)
    if not p.is_file():
        raise MedTorchInputError(f"the model file {p} does not exist", "give the .pt file written by --save-model")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file
        raise MedTorchInputError(f"{p} is not a readable MedTorch model ({exc.__class__.__name__})",
                                 "give a .pt file written by medtorch superres --save-model") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedTorchInputError(f"{p} is not a MedTorch super-resolution model",
                                 "give a .pt file written by medtorch superres --save-model")
    meta = dict(payload["metadata"])
    cfg = meta.get("network", {})
    net = AxisSRNet(int(cfg.get("factor", meta["factor"])), int(cfg.get("features", 48)), int(cfg.get("layers", 6)),
                    tuple(cfg.get("linear_kernel", (7, 7))))
    net.load_state_dict(payload["state_dict"])
    net.eval()
    return SuperResolutionModel(net, meta)


def export_onnx(net: torch.nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export ``net`` (``[N, 1, H, W] -> [N, 1, H, W f]``) to ONNX with dynamic N, H and W."""
    import io

    from medtorch.io import atomic_path

    target = Path(path)
    net = net.eval()
    dummy = torch.zeros(1, 1, 24, 12)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "constant folding not applied" for the replicate padding: harmless
        torch.onnx.export(net, (dummy,), buffer,  # type: ignore[arg-type]  # a file object is accepted
                          dynamo=False, opset_version=opset, input_names=["low"],
                          output_names=["high"], dynamic_axes={"low": {0: "n", 2: "h", 3: "w"},
                                                               "high": {0: "n", 2: "h", 3: "wf"}})
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    return target


class OnnxRunner:
    """An onnxruntime session used like the torch network: ``runner(tensor) -> tensor``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"low": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)


def quantize_onnx(source: str | Path, target: str | Path) -> Path:
    """Dynamic INT8 quantisation of an ONNX model (onnxruntime): INT8 weights, dynamic activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from medtorch.io import atomic_path

    out = Path(target)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime logs advice on the root logger
    try:
        with atomic_path(out) as tmp:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    finally:
        logging.disable(previous)
    return out
