"""The model store: installed model packs in a cache folder, by name.

Where: ``$MEDTORCH_MODELS_DIR``, else the user's cache folder (``$XDG_CACHE_HOME`` or
``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows) under
``medtorch/models``. Layout::

    MODELS_DIR/
      <name>/pack.zip          the pack as imported (verified)
      <name>/bundle/           a segmentation pack unpacked as a MONAI bundle folder
                               (configs/..., docs/..., models/model.pt), what inference loads
      <name>/installed.json    name, kind, version, the pack's SHA-256, where it came from, when
      licenses.json            the license texts the user agreed to (by SHA-256): asked once
      downloads/               partial and finished downloads of the catalog (resumable)

:meth:`ModelStore.install` verifies every hash of the pack (:func:`~medtorch.models.pack.verify_pack`)
and loads its weights with ``weights_only=True`` before anything is written; a license not yet
agreed to stops it with :class:`LicenseRequired` (which carries the text to show). An installed
model is used by name (:meth:`ModelStore.resolve`), after its unpacked files are checked against
the pack's manifest again. Nothing here goes to the network.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtorch.errors import MedTorchInputError
from medtorch.io.atomic import replace_folder
from medtorch.models.pack import CARD, LICENSE, pack_sha256, verify_pack
from medtorch.models.segmentation import (
    KIND,
    bundle_member_path,
    check_weights_safe,
    read_config_member,
    safe_name,
)

__all__ = ["ENV_DIR", "InstalledModel", "LicenseRequired", "ModelStore", "default_models_dir"]

#: Environment variable naming the store's folder.
ENV_DIR = "MEDTORCH_MODELS_DIR"
_INFO, _PACK, _BUNDLE, _LICENSES = "installed.json", "pack.zip", "bundle", "licenses.json"


class LicenseRequired(MedTorchInputError):
    """The user has not agreed to a model's license yet: nothing was installed or downloaded.
    ``license_text`` is what to show, ``model`` the model's name."""

    def __init__(self, model: str, license_text: str, license_name: str = "") -> None:
        super().__init__(f"the license of the model {model}{f' ({license_name})' if license_name else ''} has not "
                         "been agreed to", "read the license and agree to it (medtorch models import/download "
                         "asks; --accept-license agrees for scripts)")
        self.model, self.license_text, self.license_name = model, license_text, license_name


def default_models_dir() -> Path:
    """``$MEDTORCH_MODELS_DIR``, else ``<user cache>/medtorch/models``."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medtorch" / "models"


@dataclass(frozen=True)
class InstalledModel:
    """An installed model, as listed."""

    name: str
    kind: str
    version: str
    sha256: str
    path: Path  # the model's folder in the store
    source: str
    installed_at: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def bundle(self) -> Path:
        return self.path / _BUNDLE

    def summary(self) -> dict[str, Any]:
        """Plain values for a listing (JSON)."""
        c = self.config
        return {"name": self.name, "kind": self.kind, "version": self.version, "title": c.get("title", self.name),
                "input_channels": [ch.get("name") for ch in c.get("input_channels", [])],
                "labels": {str(lab["value"]): lab["name"] for lab in c.get("labels", [])},
                "license": (c.get("license") or {}).get("name", ""),
                "reported_dice": (c.get("model_card") or {}).get("reported_dice", {}),
                "sha256": self.sha256, "source": self.source, "installed_at": self.installed_at,
                "path": str(self.path)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ModelStore:
    """The installed models under ``root`` (default :func:`default_models_dir`)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_models_dir()

    # -- licenses --------------------------------------------------------------------------------
    def _licenses(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / _LICENSES).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def license_key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def license_agreed(self, key: str) -> bool:
        """Whether the user agreed to the license ``key`` (a text's SHA-256, or a catalog entry's key)."""
        return key in self._licenses()

    def record_license(self, key: str, model: str) -> None:
        """Remember that the user agreed to the license ``key`` (for ``model``)."""
        from medtorch.io import write_json_atomic

        data = self._licenses()
        data.setdefault(key, {"model": model, "agreed_at": _now()})
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / _LICENSES, data)

    # -- listing ---------------------------------------------------------------------------------
    def _read(self, folder: Path) -> InstalledModel | None:
        try:
            info = json.loads((folder / _INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or "name" not in info:
            return None
        return InstalledModel(str(info["name"]), str(info.get("kind", "")), str(info.get("version", "")),
                              str(info.get("sha256", "")), folder, str(info.get("source", "")),
                              str(info.get("installed_at", "")), dict(info.get("config") or {}))

    def installed(self) -> list[InstalledModel]:
        """Every installed model, by name."""
        if not self.root.is_dir():
            return []
        found = (self._read(p) for p in sorted(self.root.iterdir()) if p.is_dir() and not p.name.startswith("."))
        return [m for m in found if m is not None]

    def get(self, name: str) -> InstalledModel:
        """The installed model ``name`` (a clear error naming the installed ones)."""
        model = self._read(self.root / name) if _plain(name) else None
        if model is None:
            names = [m.name for m in self.installed()]
            raise MedTorchInputError(
                f"no model named {name!r} is installed (in {self.root})",
                ("installed: " + ", ".join(names) + "; or give" if names else "import a model pack (medtorch models "
                 "import PACK.zip) or download one (medtorch models download NAME); or give")
                + " the path of a MONAI bundle folder, a TorchScript file or an nnU-Net folder")
        return model

    # -- import ----------------------------------------------------------------------------------
    def inspect(self, pack: str | os.PathLike[str], expected_sha256: str | None = None) -> tuple[dict[str, Any], str]:
        """Verify a pack (every hash, then its weights with ``weights_only=True``); its config and license text."""
        p = Path(pack).expanduser()
        members = verify_pack(p, expected_sha256)  # every hash, before anything is parsed or loaded
        config = read_config_member(members, p)
        check_weights_safe(members, p)
        text = members.get(LICENSE, members[CARD]).decode("utf-8", errors="replace")
        return config, text

    def install(self, pack: str | os.PathLike[str], *, accept_license: bool = False, name: str | None = None,
                source: str | None = None, expected_sha256: str | None = None) -> InstalledModel:
        """Install a pack under its name (or ``name``), replacing a model of that name.

        Raises:
            MedTorchInputError: a pack that fails a hash, holds pickled code, or is not readable.
            LicenseRequired: the license was not agreed to before and ``accept_license`` is false
                (nothing is written).
        """
        p = Path(pack).expanduser()
        members = verify_pack(p, expected_sha256)
        config = read_config_member(members, p)
        check_weights_safe(members, p)
        model_name = safe_name(name or str(config.get("name") or p.stem))
        text = members.get(LICENSE, members[CARD]).decode("utf-8", errors="replace")
        key = self.license_key(text)
        if not self.license_agreed(key):
            if not accept_license:
                raise LicenseRequired(model_name, text, str((config.get("license") or {}).get("name", "")))
            self.record_license(key, model_name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_name}.", dir=self.root))
        try:
            shutil.copyfile(p, tmp / _PACK)
            if config.get("kind") == KIND:
                for member, data in members.items():
                    rel = bundle_member_path(member)
                    if rel is not None:
                        dest = tmp / _BUNDLE / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(data)
            info = {"name": model_name, "kind": str(config.get("kind", "")), "version": str(config.get("version", "")),
                    "sha256": pack_sha256(tmp / _PACK), "source": source or str(p.resolve()), "installed_at": _now(),
                    "config": config}
            (tmp / _INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
            replace_folder(tmp, self.root / model_name)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MedTorchInputError(f"the model could not be installed in {self.root} ({exc.strerror or exc})",
                                     f"free some space, or set {ENV_DIR} to a folder you can write to") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(model_name)

    # -- verify, remove, resolve ---------------------------------------------------------------------
    def verify(self, name: str) -> InstalledModel:
        """Check an installed model: its pack's hashes, and its unpacked files against them.

        Raises:
            MedTorchInputError: naming the file that differs, and saying to import the pack again.
        """
        model = self.get(name)
        fix = f"remove it (medtorch models remove {name}) and import or download it again"
        try:
            members = verify_pack(model.path / _PACK)
        except MedTorchInputError as exc:
            raise MedTorchInputError(f"the installed model {name} is damaged: {exc.problem}", fix) from None
        if model.kind == KIND:
            for member, data in members.items():
                rel = bundle_member_path(member)
                if rel is None:
                    continue
                f = model.bundle / rel
                if not f.is_file() or _file_sha256(f) != hashlib.sha256(data).hexdigest():
                    raise MedTorchInputError(f"the installed model {name} is damaged: {_BUNDLE}/{rel} "
                                             f"{'is missing' if not f.is_file() else 'was changed after it was installed'}",
                                             fix)
        return model

    def remove(self, name: str) -> InstalledModel:
        """Remove an installed model (its agreed license stays recorded)."""
        model = self.get(name)
        trash = self.root / f".{name}.removed-{os.getpid()}"
        model.path.rename(trash)  # gone from the listing at once, even if the delete is slow
        shutil.rmtree(trash, ignore_errors=True)
        return model

    def resolve(self, spec: str) -> str:
        """What a ``--model`` value names: an existing path as it is, else an installed model's bundle
        folder after :meth:`verify` (an installed model is checked before every use)."""
        if not spec or Path(spec).expanduser().exists() or not _plain(spec):
            return spec
        model = self.verify(spec)
        if model.kind != KIND:
            raise MedTorchInputError(f"the installed model {spec} is a {model.kind or 'unknown'} model, not a "
                                     "segmentation model", "choose a segmentation model (medtorch models list)")
        return str(model.bundle)


def _plain(name: str) -> bool:
    try:
        safe_name(name)
    except MedTorchInputError:
        return False
    return True


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
