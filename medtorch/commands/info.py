"""``medtorch info``: a volume's geometry and metadata, or the DICOM series in a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtorch.commands import Command
from medtorch.errors import MedTorchInputError
from medtorch.jsonvalue import plain
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="volume file or DICOM folder")
    p.add_argument("--series-uid", default=None, help="for a DICOM folder: the series to describe")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    import numpy as np

    from medtorch.io import read_volume
    from medtorch.io.atomic import strict_json_value

    path = Path(args.path)
    if path.is_dir() and args.series_uid is None:
        from medtorch.io.dicom import list_series

        series = list_series(path)
        if len(series) > 1:
            for s in series:
                print(s.summary())
            return 0
        # one series: described below; none: read_volume says what the folder holds instead (exit 2)
    try:
        vol = read_volume(path, series_uid=args.series_uid, allow_2d=True)
    except MedTorchInputError:
        if not (path.is_file() and _is_one_dicom_image(path)):
            raise
        # a single DICOM slice: no volume, but its geometry and values can still be described
        from medtorch.io import _read_sitk, _volume_from_image

        vol = _volume_from_image(_read_sitk(path), path, None, True)
    info = {
        "size_ijk": list(vol.size), "spacing_mm": [float(v) for v in vol.spacing],
        "origin_lps_mm": [float(v) for v in vol.origin], "direction": plain(np.round(vol.direction, 6)),
        "kind": vol.kind, "dtype": str(vol.array.dtype),
        "min": float(np.min(vol.array)), "max": float(np.max(vol.array)),
        "metadata": strict_json_value(dict(vol.metadata)),  # numbers stay numbers
    }
    print(json.dumps(strict_json_value(info), indent=2, allow_nan=False))
    return 0


def _is_one_dicom_image(path: Path) -> bool:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM
        return False
    return "Rows" in ds and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1


COMMANDS = [Command("info", "show a volume's geometry and metadata, or list the DICOM series in a folder",
                    "  medtorch info scan.nii.gz\n  medtorch info /data/dicom_folder", add_arguments, run)]
