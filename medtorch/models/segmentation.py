"""Segmentation model packs: a MONAI bundle (a ``medtorch train-seg`` output or a model-zoo
bundle) turned into one model pack (:mod:`medtorch.models.pack`), and back into a bundle folder.

A segmentation pack holds, besides the members every pack has:

* ``weights.pt`` -- the bundle's ``models/model.pt`` tensors, read with ``weights_only=True``
  when the pack is made (a checkpoint holding pickled code is refused then), saved again as a
  plain state dict;
* ``bundle/configs/...`` -- the bundle's configs (``metadata.json``, the inference config and
  the others), ``bundle/docs/...`` -- its documents;
* ``LICENSE.txt`` -- the license text (the bundle's ``LICENSE`` or ``docs/license.txt`` and
  ``docs/data_license.txt``, or the file the user gives), which the user agrees to before the
  model is installed;
* ``config.json`` -- ``kind: "segmentation"``, the model's ``name`` and ``version``, its
  ``input_channels`` (index and name, in order), its ``output_mode`` (softmax / sigmoid) and
  ``labels`` (value -- the label value of a softmax model, the output channel of a sigmoid one --,
  name and the standard terminology codes SegmentTumor gives segments:
  :mod:`medtorch.segment.terminology`), the ``model_card`` (intended use, training data,
  reported Dice) and the ``license`` (its name and the SHA-256 of ``LICENSE.txt``);
* ``MODEL_CARD.md`` -- the same model card, for people.

A bundle with TorchScript weights only (``models/model.ts``) is not packed: a pack carries
tensors, never code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.models.pack import BUNDLE_SUFFIXES, CONFIG, LICENSE, WEIGHTS, write_pack

__all__ = ["KIND", "bundle_member_path", "model_card_markdown", "pack_bundle", "safe_name", "segmentation_config"]

KIND = "segmentation"
#: Where the bundle's license text may be, in order (several are joined).
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "docs/license.txt", "docs/data_license.txt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def safe_name(name: str) -> str:
    """``name`` if it can name an installed model (letters, digits, ``.``, ``_``, ``-``; 100 at most)."""
    if not _NAME.match(name or ""):
        raise MedTorchInputError(f"{name!r} cannot name a model",
                                 "use letters, digits, '.', '_' and '-' only (e.g. brats_mri_segmentation)")
    return name


def bundle_member_path(member: str) -> str | None:
    """Where a pack member goes in the bundle folder it is installed as (``None``: not a bundle file)."""
    if member == WEIGHTS:
        return "models/model.pt"
    if member.startswith("bundle/"):
        return member[len("bundle/"):]
    return None


def _license_text(bundle: Path, license_file: str | os.PathLike[str] | None) -> str:
    if license_file is not None:
        p = Path(license_file)
        if not p.is_file():
            raise MedTorchInputError(f"the license file {p} does not exist", "give the path of the model's license text")
        return p.read_text(encoding="utf-8", errors="replace")
    parts = [(bundle / n).read_text(encoding="utf-8", errors="replace").strip()
             for n in _LICENSE_FILES if (bundle / n).is_file()]
    if not parts:
        raise MedTorchInputError(
            f"the bundle {bundle.name} has no license text (LICENSE or docs/license.txt)",
            "give the terms under which the model may be used with --license FILE (for your own model, e.g. the "
            "terms of the data it was trained on)")
    return "\n\n".join(parts) + "\n"


def _license_name(meta: dict[str, Any], text: str) -> str:
    for key in ("license", "licence"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return str(meta[key]).strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "Apache License" in text[:400]:
        return "Apache-2.0"
    if "MIT License" in text[:200]:
        return "MIT"
    return first[:80] or "see LICENSE.txt"


def _reported_dice(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    metrics = meta.get("eval_metrics")
    if isinstance(metrics, dict):
        out.update({str(k): v for k, v in metrics.items() if "dice" in str(k).lower()})
    med = meta.get("medtorch")
    if isinstance(med, dict) and isinstance(med.get("best_val_dice"), (int, float)):
        out["best_validation_dice"] = float(med["best_val_dice"])
    return out


def _training_data(meta: dict[str, Any]) -> str:
    med = meta.get("medtorch")
    if isinstance(med, dict) and isinstance(med.get("train_cases"), list):
        n_train, n_val = len(med["train_cases"]), len(med.get("val_cases") or [])
        return f"the user's own labelled cases ({n_train} training, {n_val} validation; medtorch train-seg)"
    return str(meta.get("data_source") or meta.get("data") or "not stated by the bundle")


def segmentation_config(bundle_dir: str | os.PathLike[str], *, name: str, license_name: str, license_sha256: str,
                        intended_use: str | None = None, training_data: str | None = None,
                        trust_code: bool = False) -> dict[str, Any]:
    """The ``config.json`` of a segmentation pack, from a bundle folder (loaded once, on the CPU,
    with :func:`medtorch.segment.models.load_model`, so a bundle that cannot run is refused here)."""
    from medtorch.segment.models import load_model, read_bundle_metadata
    from medtorch.segment.terminology import class_terms, slicer_terminology

    bundle = Path(bundle_dir)
    meta = read_bundle_metadata(bundle)
    model = load_model(bundle, device="cpu", trust_code=trust_code, use_cache=False)
    n_in = model.num_channels or len(model.channel_names)
    channels = [{"index": i, "name": (model.channel_names[i] if i < len(model.channel_names) else "") or f"channel {i}"}
                for i in range(n_in)]
    med = meta.get("medtorch") if isinstance(meta.get("medtorch"), dict) else {}
    values = [int(v) for v in (med or {}).get("label_values", [])]
    outputs = sorted(model.output_names.items())
    if model.output_mode == "softmax" and len(values) == len(outputs):
        named = {values[i]: n for i, n in outputs}
    else:
        named = {int(i): n for i, n in outputs}
    foreground = {v: n for v, n in named.items() if not (model.output_mode == "softmax" and str(n).lower() == "background")}
    terms = class_terms(sorted(foreground), foreground)
    labels = [{"value": v, "name": str(foreground[v]), "terminology": slicer_terminology(terms[v]),
               "category": [terms[v].category.scheme, terms[v].category.value, terms[v].category.meaning],
               "type": [terms[v].type.scheme, terms[v].type.value, terms[v].type.meaning]}
              for v in sorted(foreground)]
    inference = next((f"configs/{p.name}" for p in sorted((bundle / "configs").glob("inference.*"))), None)
    return {
        "kind": KIND,
        "name": name,
        "version": str(meta.get("version") or "0"),
        "title": str(meta.get("name") or name),
        "description": str(meta.get("description") or ""),
        "input_channels": channels,
        "output_mode": model.output_mode,
        "label_convention": model.label_convention,
        "labels": labels,
        "model_card": {
            "intended_use": intended_use or str(meta.get("intended_use") or "research; not for diagnostic use"),
            "training_data": training_data or _training_data(meta),
            "reported_dice": _reported_dice(meta),
            "authors": str(meta.get("authors") or ""),
            "references": [str(r) for r in meta.get("references", []) if isinstance(r, str)],
        },
        "license": {"name": license_name, "sha256": license_sha256},
        "bundle": {"weights": "models/model.pt", "inference_config": inference},
    }


def model_card_markdown(config: dict[str, Any]) -> str:
    """The model card (``MODEL_CARD.md``) of a segmentation pack's config."""
    card = config.get("model_card", {})
    dice = card.get("reported_dice") or {}
    lines = [f"# {config.get('title') or config['name']} (version {config.get('version')})", "",
             str(config.get("description") or ""), "",
             f"* **Intended use:** {card.get('intended_use')}",
             f"* **Training data:** {card.get('training_data')}",
             "* **Reported Dice:** " + (", ".join(f"{k} {v}" for k, v in dice.items()) if dice else "not reported"),
             "* **Input channels, in order:** " + ", ".join(f"{c['index']}: {c['name']}" for c in config["input_channels"]),
             f"* **Outputs ({config.get('output_mode')}):** " + ", ".join(f"{lab['value']} = {lab['name']}"
                                                                       for lab in config["labels"]),
             f"* **License:** {config['license']['name']} (the full text is LICENSE.txt in this pack)"]
    if card.get("authors"):
        lines.append(f"* **Authors:** {card['authors']}")
    for ref in card.get("references") or []:
        lines.append(f"* **Reference:** {ref}")
    return "\n".join(lines) + "\n"


def pack_bundle(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                license_file: str | os.PathLike[str] | None = None, intended_use: str | None = None,
                training_data: str | None = None, trust_code: bool = False) -> Path:
    """Write a segmentation pack from a MONAI bundle folder (``medtorch train-seg``'s output or a
    model-zoo bundle); returns its path. The bundle is not modified.

    Raises:
        MedTorchInputError: not a bundle, no ``models/model.pt`` (TorchScript only), weights holding
            pickled code, no license text and no ``license_file``, a name that cannot name a model.
    """
    from medtorch.segment.models import is_bundle_dir, load_state_dict_safely, read_bundle_metadata

    bundle = Path(bundle_dir).expanduser()
    if not is_bundle_dir(bundle):
        raise MedTorchInputError(f"{bundle} is not a MONAI bundle folder (it has no configs/metadata.json)",
                                 "give the folder medtorch train-seg wrote, or a MONAI bundle's top folder")
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        hint = ("the bundle has TorchScript weights only (models/model.ts): a pack carries tensors, never code; "
                "put the bundle's state dict in models/model.pt") if (bundle / "models" / "model.ts").is_file() else \
            "copy the bundle's weights into models/model.pt"
        raise MedTorchInputError(f"the bundle {bundle.name} has no models/model.pt", hint)
    meta = read_bundle_metadata(bundle)
    model_name = safe_name(name or re.sub(r"[^A-Za-z0-9._-]+", "_", bundle.resolve().name).strip("._-") or "model")
    text = _license_text(bundle, license_file)
    state = load_state_dict_safely(weights)  # weights_only=True: pickled code is refused here
    config = segmentation_config(bundle, name=model_name, license_name=_license_name(meta, text),
                                 license_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                 intended_use=intended_use, training_data=training_data, trust_code=trust_code)
    extra: dict[str, bytes] = {LICENSE: text.encode("utf-8")}
    for folder in ("configs", "docs"):
        for p in sorted((bundle / folder).rglob("*")):
            if p.is_file() and p.suffix.lower() in BUNDLE_SUFFIXES:
                extra[f"bundle/{p.relative_to(bundle).as_posix()}"] = p.read_bytes()
    out_p = Path(out).expanduser()
    if out_p.suffix.lower() != ".zip":
        raise MedTorchInputError(f"{out_p.name} is not a .zip file name", "name the pack like model.zip")
    return write_pack(out_p, state, config, model_card_markdown(config), extra)


def read_config_member(members: dict[str, bytes], path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of verified pack members."""
    try:
        config = json.loads(members[CONFIG].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, KeyError):
        config = None
    if not isinstance(config, dict):
        raise MedTorchInputError(f"the model pack {path.name} has no readable config.json",
                                 "get a fresh copy of the pack from where it was published")
    return config


def check_weights_safe(members: dict[str, bytes], path: Path) -> None:
    """Load ``weights.pt`` with ``weights_only=True``: a pack whose weights hold pickled Python objects
    or code is refused before anything is installed."""
    import pickle

    import torch

    try:
        state = torch.load(io.BytesIO(members[WEIGHTS]), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise MedTorchInputError(
            f"the model pack {path.name} holds weights that are not only tensors (torch.load weights_only=True "
            f"refused them: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); MedTorch never "
            "loads pickled Python objects or code",
            "do not use this pack; make a pack from the model's weights alone (medtorch models pack)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedTorchInputError(f"the model pack {path.name} holds weights that are not a state dict of tensors",
                                 "make the pack again with medtorch models pack")
