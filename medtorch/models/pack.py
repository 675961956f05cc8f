"""The model pack: one ``.zip`` holding a trained network and everything needed to trust it.

Members (flat, no folders):

* ``weights.pt`` -- the network's ``state_dict`` (``torch.save``; read with ``weights_only=True``,
  so a pack cannot run code when it is loaded);
* ``config.json`` -- what the network is and the contract of its inputs (its ``kind``, e.g.
  ``"registration"``, the architecture and its channels, the spacing, the normalisation, the
  seed and the training record): whatever the kind's reader needs, as plain JSON;
* ``MODEL_CARD.md`` -- the licence and model card (what it was trained on, for what, its limits);
* ``manifest.json`` -- ``{"format": "medtorch-model-pack", "version": 2, "files": {name: sha256}}``.

Optional members (version 2, what a segmentation model adds; see :mod:`medtorch.models.segmentation`):

* ``LICENSE.txt`` -- the license text the user agrees to before the model is installed;
* ``bundle/configs/...``, ``bundle/docs/...`` -- a MONAI bundle's configs (``metadata.json``,
  the inference config) and documents, text files only: the weights are always ``weights.pt``.

:func:`read_pack` verifies the manifest first (every listed file present with its SHA-256,
nothing unlisted, nothing else in the archive) and only then parses the configuration and
loads the weights. An optional ``expected_sha256`` of the whole ``.zip`` (as published beside
a model) is checked before the archive is opened at all. The manifest guards against a
damaged or edited pack; a pack's origin is what the published whole-file hash vouches for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError

__all__ = ["FORMAT", "LICENSE", "MEMBERS", "ModelPack", "is_optional_member", "pack_sha256", "read_pack", "verify_pack",
           "write_pack"]

FORMAT = "medtorch-model-pack"
VERSION = 2
WEIGHTS, CONFIG, CARD, MANIFEST = "weights.pt", "config.json", "MODEL_CARD.md", "manifest.json"
LICENSE = "LICENSE.txt"
#: The files every pack holds besides its manifest.
MEMBERS = (WEIGHTS, CONFIG, CARD)
#: Folders of a pack's optional bundle members, and the (text) file types they may be.
BUNDLE_FOLDERS = ("bundle/configs/", "bundle/docs/")
BUNDLE_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt")
#: Largest member read (bytes): a pack is a small network, not a data set.
MAX_MEMBER_BYTES = 2 * 2**30


@dataclass(frozen=True)
class ModelPack:
    """A verified, loaded model pack."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, Any]
    card: str
    sha256: str  # of the whole .zip file
    license: str = ""  # LICENSE.txt ("" when the pack has none)
    extra: dict[str, bytes] | None = None  # the optional members (bundle/...), by name


def is_optional_member(name: str) -> bool:
    """Whether ``name`` may be an optional member of a pack: ``LICENSE.txt`` or a text file under
    ``bundle/configs/`` or ``bundle/docs/`` (no ``..``, no absolute path, no backslash)."""
    if name == LICENSE:
        return True
    parts = name.split("/")
    return (name.startswith(BUNDLE_FOLDERS) and name.lower().endswith(BUNDLE_SUFFIXES) and "\\" not in name
            and all(p not in ("", ".", "..") for p in parts))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the whole pack file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_pack(path: str | os.PathLike[str], state_dict: dict[str, Any], config: dict[str, Any], card: str,
               extra: dict[str, bytes] | None = None) -> Path:
    """Write a model pack (atomically); returns its path. ``config`` must be plain JSON;
    ``extra``: optional members by name (``LICENSE.txt``, ``bundle/configs/...``: see
    :func:`is_optional_member`)."""
    import torch

    from medtorch.io import atomic_path

    bad = [n for n in (extra or {}) if not is_optional_member(n)]
    if bad:
        raise MedTorchInputError(f"a model pack cannot hold {', '.join(bad)}",
                                 f"give only {LICENSE} and text files under " + " or ".join(BUNDLE_FOLDERS))
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state_dict.items()}, buf)
    members = {WEIGHTS: buf.getvalue(),
               CONFIG: json.dumps(config, indent=2, sort_keys=True, allow_nan=False).encode("utf-8"),
               CARD: card.encode("utf-8"), **dict(sorted((extra or {}).items()))}
    manifest = {"format": FORMAT, "version": VERSION, "files": {n: _sha256(d) for n, d in members.items()}}
    p = Path(path)
    with atomic_path(p) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                # weights barely compress: stored, they are read back at the speed of the hash
                zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name == WEIGHTS else None)
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return p


def _refuse(path: Path, problem: str) -> MedTorchInputError:
    return MedTorchInputError(f"the model pack {path.name} {problem}",
                              "use the pack as it was written (train it again, or get a fresh copy from where it "
                              "was published); never edit a pack by hand")


def verify_pack(path: str | os.PathLike[str], expected_sha256: str | None = None) -> dict[str, bytes]:
    """Check a pack and return its members' bytes (manifest excluded), reading nothing else.

    Raises :class:`MedTorchInputError` for a missing file, a file that is not a zip, a whole-file
    hash other than ``expected_sha256``, a missing or malformed manifest, a member that is
    missing, unlisted or whose SHA-256 differs from the manifest's.
    """
    p = Path(path)
    if not p.is_file():
        raise MedTorchInputError(f"the model pack {p} does not exist", "give the path of a .zip model pack")
    if expected_sha256 is not None and pack_sha256(p) != expected_sha256.strip().lower():
        raise _refuse(p, "does not have the expected SHA-256 (it is not the published file)")
    if not zipfile.is_zipfile(p):
        raise _refuse(p, "is not a zip archive")
    with zipfile.ZipFile(p) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        if MANIFEST not in infos:
            raise _refuse(p, "has no manifest.json")
        if any(i.file_size > MAX_MEMBER_BYTES for i in infos.values()):
            raise _refuse(p, "holds a member larger than a model pack can")
        try:
            manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _refuse(p, "has a manifest that is not JSON") from exc
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise _refuse(p, f"has no {FORMAT} manifest")
        if int(manifest.get("version", 0)) > VERSION:
            raise MedTorchInputError(f"the model pack {p.name} is of version {manifest.get('version')}, newer than "
                                     f"this MedTorch reads ({VERSION})", "update MedTorch")
        listed, present = set(files), set(infos) - {MANIFEST}
        optional = listed - set(MEMBERS)
        if not set(MEMBERS) <= listed or any(not is_optional_member(n) for n in optional):
            raise _refuse(p, "lists other files than " + ", ".join(MEMBERS) + f" ({LICENSE} and bundle configs "
                          "besides) in its manifest")
        if present != listed:
            extra, missing = sorted(present - listed), sorted(listed - present)
            raise _refuse(p, ("holds files its manifest does not list: " + ", ".join(extra)) if extra else
                          ("lacks files its manifest lists: " + ", ".join(missing)))
        out: dict[str, bytes] = {}
        for name in (*MEMBERS, *sorted(optional)):
            data = zf.read(name)
            if _sha256(data) != str(files[name]).lower():
                raise _refuse(p, f"failed its SHA-256 check: {name} was changed after the pack was written")
            out[name] = data
    return out


def read_pack(path: str | os.PathLike[str], kind: str | None = None, expected_sha256: str | None = None) -> ModelPack:
    """Verify (:func:`verify_pack`), then load a pack: its config, its weights (``weights_only=True``), its card.

    ``kind``: refuse a pack whose ``config["kind"]`` is another (e.g. a segmentation model given
    where a registration model is needed).
    """
    import torch

    p = Path(path)
    members = verify_pack(p, expected_sha256)  # nothing is parsed or loaded before this passes
    try:
        config = json.loads(members[CONFIG].decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(p, "has a config.json that is not JSON") from exc
    if not isinstance(config, dict):
        raise _refuse(p, "has a config.json that is not a JSON object")
    if kind is not None and config.get("kind") != kind:
        raise MedTorchInputError(f"the model pack {p.name} holds a {config.get('kind') or 'unknown'} model, not a "
                                 f"{kind} model", f"give a {kind} model pack")
    try:
        state = torch.load(io.BytesIO(members[WEIGHTS]), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unpickling failure means the weights are unusable
        raise _refuse(p, f"holds weights that cannot be read safely ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise _refuse(p, "holds weights that are not a state_dict")
    extra = {n: d for n, d in members.items() if n not in MEMBERS and n != LICENSE}
    return ModelPack(p, config, state, members[CARD].decode("utf-8", errors="replace"), pack_sha256(p),
                     members.get(LICENSE, b"").decode("utf-8", errors="replace"), extra)
