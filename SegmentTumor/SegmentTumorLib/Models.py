"""SegmentTumor's *Models* section without Qt: the installed models (the same store as
``medtorch models``), importing a pack after the user agrees to its license, removing one.

Every call goes through the operations layer (:mod:`medtorch.ops.models`); ``models_dir`` ""
is the default store (``$MEDTORCH_MODELS_DIR`` or the user's cache folder), which the
background worker that runs a segmentation resolves a model name against too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from medtorch import ops
from medtorch.ops.models import ModelsImportRequest, ModelsListRequest, ModelsRemoveRequest


def installed_models(models_dir: str = "") -> list[dict[str, Any]]:
    """A summary per installed model (name, version, input channels, labels, license...)."""
    return list(ops.run(ModelsListRequest(models_dir=models_dir), {}).values["models"])


def model_choice_text(model: dict[str, Any]) -> str:
    """How a model is shown in the list: its name and its input channels in order."""
    channels = ", ".join(str(c) for c in model.get("input_channels") or [])
    return f"{model['name']} ({channels})" if channels else str(model["name"])


def license_question(model: str, license_name: str, text: str) -> str:
    """The text of the license dialog."""
    title = f"{model} ({license_name})" if license_name else model
    return (f"The model {title} comes with this license:\n\n{text.strip()}\n\n"
            "Do you agree to these terms? (You are asked once per license.)")


def import_pack(pack_path: str, confirm: Callable[[str], bool], models_dir: str = "") -> dict[str, Any] | None:
    """Install a pack: every hash is checked first; a license not agreed to before is shown
    through ``confirm(text) -> bool``. Returns the installed model's summary, or ``None`` when
    the user did not agree (nothing installed)."""
    request = ModelsImportRequest(pack=str(pack_path), models_dir=models_dir)
    result = ops.run(request, {})
    if result.values.get("needs_license"):
        v = result.values
        if not confirm(license_question(str(v["model"]), str(v.get("license_name") or ""), str(v["license"]))):
            return None
        result = ops.run(dataclasses.replace(request, accept_license=True), {})
    return dict(result.values["model"])


def remove_model(name: str, models_dir: str = "") -> dict[str, Any]:
    """Remove an installed model; its summary."""
    return dict(ops.run(ModelsRemoveRequest(name=name, models_dir=models_dir), {}).values["model"])
