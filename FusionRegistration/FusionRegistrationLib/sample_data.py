"""MedTorch's sample data in Slicer's Sample Data module (category "MedTorch").

The files ship with the FusionRegistration module (``Resources/SampleData``), made from the
MNI152 2009a template by ``tools/make_sample_data.py`` with the demo's own functions: a T1,
a T2-like contrast of the same head misaligned by a known rigid transform, and a T1 with a
tumor phantom and its ground truth. They load from the local files (``file://`` URIs):
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: (sample name, file, node name, thumbnail) of each data set.
SAMPLES = (
    ("MedTorch T1 (MNI152)", "MedTorchT1.nrrd", "MedTorchT1", "MedTorchT1.png"),
    ("MedTorch T2-like, misaligned", "MedTorchT2likeMisaligned.nrrd", "MedTorchT2likeMisaligned",
     "MedTorchT2likeMisaligned.png"),
    ("MedTorch tumor phantom", "MedTorchTumorPhantom.nrrd", "MedTorchTumorPhantom", "MedTorchTumorPhantom.png"),
)
CATEGORY = "MedTorch"


def sample_sources(data_dir: str | Path) -> list[dict[str, Any]]:
    """Keyword arguments for ``SampleDataLogic.registerCustomSampleDataSource``, one per data set."""
    folder = Path(data_dir)
    sources = []
    for name, filename, node_name, thumbnail in SAMPLES:
        path = folder / filename
        sources.append({
            "category": CATEGORY,
            "sampleName": name,
            "uris": path.resolve().as_uri(),
            "fileNames": filename,
            "nodeNames": node_name,
            "thumbnailFileName": str(folder / thumbnail),
            "loadFileType": "VolumeFile",
        })
    return sources


def register_sample_data(data_dir: str | Path) -> int:
    """Register the data sets with Slicer's Sample Data module; returns how many were registered."""
    import SampleData

    count = 0
    for kwargs in sample_sources(data_dir):
        if Path(kwargs["uris"][len("file://"):]).exists():
            SampleData.SampleDataLogic.registerCustomSampleDataSource(**kwargs)
            count += 1
    return count
