"""Loading a user's segmentation model offline: MONAI bundles, TorchScript files, nnU-Net v2.

Nothing here downloads anything, and no pickled Python object is ever unpickled.

Model sources (:func:`load_model` tells them apart):

* **MONAI bundle folder** -- ``configs/metadata.json`` plus ``configs/inference.json``
  (or ``.yaml``/``.yml``), with weights in ``models/model.pt`` (a state dict, loaded with
  ``torch.load(..., weights_only=True)`` into the network that the config's ``network_def``
  defines) or ``models/model.ts`` (TorchScript). The network, the preprocessing transforms
  and the sliding-window inferer are instantiated with MONAI's own
  :class:`monai.bundle.ConfigParser`, but only after :func:`check_config_safe` has checked
  every item involved: no ``$`` Python expressions (unless ``trust_code=True``), no debug
  mode, and every ``_target_`` a MONAI or ``torch.nn`` class of the expected kind (a
  ``torch.nn.Module`` for the network, a MONAI ``Transform`` for preprocessing, a MONAI
  ``Inferer`` for the inferer). The rest of the config (data lists, evaluators, handlers)
  is never evaluated.
* **TorchScript file** (``.ts``, ``.pt``, ``.pth``, ``.zip`` holding a scripted or traced
  module), e.g. exported by ``monai.bundle ckpt_export``: its metadata and inference config
  travel inside it as extra files (``metadata.json``, ``inference.json``) and are used the
  same way. TorchScript runs only TorchScript operations, not arbitrary Python.
* **nnU-Net v2 trained-model folder** (``dataset.json``, ``plans.json``,
  ``fold_N/checkpoint_final.pth``) when the ``nnunetv2`` package is installed. The
  checkpoint is loaded with ``weights_only=True`` (numpy scalars and dtypes allowed, as
  nnU-Net stores its training log with them), then nnU-Net's own predictor does its
  preprocessing, sliding window and mirroring.

Input channels are mapped to volumes by the model's metadata
(``network_data_format.inputs.image.num_channels`` and ``channel_def``, or nnU-Net's
``channel_names``): :func:`map_channels` orders volumes given by name and refuses a wrong
channel count with a message that lists the channels the model expects.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from medtorch.errors import MedTorchInputError
from medtorch.volume import Volume

__all__ = [
    "BUNDLE_CONFIG_NAMES",
    "LoadedModel",
    "OutputMode",
    "canonical_channel_name",
    "check_config_safe",
    "describe_model",
    "find_bundle_config",
    "is_bundle_dir",
    "is_nnunet_dir",
    "load_model",
    "load_state_dict_safely",
    "map_channels",
    "read_bundle_metadata",
]

logger = logging.getLogger(__name__)

#: Inference config file names looked for in a bundle's ``configs`` folder, in order.
BUNDLE_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")

OutputMode = Literal["softmax", "sigmoid"]
ModelSource = Literal["bundle", "bundle-torchscript", "torchscript", "nnunet"]

#: Transforms that read or write files, or only add the channel axis: the volumes come in
#: as channel-first tensors already, so these are skipped when preprocessing.
_SKIPPED_TRANSFORMS = (
    "LoadImage", "LoadImaged", "SaveImage", "SaveImaged", "EnsureChannelFirst", "EnsureChannelFirstd",
    "AddChannel", "AddChanneld", "LoadImageD", "LoadImageDict", "SaveImageD", "SaveImageDict",
)

# Aliases of the usual MR/CT channel names (lower case, letters and digits only).
_CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "t1c": ("t1c", "t1ce", "t1gd", "t1post", "t1contrast", "t1cgd", "t1wce", "t1wc", "t1plusc"),
    "t1": ("t1", "t1n", "t1w", "t1native", "t1pre"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
    "ct": ("ct", "cta"),
    "pet": ("pet", "pt"),
    "adc": ("adc",),
    "dwi": ("dwi", "dw"),
}


# -- the loaded model ------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A network ready for inference plus what its metadata says about inputs and outputs.

    Attributes:
        network: callable on ``[B, C, ...]`` float tensors, in eval mode, on ``device``.
        source: ``"bundle"``, ``"bundle-torchscript"``, ``"torchscript"`` or ``"nnunet"``.
        path: the folder or file the user chose.
        weights: the weights file actually loaded.
        num_channels: input channels the network takes (None: unknown, e.g. a bare TorchScript).
        channel_names: one name per input channel, in order ("" where the metadata has none).
        output_names: name of each output channel (softmax: each class, index = label value;
            sigmoid: each region, e.g. tumor core, whole tumor, enhancing tumor).
        output_mode: ``"softmax"`` (one class per voxel: argmax) or ``"sigmoid"`` (independent
            channels: threshold).
        preprocessing: MONAI dictionary transforms applied to ``{image_key: MetaTensor}``
            before inference (loaders and channel-first transforms already removed).
        image_key: the data key the transforms use for the image.
        roi_size, sw_batch_size, overlap, sw_mode: the sliding-window settings of the
            bundle's inferer (None where it has none).
        metadata: the bundle's ``metadata.json`` (or nnU-Net's ``dataset.json``).
        label_convention: ``"brats2021"`` / ``"brats2023"`` when the metadata says so.
        device: where the network is.
        nnunet: the nnU-Net predictor (nnU-Net folders only).
    """

    network: Any
    source: ModelSource
    path: Path
    weights: Path | None = None
    num_channels: int | None = None
    channel_names: list[str] = field(default_factory=list)
    output_names: dict[int, str] = field(default_factory=dict)
    output_mode: OutputMode = "softmax"
    preprocessing: list[Any] = field(default_factory=list)
    image_key: str = "image"
    roi_size: tuple[int, ...] | None = None
    sw_batch_size: int | None = None
    overlap: float | None = None
    sw_mode: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    label_convention: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    nnunet: Any = None

    def describe(self) -> dict[str, Any]:
        """Plain values (JSON-able) that describe the model, for reports and the Slicer UI."""
        return {
            "source": self.source,
            "path": str(self.path),
            "weights": str(self.weights) if self.weights else None,
            "num_channels": self.num_channels,
            "channel_names": list(self.channel_names),
            "output_names": {int(k): v for k, v in self.output_names.items()},
            "output_mode": self.output_mode,
            "roi_size": list(self.roi_size) if self.roi_size else None,
            "overlap": self.overlap,
            "label_convention": self.label_convention,
            "preprocessing": [type(t).__name__ for t in self.preprocessing],
        }


# -- safe loading of weights -------------------------------------------------------------------


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: the dict itself, or under a usual key."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = dict(obj)
    elif isinstance(obj, Mapping):
        for key in ("model", "state_dict", "network", "net", "model_state_dict", "network_weights"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                sd = dict(inner)
                break
        else:
            raise MedTorchInputError(
                f"{path.name} holds no state dict (keys: {', '.join(map(str, list(obj)[:8]))})",
                "save the weights alone (the model's state dict) as model.pt, or make a bundle with 'medtorch train-seg'",
            )
    else:
        raise MedTorchInputError(
            f"{path.name} holds a {type(obj).__name__}, not a state dict of tensors",
            "save the weights alone (the model's state dict) as model.pt, or make a bundle with 'medtorch train-seg'",
        )
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_safely(path: str | os.PathLike[str], *, allow_numpy: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors with ``torch.load(..., weights_only=True)``.

    Args:
        path: a ``.pt``/``.pth`` file holding a state dict (or a dict with one under
            ``model``, ``state_dict``, ``network``, ``net`` or ``network_weights``).
        allow_numpy: also accept numpy scalars, arrays and dtypes in the file (data, not
            code; nnU-Net checkpoints store their training log with them).

    Raises:
        MedTorchInputError: the file is missing, is not a torch checkpoint, or holds
            pickled Python objects (classes, functions, code), which are never loaded.
    """
    p = Path(path)
    if not p.is_file():
        raise MedTorchInputError(f"the weights file {p} does not exist", "check the model folder")
    safe: list[Any] = []
    if allow_numpy:
        import numpy as np

        try:  # numpy >= 2 moved the pickled scalar constructor
            from numpy._core.multiarray import scalar as np_scalar  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import scalar as np_scalar  # type: ignore[no-redef]
        try:
            from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        safe = [np_scalar, np.dtype, np.ndarray, _reconstruct]
        safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool", "float16", "uint8")]
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MedTorchInputError(
            f"{p.name} holds pickled Python objects or code, not only tensors, and MedTorch never loads "
            f"those (torch.load weights_only=True refused it: {str(exc).splitlines()[0][:160]})",
            "export the weights alone (the model's state dict) as model.pt, or use the TorchScript "
            "model (model.ts) if the bundle has one",
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise MedTorchInputError(
            f"{p.name} is not a readable torch checkpoint ({str(exc).splitlines()[0][:160]})",
            "check that the file is complete and is a PyTorch weights file (.pt)",
        ) from None
    return _unwrap_state_dict(obj, p)


# -- bundle configs ------------------------------------------------------------------------------


def is_bundle_dir(path: str | os.PathLike[str]) -> bool:
    """A folder with ``configs/metadata.json`` (a MONAI bundle)."""
    return (Path(path) / "configs" / "metadata.json").is_file()


def is_nnunet_dir(path: str | os.PathLike[str]) -> bool:
    """A folder with nnU-Net v2's ``dataset.json`` and ``plans.json``."""
    p = Path(path)
    return (p / "dataset.json").is_file() and (p / "plans.json").is_file()


def read_bundle_metadata(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle as a dict (clear error if unreadable)."""
    p = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedTorchInputError(f"{p} does not exist", "choose a MONAI bundle folder (it has configs/metadata.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedTorchInputError(f"{p} is not valid JSON ({exc})", "fix or replace the bundle's metadata.json") from None
    if not isinstance(meta, dict):
        raise MedTorchInputError(f"{p} does not hold a JSON object", "fix or replace the bundle's metadata.json")
    return meta


def find_bundle_config(bundle_dir: str | os.PathLike[str]) -> Path | None:
    """The bundle's inference config (``configs/inference.json|yaml|yml``), or None."""
    for name in BUNDLE_CONFIG_NAMES:
        p = Path(bundle_dir) / "configs" / name
        if p.is_file():
            return p
    return None


def _load_config_file(path: Path) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    try:
        cfg = ConfigParser.load_config_file(str(path))
    except Exception as exc:  # json / yaml errors
        raise MedTorchInputError(f"{path} cannot be read ({exc})", "fix the bundle's inference config") from None
    if not isinstance(cfg, dict):
        raise MedTorchInputError(f"{path} does not hold a mapping", "fix the bundle's inference config")
    return cfg


_REF = re.compile(r"@([\w#:]+)")


def _resolve_target(target: str) -> Any | None:
    """The class or function a ``_target_`` names, limited to MONAI and ``torch.nn``."""
    from pydoc import locate

    from monai.bundle import ComponentLocator

    module = ComponentLocator().get_component_module_name(target)
    if isinstance(module, list):
        module = module[0]
    if module is not None:
        return locate(f"{module}.{target}")
    if target.startswith(("monai.", "torch.nn.")):
        return locate(target)
    return None


def check_config_safe(parser: Any, ids: Sequence[str], kinds: Mapping[str, type | tuple[type, ...]],
                      trust_code: bool = False) -> None:
    """Refuse config items that would run code beyond MONAI's instantiation of known classes.

    Walks the items ``ids`` and everything they reference (``@id``). Each ``_target_`` must
    name a MONAI component (short name or ``monai.*`` path) or a ``torch.nn.*`` class, and
    for the top-level item ``id`` be a subclass of ``kinds[id]``; nested targets must be
    classes. ``$`` expressions are refused unless ``trust_code``; ``_mode_: debug`` always.

    Raises:
        MedTorchInputError: naming the item and what to do.
    """
    seen: set[str] = set()

    def walk(value: Any, where: str, top_kind: Any) -> None:
        if isinstance(value, dict):
            target = value.get("_target_")
            if target is not None:
                if not isinstance(target, str):
                    raise MedTorchInputError(f"config item {where} has a non-text _target_", "fix the bundle config")
                if str(value.get("_mode_", "default")) == "debug":
                    raise MedTorchInputError(f"config item {where} asks for debug mode", "remove _mode_: debug")
                if target.startswith("$") and not trust_code:
                    raise _expr_error(where, target)
                obj = None if target.startswith(("$", "@")) else _resolve_target(target)
                if obj is None and not target.startswith(("$", "@")):
                    raise MedTorchInputError(
                        f"config item {where} names {target!r}, which is not a MONAI or torch.nn component",
                        "use MONAI network and transform classes in the bundle, or export the model to TorchScript",
                    )
                if obj is not None:
                    expected = top_kind if top_kind is not None else object
                    if not (isinstance(obj, type) and issubclass(obj, expected)):
                        raise MedTorchInputError(
                            f"config item {where} names {target!r}, which is not a "
                            f"{getattr(expected, '__name__', 'class')} as this part of the bundle needs",
                            "fix the bundle config (network_def must build a network, preprocessing "
                            "MONAI transforms, inferer a MONAI inferer)",
                        )
            for k, v in value.items():
                if k in ("_target_", "_disabled_", "_desc_", "_requires_", "_mode_"):
                    continue
                walk(v, f"{where}#{k}", None if k != "transforms" else top_kind)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}#{i}", top_kind)
        elif isinstance(value, str):
            if value.startswith("$"):
                if not trust_code:
                    raise _expr_error(where, value)
                refs = _REF.findall(value)
            elif value.startswith("@"):
                refs = [value[1:]]
            else:
                refs = []
            for ref in refs:
                ref = ref.replace("::", "#")
                if ref not in seen:
                    seen.add(ref)
                    try:
                        sub = parser.get(ref)
                    except Exception:
                        raise MedTorchInputError(f"config item {where} refers to @{ref}, which is not defined",
                                                 "fix the bundle config") from None
                    walk(sub, ref, None)

    for item_id in ids:
        seen.add(item_id)
        walk(parser.get(item_id), item_id, kinds.get(item_id))


def _expr_error(where: str, expr: str) -> MedTorchInputError:
    short = expr if len(expr) < 80 else expr[:77] + "..."
    return MedTorchInputError(
        f"the bundle config item {where} is Python code ({short!r}), which MedTorch does not run from a model "
        "folder by default",
        "replace the expression by plain values in the bundle's inference config, or, if you trust the bundle's "
        "author, allow it (trust_code=True, --trust-bundle-code)",
    )


def _make_parser(config: dict[str, Any], meta: dict[str, Any] | None, bundle_dir: Path | None) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser(dict(config))
    if meta is not None:
        parser.read_meta(meta)
    if bundle_dir is not None and "bundle_root" not in parser.config:  # type: ignore[operator]
        parser["bundle_root"] = str(bundle_dir)
    parser.resolve_macro_and_relative_ids()
    return parser


def _has(parser: Any, item_id: str) -> bool:
    try:
        return parser.get(item_id) is not None
    except Exception:
        return False


def _network_from_config(parser: Any, trust_code: bool) -> torch.nn.Module:
    if not _has(parser, "network_def"):
        raise MedTorchInputError("the bundle's inference config has no network_def",
                                 "add network_def (the network's _target_ and arguments) to configs/inference.json")
    check_config_safe(parser, ["network_def"], {"network_def": torch.nn.Module}, trust_code)
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except MedTorchInputError:
        raise
    except Exception as exc:
        raise MedTorchInputError(f"the bundle's network_def cannot be built ({type(exc).__name__}: {exc})",
                                 "fix network_def in the bundle's inference config") from None
    if not isinstance(net, torch.nn.Module):
        raise MedTorchInputError("the bundle's network_def does not build a torch.nn.Module", "fix network_def")
    return net


def _preprocessing_from_config(parser: Any, trust_code: bool) -> tuple[list[Any], str]:
    """MONAI transforms of ``preprocessing`` (minus loaders), and the image key."""
    from monai.transforms import Transform

    if not _has(parser, "preprocessing"):
        return [], "image"
    pre = parser.get("preprocessing")
    items: list[tuple[str, Any]]
    if isinstance(pre, dict) and isinstance(pre.get("transforms"), list):
        items = [(f"preprocessing#transforms#{i}", t) for i, t in enumerate(pre["transforms"])]
    elif isinstance(pre, list):
        items = [(f"preprocessing#{i}", t) for i, t in enumerate(pre)]
    else:
        raise MedTorchInputError("the bundle's preprocessing is not a Compose or a list of transforms",
                                 "write preprocessing as {'_target_': 'Compose', 'transforms': [...]}")
    image_key = "image"
    out: list[Any] = []
    for item_id, cfg in items:
        target = cfg.get("_target_", "") if isinstance(cfg, dict) else ""
        name = str(target).rsplit(".", 1)[-1]
        if name in _SKIPPED_TRANSFORMS:
            if name.startswith("LoadImage"):
                keys = cfg.get("keys", "image")
                if isinstance(keys, str) and not keys.startswith(("@", "$")):
                    image_key = keys
                elif isinstance(keys, list) and keys and isinstance(keys[0], str):
                    image_key = keys[0]
            continue
        if isinstance(cfg, dict) and cfg.get("_disabled_") in (True, "true", "True"):
            continue
        check_config_safe(parser, [item_id], {item_id: Transform}, trust_code)
        if name in ("Orientationd", "OrientationD", "OrientationDict") and not cfg.get("labels"):
            # the same reorientation without nibabel, which MONAI's Orientation calls
            from medtorch.segment.orientation import orient_to_axcodes_transform as _orient_to_axcodes_transform

            keys = parser.get_parsed_content(f"{item_id}#keys", instantiate=False) if "keys" in cfg else image_key
            axcodes = parser.get_parsed_content(f"{item_id}#axcodes", instantiate=False) if "axcodes" in cfg else None
            if isinstance(axcodes, str) and not cfg.get("as_closest_canonical"):
                out.append(_orient_to_axcodes_transform(keys, axcodes))
                continue
        try:
            t = parser.get_parsed_content(item_id, instantiate=True)
        except Exception as exc:
            raise MedTorchInputError(f"the bundle's preprocessing step {name} cannot be built ({exc})",
                                     "fix the bundle's preprocessing") from None
        if t is not None:
            out.append(t)
    return out, image_key


def _inferer_settings(parser: Any, trust_code: bool) -> dict[str, Any]:
    from monai.inferers import Inferer

    if not _has(parser, "inferer"):
        return {}
    try:
        check_config_safe(parser, ["inferer"], {"inferer": Inferer}, trust_code)
        inferer = parser.get_parsed_content("inferer", instantiate=True)
    except MedTorchInputError as exc:
        logger.warning("ignoring the bundle's inferer: %s", exc)
        return {}
    except Exception as exc:
        logger.warning("ignoring the bundle's inferer (%s)", exc)
        return {}
    out: dict[str, Any] = {}
    roi = getattr(inferer, "roi_size", None)
    if roi is not None:
        out["roi_size"] = tuple(int(r) for r in (roi if isinstance(roi, (list, tuple)) else [roi] * 3))
    for attr, key, cast in (("sw_batch_size", "sw_batch_size", int), ("overlap", "overlap", float), ("mode", "sw_mode", str)):
        v = getattr(inferer, attr, None)
        if v is not None:
            try:
                out[key] = cast(v if not isinstance(v, (list, tuple)) else v[0])
            except (TypeError, ValueError):
                pass
    if hasattr(out.get("sw_mode"), "value"):
        out["sw_mode"] = out["sw_mode"].value
    return out


def _output_mode_from_config(config: dict[str, Any] | None, output_names: Mapping[int, str]) -> OutputMode:
    """``sigmoid`` when the postprocessing activates with a sigmoid or thresholds, else ``softmax``."""
    text = json.dumps(config.get("postprocessing", {})) if config else ""
    if re.search(r'"sigmoid":\s*true', text) or re.search(r'"threshold":\s*0?\.\d|"threshold":\s*[1-9]', text):
        return "sigmoid"
    if re.search(r'"softmax":\s*true|"argmax":\s*true', text):
        return "softmax"
    names = {canonical_region(n) for n in output_names.values()}
    if {"TC", "WT", "ET"} <= names:
        return "sigmoid"
    return "softmax"


# -- metadata ---------------------------------------------------------------------------------


def _channel_def(d: Any) -> dict[int, str]:
    if not isinstance(d, Mapping):
        return {}
    out: dict[int, str] = {}
    for k, v in d.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            continue
    return out


def _metadata_io(meta: Mapping[str, Any]) -> tuple[int | None, list[str], dict[int, str], int | None]:
    """(num input channels, input names, output names, num output channels) from bundle metadata."""
    ndf = meta.get("network_data_format", {}) if isinstance(meta, Mapping) else {}
    inputs = ndf.get("inputs", {}) if isinstance(ndf, Mapping) else {}
    outputs = ndf.get("outputs", {}) if isinstance(ndf, Mapping) else {}
    image = inputs.get("image") if isinstance(inputs, Mapping) else None
    if image is None and isinstance(inputs, Mapping) and inputs:
        image = next(iter(inputs.values()))
    pred = outputs.get("pred") if isinstance(outputs, Mapping) else None
    if pred is None and isinstance(outputs, Mapping) and outputs:
        pred = next(iter(outputs.values()))
    n_in = None
    names: list[str] = []
    if isinstance(image, Mapping):
        try:
            n_in = int(image["num_channels"]) if image.get("num_channels") is not None else None
        except (TypeError, ValueError):
            n_in = None
        cdef = _channel_def(image.get("channel_def"))
        modality = image.get("modality")
        if cdef:
            n = n_in if n_in is not None else max(cdef) + 1
            names = [cdef.get(i, "") for i in range(n)]
        elif isinstance(modality, list):
            names = [str(m) for m in modality]
        elif isinstance(modality, Mapping):
            cm = _channel_def(modality)
            names = [cm.get(i, "") for i in range(max(cm) + 1)] if cm else []
        if n_in is None and names:
            n_in = len(names)
        if n_in is not None and len(names) < n_in:
            names += [""] * (n_in - len(names))
    out_names: dict[int, str] = {}
    n_out = None
    if isinstance(pred, Mapping):
        out_names = _channel_def(pred.get("channel_def"))
        try:
            n_out = int(pred["num_channels"]) if pred.get("num_channels") is not None else None
        except (TypeError, ValueError):
            n_out = None
    return n_in, names, out_names, n_out


def _label_convention_from_meta(meta: Mapping[str, Any]) -> str | None:
    """``brats2021``/``brats2023`` when the metadata says which BraTS labels the model uses."""
    sources = [meta]
    if isinstance(meta.get("medtorch"), Mapping):
        sources.append(meta["medtorch"])
    for src in sources:
        value = src.get("label_convention")
        if value in ("brats2021", "brats2023"):
            return str(value)
    text = " ".join(str(meta.get(k, "")) for k in ("description", "task", "label_classes", "pred_classes")).lower()
    if re.search(r"brats\s*-?\s*2023|brats2023", text):
        return "brats2023"
    if re.search(r"brats\s*-?\s*20(18|19|20|21)", text):
        return "brats2021"
    return None


_REGION_NAMES = {
    "TC": ("tc", "tumorcore", "tumorcore", "core"),
    "WT": ("wt", "wholetumor", "wholetumor", "whole"),
    "ET": ("et", "enhancingtumor", "enhancingtumor", "enhancing", "enhancingcore"),
}


def canonical_region(name: str) -> str | None:
    """``"TC"``, ``"WT"`` or ``"ET"`` for a BraTS region name in any usual spelling, else None."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for region, aliases in _REGION_NAMES.items():
        if key in aliases:
            return region
    return None


def canonical_channel_name(name: str) -> str:
    """A channel name reduced to a canonical key: ``"T1-Gd"`` and ``"t1ce"`` both give ``"t1c"``."""
    key = re.sub(r"[^a-z0-9+]", "", str(name).lower()).replace("+", "plus")
    for canon, aliases in _CHANNEL_ALIASES.items():
        if key in aliases:
            return canon
    return key


# -- loading -----------------------------------------------------------------------------------


def _finish_network(net: Any, device: torch.device) -> Any:
    net = net.to(device)
    net.eval()
    return net


def _from_config(model: LoadedModel, config: dict[str, Any] | None, meta: dict[str, Any], bundle_dir: Path | None,
                 trust_code: bool, build_network: bool) -> Any:
    """Fill channels, outputs, preprocessing and window settings; return the parser (or None)."""
    n_in, names, out_names, n_out = _metadata_io(meta)
    model.metadata = meta
    model.num_channels = n_in
    model.channel_names = names
    model.output_names = out_names if out_names else ({i: f"class {i}" for i in range(n_out)} if n_out else {})
    model.label_convention = _label_convention_from_meta(meta)
    parser = None
    if config is not None:
        parser = _make_parser(config, meta, bundle_dir)
        if build_network:
            model.network = _network_from_config(parser, trust_code)
        model.preprocessing, model.image_key = _preprocessing_from_config(parser, trust_code)
        s = _inferer_settings(parser, trust_code)
        model.roi_size = s.get("roi_size")
        model.sw_batch_size = s.get("sw_batch_size")
        model.overlap = s.get("overlap")
        model.sw_mode = s.get("sw_mode")
    model.output_mode = _output_mode_from_config(config, model.output_names)
    return parser


def _load_bundle(path: Path, device: torch.device, trust_code: bool) -> LoadedModel:
    meta = read_bundle_metadata(path)
    config_path = find_bundle_config(path)
    pt = path / "models" / "model.pt"
    ts = path / "models" / "model.ts"
    config = _load_config_file(config_path) if config_path is not None else None
    if pt.is_file() and config is not None:
        model = LoadedModel(network=None, source="bundle", path=path, weights=pt, device=device)
        _from_config(model, config, meta, path, trust_code, build_network=True)
        sd = load_state_dict_safely(pt)
        try:
            model.network.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0][:200]
            raise MedTorchInputError(
                f"models/model.pt does not fit the network that network_def defines ({first})",
                "use the weights trained with this bundle's network_def, or fix network_def",
            ) from None
        model.network = _finish_network(model.network, device)
        return model
    if ts.is_file():
        model = _load_torchscript(ts, device)
        model.source = "bundle-torchscript"
        model.path = path
        # the bundle's own files win over what the TorchScript carries
        _from_config(model, config if config is not None else _embedded_config(model),
                     meta or model.metadata, path, trust_code, build_network=False)
        return model
    if pt.is_file():
        raise MedTorchInputError(
            f"the bundle {path.name} has models/model.pt but no configs/inference.json (or .yaml), so the network "
            "that the weights belong to is unknown",
            "add the bundle's inference config, or choose its TorchScript model (models/model.ts)",
        )
    raise MedTorchInputError(f"the bundle {path.name} has no models/model.pt and no models/model.ts",
                             "copy the bundle's weights into its models folder")


def _embedded_config(model: LoadedModel) -> dict[str, Any] | None:
    return getattr(model, "_embedded_config", None)


def _load_torchscript(path: Path, device: torch.device) -> LoadedModel:
    extra = {"metadata.json": "", "inference.json": ""}
    try:
        net = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200]
        hint = ("it looks like a checkpoint, not TorchScript: choose the bundle folder (with its "
                "configs) instead" if "constants.pkl" in str(exc) or "zip" in str(exc).lower() else
                "export the model with torch.jit.script/trace and torch.jit.save")
        raise MedTorchInputError(f"{path.name} is not a TorchScript model ({msg})", hint) from None
    meta: dict[str, Any] = {}
    config: dict[str, Any] | None = None
    for key, target in (("metadata.json", "meta"), ("inference.json", "config")):
        raw = extra.get(key) or ""
        if raw:
            try:
                val = json.loads(raw)
            except (json.JSONDecodeError, TypeError):
                val = None
            if isinstance(val, dict):
                if target == "meta":
                    meta = val
                else:
                    config = val
    model = LoadedModel(network=net, source="torchscript", path=path, weights=path, device=device)
    model._embedded_config = config  # type: ignore[attr-defined]
    _from_config(model, config, meta, None, trust_code=False, build_network=False)
    model.network = _finish_network(net, device)
    return model


def _load_nnunet(path: Path, device: torch.device, folds: Sequence[int | str] | None,
                 checkpoint_name: str) -> LoadedModel:
    try:
        import nnunetv2  # noqa: F401
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError:
        raise MedTorchInputError(
            f"{path.name} is an nnU-Net v2 model folder, but the nnunetv2 package is not installed",
            "install it (pip install nnunetv2) in the Python that runs MedTorch, or export the model to TorchScript",
        ) from None
    dataset_json = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    plans = json.loads((path / "plans.json").read_text(encoding="utf-8"))
    if folds is None:
        folds = sorted(
            (int(p.name.split("_")[-1]) if p.name != "fold_all" else "all")  # type: ignore[misc]
            for p in path.glob("fold_*") if (p / checkpoint_name).is_file()
        )
    if not folds:
        raise MedTorchInputError(f"{path.name} has no fold_*/{checkpoint_name}",
                                 "choose the trained-model folder (it holds fold_0, fold_1, ...)")
    params = []
    trainer_name = configuration_name = None
    mirror_axes = None
    for i, f in enumerate(folds):
        ckpt_path = path / f"fold_{f}" / checkpoint_name
        with torch.serialization.safe_globals(_nnunet_safe_globals()):
            try:
                ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                raise MedTorchInputError(
                    f"{ckpt_path} holds pickled Python objects beyond tensors and numpy values, which MedTorch "
                    f"never loads ({str(exc).splitlines()[0][:160]})",
                    "save only the network weights (checkpoint['network_weights']) or export to TorchScript",
                ) from None
        if i == 0:
            trainer_name = ckpt.get("trainer_name", "nnUNetTrainer")
            configuration_name = ckpt.get("init_args", {}).get("configuration")
            mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        params.append(_unwrap_state_dict(ckpt, ckpt_path))
    plans_manager = PlansManager(plans)
    if configuration_name is None:
        raise MedTorchInputError(f"{path.name}'s checkpoint does not name its configuration", "check the model folder")
    configuration_manager = plans_manager.get_configuration(configuration_name)
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    network = _nnunet_network(trainer_name, plans_manager, configuration_manager, num_in,
                              label_manager.num_segmentation_heads)
    network.load_state_dict(params[0])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, params, dataset_json,
                                    trainer_name, mirror_axes)
    names_map = _channel_def(dataset_json.get("channel_names") or dataset_json.get("modality") or {})
    labels = dataset_json.get("labels", {})
    out_names: dict[int, str] = {}
    if isinstance(labels, Mapping):
        for name, value in labels.items():
            if isinstance(value, int):
                out_names[int(value)] = str(name)
    model = LoadedModel(network=network, source="nnunet", path=path, weights=path / f"fold_{folds[0]}" / checkpoint_name,
                        num_channels=int(num_in), channel_names=[names_map.get(i, "") for i in range(int(num_in))],
                        output_names=out_names, output_mode="softmax", metadata=dataset_json, device=device,
                        nnunet=predictor)
    model.roi_size = tuple(int(s) for s in configuration_manager.patch_size)
    return model


def _nnunet_safe_globals() -> list[Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out: list[Any] = [scalar, _reconstruct, np.dtype, np.ndarray]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool", "float16", "uint8")]
    return out


def _nnunet_network(trainer_name: str | None, plans_manager: Any, cm: Any, num_in: int, num_out: int) -> Any:
    """The network nnU-Net's trainer would build (its static builder), without deep supervision."""
    import inspect

    try:
        import nnunetv2
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        trainer_class = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                                    trainer_name or "nnUNetTrainer", "nnunetv2.training.nnUNetTrainer")
    except Exception:  # pragma: no cover - depends on the nnunetv2 version
        trainer_class = None
    if trainer_class is not None and hasattr(trainer_class, "build_network_architecture"):
        params = list(inspect.signature(trainer_class.build_network_architecture).parameters)
        if params and params[0] == "plans_manager":  # nnU-Net >= 2.6
            return trainer_class.build_network_architecture(plans_manager, cm, num_in, num_out,
                                                            enable_deep_supervision=False)
        return trainer_class.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                                        cm.network_arch_init_kwargs_req_import, num_in, num_out,
                                                        enable_deep_supervision=False)
    from nnunetv2.utilities.get_network_from_plans import (
        get_network_from_plans,  # pragma: no cover
    )

    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,  # pragma: no cover
                                  cm.network_arch_init_kwargs_req_import, num_in, num_out, deep_supervision=False)


_CACHE: dict[tuple[str, float, str, bool], LoadedModel] = {}


def _mtime(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    stamps = [p.stat().st_mtime for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".yml", ".pt", ".ts", ".pth")]
    return max(stamps) if stamps else 0.0


def load_model(path: str | os.PathLike[str], *, device: torch.device | str | None = None, trust_code: bool = False,
               nnunet_folds: Sequence[int | str] | None = None, nnunet_checkpoint: str = "checkpoint_final.pth",
               use_cache: bool = True) -> LoadedModel:
    """Load a segmentation model from a MONAI bundle folder, a TorchScript file or an nnU-Net folder.

    Args:
        path: what the user chose. A folder with ``configs/metadata.json`` is a MONAI bundle;
            one with ``dataset.json`` + ``plans.json`` an nnU-Net v2 trained-model folder; a
            file a TorchScript model. A ``models`` folder or a file inside a bundle is taken as
            the bundle.
        device: where the network runs (``None``: CPU).
        trust_code: allow ``$`` expressions in the bundle's network, preprocessing and
            inferer configs (MONAI evaluates them with Python's ``eval``).
        nnunet_folds: folds of an nnU-Net model to ensemble (default: every fold present).
        nnunet_checkpoint: the nnU-Net checkpoint file name in each fold folder.
        use_cache: reuse a model already loaded from the same unchanged path and device.

    Raises:
        MedTorchInputError: a missing path, an unknown layout, a checkpoint that holds
            code, a config that runs code or names a non-MONAI component, weights that do
            not fit the network.
    """
    p = Path(path).expanduser()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if not p.exists():
        raise MedTorchInputError(f"the model {p} does not exist",
                                 "give a MONAI bundle folder, a TorchScript file or an nnU-Net v2 model folder")
    # a file or folder inside a bundle: take the bundle
    if p.is_file() and p.parent.name in ("models", "configs") and is_bundle_dir(p.parent.parent) and p.suffix != ".ts":
        p = p.parent.parent
    elif p.is_dir() and p.name in ("models", "configs") and is_bundle_dir(p.parent):
        p = p.parent
    key = (str(p.resolve()), _mtime(p), str(dev), trust_code)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    if p.is_dir():
        if is_bundle_dir(p):
            model = _load_bundle(p, dev, trust_code)
        elif is_nnunet_dir(p):
            model = _load_nnunet(p, dev, nnunet_folds, nnunet_checkpoint)
        else:
            raise MedTorchInputError(
                f"{p} is neither a MONAI bundle (configs/metadata.json) nor an nnU-Net v2 model folder "
                "(dataset.json + plans.json)",
                "choose the bundle's top folder, the nnU-Net trained-model folder, or a TorchScript file",
            )
    else:
        model = _load_torchscript(p, dev)
    if use_cache:
        _CACHE.clear()  # keep one model: they can be large
        _CACHE[key] = model
    return model


def describe_model(path: str | os.PathLike[str], trust_code: bool = False) -> dict[str, Any]:
    """What a model expects and gives (channels, outputs, window), without running it."""
    return load_model(path, trust_code=trust_code).describe()


# -- channel mapping -----------------------------------------------------------------------------


def _expected_text(model: LoadedModel) -> str:
    if model.channel_names and any(model.channel_names):
        return ", ".join(f"{i}: {n or '?'}" for i, n in enumerate(model.channel_names))
    return f"{model.num_channels} channel(s)"


def map_channels(model: LoadedModel, inputs: Sequence[Volume] | Mapping[str, Volume]) -> list[Volume]:
    """The input volumes in the order the model's channels need them.

    ``inputs`` is a sequence (taken in order) or a mapping from channel name to volume
    (matched to the model's channel names case-insensitively, with the usual aliases:
    T1c = T1ce = T1Gd, FLAIR = T2F, T1 = T1n, ...). A mapping with integer-like keys is taken
    by index.

    Raises:
        MedTorchInputError: wrong number of volumes, or a name the model does not have.
    """
    if isinstance(inputs, Mapping):
        items = list(inputs.items())
        if all(str(k).isdigit() for k, _ in items):
            vols = [v for _, v in sorted(items, key=lambda kv: int(kv[0]))]
        elif model.channel_names and all(model.channel_names):
            want = [canonical_channel_name(n) for n in model.channel_names]
            given = {canonical_channel_name(k): v for k, v in items}
            missing = [model.channel_names[i] for i, w in enumerate(want) if w not in given]
            extra = [k for k, _ in items if canonical_channel_name(k) not in want]
            if missing or extra:
                raise MedTorchInputError(
                    f"the model's channels are {_expected_text(model)}; "
                    + (f"missing: {', '.join(missing)}" if missing else "")
                    + ("; " if missing and extra else "")
                    + (f"not used by the model: {', '.join(extra)}" if extra else ""),
                    "give one volume for each channel, named as the model names them",
                )
            vols = [given[w] for w in want]
        else:
            vols = [v for _, v in items]
    else:
        vols = list(inputs)
    if not vols:
        raise MedTorchInputError("no input volume was given", f"give the model's channels: {_expected_text(model)}")
    if model.num_channels is not None and len(vols) != model.num_channels:
        raise MedTorchInputError(
            f"the model takes {model.num_channels} input channel(s) ({_expected_text(model)}) but "
            f"{len(vols)} volume(s) were given",
            f"give exactly {model.num_channels} volume(s), in this order: {_expected_text(model)}",
        )
    return vols
