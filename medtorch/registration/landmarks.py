"""Landmark (fiducial) files as ``(N, 3)`` LPS arrays, for initialisation and TRE.

Read by :func:`read_landmarks`:

* Slicer markups JSON (``.mrk.json``): the control points of the first markup, in the
  coordinate system the file declares (``LPS`` or ``RAS``);
* Slicer's legacy fiducial CSV (``.fcsv``): RAS unless its header says
  ``# CoordinateSystem = LPS`` (or ``= 1``);
* plain text (``.csv``, ``.txt``): one ``x, y, z`` LPS point per line (``#`` comments and a
  non-numeric header line are skipped).

Pairs are matched by order: the i-th fixed point corresponds to the i-th moving point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medtorch import coords
from medtorch.errors import MedTorchInputError

__all__ = ["read_landmarks", "ras_to_lps"]

def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """RAS <-> LPS (the same sign flip both ways) of ``(N, 3)`` points."""
    return coords.lps_from_ras(np.asarray(points, dtype=np.float64).reshape(-1, 3))


def _from_mrk_json(p: Path) -> np.ndarray:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        markup = data["markups"][0]
        points = [cp["position"] for cp in markup.get("controlPoints", [])]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise MedTorchInputError(f"{p.name} is not a Slicer markups file", "save the points from Slicer as .mrk.json") from exc
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    return ras_to_lps(arr) if system == "RAS" else arr


def _from_text(p: Path, ras_default: bool) -> np.ndarray:
    ras = ras_default
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            low = text.lower().replace(" ", "")
            if low.startswith("#coordinatesystem="):
                value = low.split("=", 1)[1]
                ras = value in ("ras", "0")
            continue
        parts = [v for v in text.replace(";", ",").replace("\t", ",").split(",")]
        if p.suffix.lower() == ".fcsv":
            parts = parts[1:4]  # id,x,y,z,...
        else:
            parts = [v for v in " ".join(parts).split()][:3] if len(parts) < 3 else parts[:3]
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            if rows:
                raise MedTorchInputError(f"{p.name}: line {text!r} is not three numbers",
                                         "write one x, y, z point per line") from None
    if not rows:
        raise MedTorchInputError(f"{p.name} holds no points", "write one x, y, z point (LPS mm) per line")
    arr = np.asarray(rows, dtype=np.float64)
    return ras_to_lps(arr) if ras else arr


def read_landmarks(path: str | os.PathLike[str]) -> np.ndarray:
    """The points of a landmark file as an ``(N, 3)`` LPS array (mm)."""
    p = Path(path)
    if not p.is_file():
        raise MedTorchInputError(f"landmark file not found: {p}", "check the path")
    name = p.name.lower()
    if name.endswith(".json"):
        pts = _from_mrk_json(p)
    elif name.endswith(".fcsv"):
        pts = _from_text(p, ras_default=True)
    else:
        pts = _from_text(p, ras_default=False)
    if not np.all(np.isfinite(pts)):
        raise MedTorchInputError(f"{p.name} contains non-finite coordinates", "check the points")
    return pts
