"""Model operations: the model store (:mod:`medtorch.models.store`), model packs and the catalog.

None takes input volumes. Every request has ``models_dir`` (the store's folder; empty: the
default, ``$MEDTORCH_MODELS_DIR`` or the user's cache folder).

* ``models_list``: values ``models`` (one summary per installed model) and, with ``catalog``,
  ``catalog`` (the downloadable models, with whether each is installed).
* ``models_import``: installs the pack ``pack`` after checking every hash and loading its
  weights with ``weights_only=True``. A license the user has not agreed to before, with
  ``accept_license`` false, installs nothing and gives values ``needs_license: true``,
  ``license`` (the text to show), ``license_name`` and ``model``; run it again with
  ``accept_license`` once the user agrees (then it is recorded and not asked again). Else:
  ``needs_license: false`` and ``model`` (the installed model's summary).
* ``models_download``: the catalog model ``name``, the same way: ``needs_license: true`` and
  the entry's ``license`` terms before anything is downloaded; else downloaded (resumable),
  checked against its published hash, packed and installed.
* ``models_verify``: values ``model`` (the summary) when the installed model's pack and files
  pass their hashes (an error naming the damaged file otherwise).
* ``models_remove``: values ``model`` (what was removed).
* ``models_pack``: writes the pack ``out`` from the bundle folder ``bundle`` (a ``medtorch
  train-seg`` output or a MONAI bundle); values ``pack`` (its path), ``sha256`` and ``config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from medtorch.errors import MedTorchInputError
from medtorch.ops.base import OperationResult, Request
from medtorch.progress import CancelToken, ProgressCallback, report
from medtorch.volume import Volume

if TYPE_CHECKING:
    from medtorch.models.store import ModelStore

__all__ = ["ModelsDownloadRequest", "ModelsImportRequest", "ModelsListRequest", "ModelsPackRequest",
           "ModelsRemoveRequest", "ModelsVerifyRequest", "run_models_download", "run_models_import", "run_models_list",
           "run_models_pack", "run_models_remove", "run_models_verify"]


@dataclass(frozen=True)
class ModelsListRequest(Request):
    """The installed models (and, with ``catalog``, the downloadable ones)."""

    operation: ClassVar[str] = "models_list"

    catalog: bool = False
    models_dir: str = ""


@dataclass(frozen=True)
class ModelsImportRequest(Request):
    """Install the model pack ``pack`` (under its own name, or ``name``)."""

    operation: ClassVar[str] = "models_import"

    pack: str = ""
    name: str = ""
    accept_license: bool = False
    models_dir: str = ""


@dataclass(frozen=True)
class ModelsDownloadRequest(Request):
    """Download the catalog model ``name``, check it and install it."""

    operation: ClassVar[str] = "models_download"

    name: str = ""
    accept_license: bool = False
    models_dir: str = ""


@dataclass(frozen=True)
class ModelsVerifyRequest(Request):
    """Check the installed model ``name`` against its pack's hashes."""

    operation: ClassVar[str] = "models_verify"

    name: str = ""
    models_dir: str = ""


@dataclass(frozen=True)
class ModelsRemoveRequest(Request):
    """Remove the installed model ``name``."""

    operation: ClassVar[str] = "models_remove"

    name: str = ""
    models_dir: str = ""


@dataclass(frozen=True)
class ModelsPackRequest(Request):
    """Make the model pack ``out`` from the bundle folder ``bundle``; ``license_file`` gives the
    license text when the bundle has none (e.g. a ``medtorch train-seg`` output)."""

    operation: ClassVar[str] = "models_pack"

    bundle: str = ""
    out: str = ""
    name: str = ""
    license_file: str = ""
    intended_use: str = ""
    training_data: str = ""
    trust_code: bool = False


def _store(models_dir: str) -> ModelStore:
    from medtorch.models.store import ModelStore

    return ModelStore(models_dir or None)


def _need(value: str, what: str, fix: str) -> str:
    if not value:
        raise MedTorchInputError(f"no {what} was given", fix)
    return value


def run_models_list(request: ModelsListRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> OperationResult:
    store = _store(request.models_dir)
    models = store.installed()
    values: dict[str, object] = {"models": [m.summary() for m in models], "models_dir": str(store.root)}
    if request.catalog:
        from medtorch.models.catalog import catalog

        names = {m.name for m in models}
        values["catalog"] = [dict(e.summary(), installed=e.name in names) for e in catalog().values()]
    return OperationResult({}, values, models)


def run_models_import(request: ModelsImportRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                      cancel: CancelToken | None) -> OperationResult:
    from medtorch.models.store import LicenseRequired

    pack = _need(request.pack, "model pack", "give the path of a model pack (.zip)")
    report(progress, cancel, 0.0, "checking the pack's hashes")
    try:
        model = _store(request.models_dir).install(pack, accept_license=request.accept_license,
                                                   name=request.name or None)
    except LicenseRequired as exc:
        return OperationResult({}, {"needs_license": True, "model": exc.model, "license": exc.license_text,
                                    "license_name": exc.license_name})
    report(progress, cancel, 1.0, "installed")
    return OperationResult({}, {"needs_license": False, "model": model.summary()}, model)


def run_models_download(request: ModelsDownloadRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                        cancel: CancelToken | None) -> OperationResult:
    from medtorch.models.catalog import download_model
    from medtorch.models.store import LicenseRequired

    name = _need(request.name, "model name", "give the name of a catalog model (medtorch models list --catalog)")
    try:
        model = download_model(name, _store(request.models_dir), accept_license=request.accept_license,
                               progress=progress, cancel=cancel)
    except LicenseRequired as exc:
        return OperationResult({}, {"needs_license": True, "model": exc.model, "license": exc.license_text,
                                    "license_name": exc.license_name})
    return OperationResult({}, {"needs_license": False, "model": model.summary()}, model)


def run_models_verify(request: ModelsVerifyRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                      cancel: CancelToken | None) -> OperationResult:
    name = _need(request.name, "model name", "give the name of an installed model (medtorch models list)")
    model = _store(request.models_dir).verify(name)
    return OperationResult({}, {"model": model.summary()}, model)


def run_models_remove(request: ModelsRemoveRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                      cancel: CancelToken | None) -> OperationResult:
    name = _need(request.name, "model name", "give the name of an installed model (medtorch models list)")
    model = _store(request.models_dir).remove(name)
    return OperationResult({}, {"model": model.summary()}, model)


def run_models_pack(request: ModelsPackRequest, inputs: dict[str, Volume], progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> OperationResult:
    import json

    from medtorch.models.pack import pack_sha256, verify_pack
    from medtorch.models.segmentation import pack_bundle

    bundle = _need(request.bundle, "bundle folder", "give the folder medtorch train-seg wrote, or a MONAI bundle folder")
    out = _need(request.out, "output pack", "give the pack file to write (e.g. my_model.zip)")
    report(progress, cancel, 0.0, "reading the bundle")
    path = pack_bundle(bundle, out, name=request.name or None, license_file=request.license_file or None,
                       intended_use=request.intended_use or None, training_data=request.training_data or None,
                       trust_code=request.trust_code)
    config = json.loads(verify_pack(path)["config.json"].decode("utf-8"))
    report(progress, cancel, 1.0, "packed")
    return OperationResult({}, {"pack": str(path), "sha256": pack_sha256(path), "config": config}, path)
