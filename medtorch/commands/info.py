"""``medtorch info``: a volume's geometry and metadata, or the DICOM series in a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtorch.commands import Command
from medtorch.jsonvalue import plain
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="volume file or DICOM folder")
    p.add_argument("--series-uid", default=None, help="for a DICOM folder: the series to describe")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    import numpy as np

    from medtorch.io import read_volume

    path = Path(args.path)
    if path.is_dir() and args.series_uid is None:
        from medtorch.io.dicom import list_series

        series = list_series(path)
        if len(series) != 1:
            for s in series:
                print(s.summary())
            return 0
    vol = read_volume(path, series_uid=args.series_uid)
    info = {
        "size_ijk": list(vol.size), "spacing_mm": [float(v) for v in vol.spacing],
        "origin_lps_mm": [float(v) for v in vol.origin], "direction": plain(np.round(vol.direction, 6)),
        "kind": vol.kind, "dtype": str(vol.array.dtype),
        "min": float(np.min(vol.array)), "max": float(np.max(vol.array)),
        "metadata": {k: str(v) for k, v in vol.metadata.items()},
    }
    print(json.dumps(info, indent=2))
    return 0


COMMANDS = [Command("info", "show a volume's geometry and metadata, or list the DICOM series in a folder",
                    "  medtorch info scan.nii.gz\n  medtorch info /data/dicom_folder", add_arguments, run)]
