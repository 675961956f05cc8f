"""The catalog of public models MedTorch can download, when the user asks and agrees.

Each entry is a MONAI model-zoo bundle at the address and with the hash the model zoo itself
publishes (``models/model_info.json`` of github.com/Project-MONAI/model-zoo, commit
dfae206df112837d817e78d3727c9f32b3b52e82: the bundle's ``.zip`` with its large files, and
its SHA-1 ``checksum``; the model zoo publishes no SHA-256 of the zip). After the download
is checked against that hash, the bundle is turned into a model pack
(:func:`~medtorch.models.segmentation.pack_bundle`, which adds the SHA-256 manifest) and
installed like an imported pack: the two are the same thing afterwards.

More entries (e.g. an institution's mirror of the same files) come from a JSON file named by
``$MEDTORCH_MODELS_CATALOG``: ``{"models": [{"name": ..., "version": ..., "url": ...,
"hash_type": "sha256", "hash": ..., "license": ..., ...}]}``; an entry of the same name
replaces a built-in one.

Nothing here runs at import time, and nothing downloads unless :func:`download_model` is called.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.models.download import HASH_TYPES, download_file
from medtorch.models.store import InstalledModel, LicenseRequired, ModelStore
from medtorch.progress import CancelToken, ProgressCallback, SubProgress, report

__all__ = ["CATALOG", "ENV_CATALOG", "CatalogEntry", "catalog", "catalog_entry", "download_model"]

#: Environment variable naming a JSON file of more catalog entries.
ENV_CATALOG = "MEDTORCH_MODELS_CATALOG"
_ZOO = "https://github.com/Project-MONAI/model-zoo/tree/dev/models/"
#: Largest bundle zip member unpacked (bytes).
_MAX_UNPACKED = 8 * 2**30


@dataclass(frozen=True)
class CatalogEntry:
    """A downloadable model: where it is, the hash its publisher gives, and its terms."""

    name: str
    version: str
    title: str
    url: str
    hash_type: str
    hash: str
    license: str
    terms: str  # what the user agrees to before the download: the license and the data's terms
    homepage: str = ""
    input_channels: tuple[str, ...] = ()
    size_mb: float = 0.0

    @property
    def license_key(self) -> str:
        """The key under which the agreement to this entry's terms is recorded."""
        return f"catalog:{self.name}:{self.version}:{self.hash}"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_channels"] = list(self.input_channels)
        return d


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry(
        "brats_mri_segmentation", "0.5.2", "BraTS MRI segmentation (MONAI model zoo, SegResNet)",
        "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/brats_mri_segmentation/versions/0.5.2/files/"
        "brats_mri_segmentation_v0.5.2.zip",
        "sha1", "6b1dfef29d49c6f6a1d8bf9f65c84125ad37a6e9", "Apache-2.0",
        "The model (MONAI Consortium) is under the Apache License 2.0. It was trained on the BraTS 2018 data, whose "
        "terms ask that you cite the BraTS papers (Menze et al., IEEE TMI 2015; Bakas et al., Sci Data 2017) in "
        "your research. Intended use: an example, not for diagnostic purposes. The full texts come with the model "
        "(LICENSE.txt of the pack).",
        _ZOO + "brats_mri_segmentation", ("T1c", "T1", "T2", "FLAIR")),
    CatalogEntry(
        "spleen_ct_segmentation", "0.5.9", "Spleen CT segmentation (MONAI model zoo, UNet)",
        "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/spleen_ct_segmentation/versions/0.5.9/files/"
        "spleen_ct_segmentation_v0.5.9.zip",
        "sha1", "8e99230050906d0d3cec484010598aa138201892", "Apache-2.0",
        "The model (MONAI Consortium) is under the Apache License 2.0. It was trained on the Medical Segmentation "
        "Decathlon's Task09_Spleen data (CC BY-SA 4.0). Intended use: an example, not for diagnostic purposes. The "
        "full texts come with the model (LICENSE.txt of the pack).",
        _ZOO + "spleen_ct_segmentation", ("CT",)),
)}


def _entry_from_json(d: Any, source: Path) -> CatalogEntry:
    keys = ("name", "version", "url", "hash_type", "hash")
    if not isinstance(d, dict) or any(not isinstance(d.get(k), str) or not d.get(k) for k in keys):
        raise MedTorchInputError(f"an entry of the model catalog {source} lacks one of {', '.join(keys)}",
                                 "give each entry a name, version, url, hash_type and hash (as the publisher gives them)")
    if d["hash_type"] not in HASH_TYPES:
        raise MedTorchInputError(f"the catalog entry {d['name']} in {source} has the hash type {d['hash_type']!r}",
                                 "use one of " + ", ".join(HASH_TYPES))
    return CatalogEntry(d["name"], d["version"], str(d.get("title") or d["name"]), d["url"], d["hash_type"],
                        d["hash"].lower(), str(d.get("license") or "see the model's LICENSE.txt"),
                        str(d.get("terms") or d.get("license") or "see the model's LICENSE.txt"),
                        str(d.get("homepage") or ""), tuple(str(c) for c in d.get("input_channels") or ()),
                        float(d.get("size_mb") or 0.0))


def catalog() -> dict[str, CatalogEntry]:
    """The built-in entries plus those of ``$MEDTORCH_MODELS_CATALOG``."""
    out = dict(CATALOG)
    extra = os.environ.get(ENV_CATALOG)
    if extra:
        p = Path(extra).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MedTorchInputError(f"the model catalog {p} ({ENV_CATALOG}) cannot be read ({exc})",
                                     f"fix the file, or unset {ENV_CATALOG}") from None
        for d in (data.get("models") if isinstance(data, dict) else None) or []:
            e = _entry_from_json(d, p)
            out[e.name] = e
    return out


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry ``name`` (a clear error listing the others)."""
    entries = catalog()
    if name not in entries:
        raise MedTorchInputError(f"the model catalog has no model named {name!r}",
                                 "choose one of " + ", ".join(sorted(entries)) + " (medtorch models list --catalog)")
    return entries[name]


def _unpack_bundle(zip_path: Path, into: Path) -> Path:
    """Unpack a bundle zip safely (no absolute paths, no ``..``, no links); the bundle's top folder."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise MedTorchInputError(f"{zip_path.name} is not a zip archive", "download it again") from None
    with zf:
        total = 0
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise MedTorchInputError(f"{zip_path.name} holds an unsafe path ({info.filename})",
                                         "do not use this file; tell its publisher")
            total += info.file_size
            if total > _MAX_UNPACKED:
                raise MedTorchInputError(f"{zip_path.name} unpacks to more than a model can be",
                                         "do not use this file; tell its publisher")
        zf.extractall(into)
    found = sorted(p.parent.parent for p in into.rglob("configs/metadata.json"))
    if not found:
        raise MedTorchInputError(f"{zip_path.name} holds no MONAI bundle (no configs/metadata.json)",
                                 "check the catalog entry's address")
    return min(found, key=lambda p: len(p.parts))


def download_model(name: str, store: ModelStore | None = None, *, accept_license: bool = False,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> InstalledModel:
    """Download the catalog model ``name`` (resuming a partial download), check it against its
    published hash, make it a pack and install it.

    Raises:
        LicenseRequired: the entry's terms were not agreed to and ``accept_license`` is false
            (nothing is downloaded).
        MedTorchInputError: the server cannot be reached, the hash differs, the bundle cannot be packed.
    """
    from medtorch.models.segmentation import pack_bundle

    entry = catalog_entry(name)
    st = store if store is not None else ModelStore()
    if not st.license_agreed(entry.license_key):
        if not accept_license:
            raise LicenseRequired(entry.name, entry.terms, entry.license)
        st.record_license(entry.license_key, entry.name)
    downloads = st.root / "downloads"
    zip_path = download_file(entry.url, downloads / f"{entry.name}_v{entry.version}.zip", entry.hash, entry.hash_type,
                             progress=SubProgress(progress, 0.0, 0.8), cancel=cancel)
    report(progress, cancel, 0.82, "making a model pack of the bundle")
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=downloads))
    try:
        bundle = _unpack_bundle(zip_path, work / "unpacked")
        pack = pack_bundle(bundle, work / f"{entry.name}.zip", name=entry.name)
        report(progress, cancel, 0.92, "installing")
        # the user agreed to the entry's terms before the download: that covers the pack's license text
        model = st.install(pack, accept_license=True, source=entry.url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    zip_path.unlink(missing_ok=True)
    report(progress, cancel, 1.0, "installed")
    return model
