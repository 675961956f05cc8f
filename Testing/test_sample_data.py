"""Slicer Sample Data registration: the shipped data sets load from local files, and match the demo's truth."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

from FusionRegistrationLib.sample_data import SAMPLES, register_sample_data, sample_sources
from medtorch.io import read_volume
from medtorch.resample import resample

DATA = Path(__file__).resolve().parent.parent / "FusionRegistration" / "Resources" / "SampleData"


def test_sources_point_at_shipped_files():
    sources = sample_sources(DATA)
    assert len(sources) == len(SAMPLES)
    for src in sources:
        assert src["uris"].startswith("file://")
        assert Path(src["uris"][len("file://"):]).exists()
        assert Path(src["thumbnailFileName"]).exists()


def test_register_calls_sample_data_logic(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kw: calls.append(kw)))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    assert register_sample_data(DATA) == 3
    assert {c["category"] for c in calls} == {"MedTorch"}


def test_misaligned_sample_is_aligned_by_its_truth_transform():
    t1 = read_volume(DATA / "MedTorchT1.nrrd")
    moving = read_volume(DATA / "MedTorchT2likeMisaligned.nrrd")
    truth = np.asarray(json.loads((DATA / "MedTorchT2likeTruthTransform.json").read_text())["matrix"])
    head = t1.array > 20

    def corr(a, b):
        return float(np.corrcoef(a[head], b[head])[0, 1])

    aligned = resample(moving, t1.geometry, truth)
    unaligned = resample(moving, t1.geometry, None)
    # T2-like contrast is inverted relative to T1 (CSF bright): strong negative correlation once aligned
    assert corr(t1.array, aligned.array) < -0.5
    assert abs(corr(t1.array, aligned.array)) > abs(corr(t1.array, unaligned.array)) + 0.2


def test_tumor_truth_is_inside_the_bright_region():
    phantom = read_volume(DATA / "MedTorchTumorPhantom.nrrd")
    truth = read_volume(DATA / "MedTorchTumorTruth.seg.nrrd")
    inside = phantom.array[truth.array > 0].mean()
    brain = phantom.array[(phantom.array > 20) & (truth.array == 0)].mean()
    assert inside > 1.3 * brain
