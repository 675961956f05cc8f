"""A checked, resumable download (only ever started by the user, never at import time).

:func:`download_file` fetches a URL into ``dest`` through ``urllib``'s default handlers, which
honour the environment's proxy settings (``https_proxy``, ``http_proxy``, ``no_proxy``; the
system's on macOS and Windows). The bytes go to ``dest + ".part"`` first; a later call with a
partial file asks the server for the rest only (HTTP ``Range: bytes=N-``) and appends it, so an
interrupted download resumes instead of restarting. A server that ignores the range (a ``200``
reply) is read from the start. The whole file is then hashed with the algorithm the publisher
used (``md5``, ``sha1``, ``sha256``, ``sha512``); only a file with the published hash is renamed
to ``dest``; one with another hash is deleted and refused.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from medtorch.errors import Cancelled, MedTorchInputError
from medtorch.progress import CancelToken, ProgressCallback, report

__all__ = ["HASH_TYPES", "download_file", "file_hash"]

HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
_CHUNK = 1 << 20


def file_hash(path: str | os.PathLike[str], hash_type: str) -> str:
    """The hex digest of a file with ``hash_type`` (one of :data:`HASH_TYPES`)."""
    if hash_type not in HASH_TYPES:
        raise MedTorchInputError(f"unknown hash type {hash_type!r}", "use one of " + ", ".join(HASH_TYPES))
    h = hashlib.new(hash_type)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, timeout: float, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "medtorch", "Accept-Encoding": "identity"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        # an opener built now reads the proxy settings as they are now (urlopen's shared one keeps its first)
        resp = urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already whole (or longer): check it as it is
            return
        raise MedTorchInputError(f"the download of {url} failed: the server answered {exc.code} {exc.reason}",
                                 "check the address, or try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MedTorchInputError(
            f"{url} could not be reached ({reason})",
            "check the network and the proxy settings (https_proxy); on a machine without a network, copy the "
            "model pack over and import it (medtorch models import PACK.zip)") from None
    with resp:
        mode = "ab" if offset and resp.status == 206 else "wb"  # 200: the server sends the whole file again
        done = offset if mode == "ab" else 0
        length = resp.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        with open(part, mode) as fh:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
                try:
                    block = resp.read(_CHUNK)
                except (http.client.HTTPException, OSError):
                    block = b""  # the connection broke: what came is kept, the next try resumes from there
                if not block:
                    break
                fh.write(block)
                done += len(block)
                if total:
                    report(progress, cancel, min(done / total, 1.0) * 0.95, f"downloaded {done / 2**20:.1f} MB")
    if total is not None and done < total:
        raise MedTorchInputError(f"the download of {url} ended early ({done} of {total} bytes)",
                                 "run the same command again: it resumes where it stopped")


def download_file(url: str, dest: str | os.PathLike[str], hash_value: str, hash_type: str = "sha256", *,
                  timeout: float = 60.0, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part``; refuse a file whose
    ``hash_type`` digest is not ``hash_value``. Returns ``dest``.

    Raises:
        MedTorchInputError: the server cannot be reached or answers an error, the download ended
            early (run it again: it resumes), or the file's hash is not the published one.
        Cancelled: ``cancel`` was set (the partial file is kept for the next try).
    """
    if not hash_value:
        raise MedTorchInputError(f"no published hash is known for {url}", "download only files whose hash is published")
    out = Path(dest).expanduser()
    if out.is_file() and file_hash(out, hash_type) == hash_value.lower():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    _fetch(url, part, timeout, progress, cancel)
    report(progress, cancel, 0.97, "checking the download's hash")
    got = file_hash(part, hash_type)
    if got != hash_value.strip().lower():
        part.unlink(missing_ok=True)
        raise MedTorchInputError(
            f"the file downloaded from {url} does not have the published {hash_type} ({got} instead of "
            f"{hash_value}); it was deleted and not used",
            "try again later; if it happens again, the file at that address is not the published one: tell its "
            "publisher")
    os.replace(part, out)
    report(progress, cancel, 1.0, "downloaded")
    return out
