"""The operations layer (medtorch.ops): typed requests, their params round trip, one
definition of every choice, and a light import."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from medtorch import ops
from medtorch.errors import MedTorchInputError
from medtorch.ops import OPERATIONS, Roi, choices, default_of, request_from_params, request_to_params
from medtorch.ops.enhance import DenoiseRequest, SuperresRequest
from medtorch.ops.fusion import FuseRequest
from medtorch.ops.registration import RegisterRequest
from medtorch.ops.segmentation import SeededRequest, ThresholdRequest

REPO = Path(__file__).resolve().parent.parent

#: Values for the fields that have no default.
REQUIRED = {"threshold": {"lower": 100.0}}

NAMES = ("register", "threshold", "seeded", "seg_metrics", "segment_model", "detect_nodules", "blend", "fuse",
         "fuse_compare", "fusion_metrics", "fuse_eval", "denoise", "superres", "enhance", "models_list",
         "models_import", "models_download", "models_verify", "models_remove", "models_pack", "export_dicom")


def _default_request(name):
    return OPERATIONS[name].request(**REQUIRED.get(name, {}))


def test_the_table_lists_every_operation_by_its_request():
    assert tuple(OPERATIONS) == NAMES
    for name, op in OPERATIONS.items():
        assert op.name == name and op.request.operation == name and op.summary
        assert dataclasses.is_dataclass(op.request) and op.request.__dataclass_params__.frozen


@pytest.mark.parametrize("name", NAMES)
def test_default_request_round_trips_through_json_params(name):
    request = _default_request(name)
    params = request_to_params(request)
    assert request_from_params(type(request), json.loads(json.dumps(params))) == request
    assert ops.request_for(name, params) == request


def test_params_are_coerced_and_round_trip():
    req = request_from_params(RegisterRequest, {
        "mode": " Affine ", "seed": 3.0, "initial_transform": [[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        "fixed_landmarks": [[0, 0, 1]], "moving_landmarks": [[0.5, 0, 1]], "options": {"levels": [4, 2]}})
    assert req.mode == "affine" and req.seed == 3 and isinstance(req.seed, int)
    assert req.initial_transform[0] == (1.0, 0.0, 0.0, 2.0) and isinstance(req.initial_transform[0][3], float)
    assert req.fixed_landmarks == ((0.0, 0.0, 1.0),)
    assert request_from_params(RegisterRequest, request_to_params(req)) == req
    seeded = request_from_params(SeededRequest, {"roi": {"center": [1, 2, 3], "half_size": [4, 4, 4]},
                                                 "regions": {"WT": [1, 2, 3]}, "margin_mm": 3})
    assert seeded.roi == Roi((1.0, 2.0, 3.0), (4.0, 4.0, 4.0)) and seeded.regions == {"WT": (1, 2, 3)}
    assert seeded.margin_mm == 3.0 and isinstance(seeded.margin_mm, float)
    assert request_from_params(SeededRequest, json.loads(json.dumps(request_to_params(seeded)))) == seeded
    fuse = request_from_params(FuseRequest, {"ct_window": [400, 40], "color_map": "HOT"})
    assert fuse.ct_window == (400.0, 40.0) and fuse.color_map == "hot"
    assert request_from_params(ops.fusion.FuseEvalRequest, {"methods": "dwt, gff"}).methods == ("dwt", "gff")


def test_unknown_keys_are_refused_naming_the_operation_and_the_allowed_keys():
    with pytest.raises(MedTorchInputError) as exc:
        request_from_params(RegisterRequest, {"mode": "rigid", "itrations": 5})
    text = str(exc.value)
    assert "register" in text and "itrations" in text
    assert all(f.name in text for f in dataclasses.fields(RegisterRequest))
    with pytest.raises(MedTorchInputError, match="denoise"):
        ops.run("denoise", {}, {"sigma": 1.0})


def test_bad_choices_are_refused_with_the_allowed_values():
    with pytest.raises(MedTorchInputError) as exc:
        request_from_params(RegisterRequest, {"mode": "elastic"})
    assert "elastic" in str(exc.value) and "rigid, affine, deformable" in str(exc.value)
    with pytest.raises(MedTorchInputError) as exc:
        request_from_params(DenoiseRequest, {"noise_model": "speckle"})
    assert "auto, rician, gaussian, poisson" in str(exc.value)
    # a directly built request is checked the same way before it runs (and before a process starts)
    with pytest.raises(MedTorchInputError, match="gaussian, median"):
        ops.run(DenoiseRequest(method="wiener"), {})  # type: ignore[arg-type]
    from medtorch.runtime import BackgroundJob

    with pytest.raises(MedTorchInputError, match="bspline"):
        BackgroundJob("superres", {}, {"method": "cubic"})


def test_wrong_kinds_and_missing_required_values_are_refused():
    with pytest.raises(MedTorchInputError, match="seed"):
        request_from_params(RegisterRequest, {"seed": "zero"})
    with pytest.raises(MedTorchInputError, match="whole number"):
        request_from_params(RegisterRequest, {"seed": 1.5})
    with pytest.raises(MedTorchInputError, match="true or false"):
        request_from_params(ThresholdRequest, {"lower": 1.0, "keep_largest": "yes"})
    with pytest.raises(MedTorchInputError, match="needs the parameter 'lower'"):
        request_from_params(ThresholdRequest, {})
    with pytest.raises(MedTorchInputError, match="half_size"):
        request_from_params(ThresholdRequest, {"lower": 1.0, "roi": {"center": [0, 0, 0]}})
    with pytest.raises(MedTorchInputError, match="unknown operation"):
        ops.run("nope", {}, {})
    with pytest.raises(MedTorchInputError, match="threshold"):
        ops.run("denoise", {}, ThresholdRequest(lower=1.0))


def test_choices_and_defaults():
    assert choices(RegisterRequest, "mode") == ("rigid", "affine", "deformable")
    assert choices(DenoiseRequest, "noise_model") == ("auto", "rician", "gaussian", "poisson")
    assert choices(ops.fusion.FuseCompareRequest, "methods") == get_args(ops.fusion.FusionMethod)
    assert default_of(SeededRequest, "regions") == {} and default_of(SuperresRequest, "method") == "bspline"
    with pytest.raises(KeyError):
        choices(RegisterRequest, "seed")
    with pytest.raises(KeyError):
        default_of(ThresholdRequest, "lower")


def test_request_literals_are_the_cores_choices():
    """One definition: the core's tuples are the requests' Literals (or, for the core's tables,
    the same names)."""
    from medtorch.enhance.compare import COMPARISONS
    from medtorch.enhance.denoise import DENOISE_METHODS
    from medtorch.enhance.noise import NOISE_MODELS
    from medtorch.enhance.superres import SR_METHODS
    from medtorch.fusion.color import COLOR_MAPS
    from medtorch.fusion.methods import METHODS
    from medtorch.registration import ENGINES, INITS, METRICS, MODES
    from medtorch.registration.classic import CLASSIC_MODES
    from medtorch.segment.postprocess import BRATS_LABELS

    assert choices(RegisterRequest, "mode") == MODES == CLASSIC_MODES
    assert choices(RegisterRequest, "metric") == METRICS
    assert choices(RegisterRequest, "engine") == ENGINES
    assert choices(RegisterRequest, "init") == INITS
    assert choices(DenoiseRequest, "method") == DENOISE_METHODS
    assert choices(DenoiseRequest, "noise_model") == ("auto", *NOISE_MODELS)
    assert choices(SuperresRequest, "method") == SR_METHODS
    for cls in (DenoiseRequest, SuperresRequest, ops.enhance.EnhanceRequest):
        assert choices(cls, "comparison") == COMPARISONS
    assert choices(FuseRequest, "color_map") == COLOR_MAPS
    assert set(choices(FuseRequest, "method")) == set(METHODS)
    assert set(choices(ops.segmentation.ModelRequest, "label_convention")) == {"auto", *BRATS_LABELS}


def test_request_defaults_are_the_cores_defaults():
    """Where a core function or options class has the same parameter, its default is the request's."""
    import inspect

    from medtorch.enhance.contrast import EnhanceSteps
    from medtorch.registration import register
    from medtorch.segment.seeded import SeededOptions

    options = {f.name: f.default for f in dataclasses.fields(SeededOptions)}
    assert options == {name: default_of(SeededRequest, name) for name in options}
    steps = {f.name: f.default for f in dataclasses.fields(EnhanceSteps) if f.name != "histogram_reference"}
    assert steps == {name: default_of(ops.enhance.EnhanceRequest, name) for name in steps}
    sig = inspect.signature(register).parameters
    for name in ("mode", "metric", "engine", "init", "seed", "initial_transform", "device", "resample_output"):
        assert sig[name].default == default_of(RegisterRequest, name), name


def test_importing_ops_imports_no_algorithm():
    code = ("import sys, medtorch.ops\n"
            "heavy = ['torch', 'SimpleITK', 'scipy', 'monai', 'medtorch.registration', 'medtorch.segment.seeded',\n"
            "         'medtorch.fusion', 'medtorch.enhance']\n"
            "print([m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_no_registry_filled_by_import_side_effects():
    import medtorch.runtime as runtime

    assert not hasattr(runtime, "register") and not hasattr(runtime, "discover_operations")
    for area in ("registration", "segment", "fusion", "enhance"):
        assert not (REPO / "medtorch" / area / "ops.py").exists()
    assert not (REPO / "medtorch" / "segment" / "dl_ops.py").exists()


def test_run_gives_the_cores_result_in_process(tmp_path):
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.segment.threshold import ThresholdResult

    vol = blob_phantom(oblique_geometry())
    by_request = ops.run(ThresholdRequest(lower=150.0, roi=Roi((0.0, 0.0, 0.0), (30.0, 30.0, 30.0))), {"input": vol})
    by_name = ops.run("threshold", {"input": vol}, {"lower": 150, "roi": {"center": [0, 0, 0], "half_size": [30] * 3}})
    assert isinstance(by_request.native, ThresholdResult)
    assert by_request.values == by_name.values and by_request.values["voxel_count"] > 0
    assert (by_request.volumes["label"].array == by_name.volumes["label"].array).all()


# -- the command line: its choices and defaults are the requests', and it runs through medtorch.ops --------

CLI_FIELDS = {
    "register": (RegisterRequest, {"--mode": "mode", "--metric": "metric", "--engine": "engine", "--init": "init",
                                   "--seed": "seed"}),
    "segment": (SeededRequest, {"--margin": "margin_mm", "--smoothing": "smoothing_mm", "--radius": "radius_mm",
                                "--smoothness": "smoothness", "--iterations": "iterations", "--seed": "seed",
                                "--min-size": "min_size_mm3"}),
    "threshold-seg": (ThresholdRequest, {"--upper": "upper"}),
    "seg-metrics": (ops.segmentation.SegMetricsRequest, {"--structures": "structures", "--tolerance": "tolerance_mm"}),
    "denoise": (DenoiseRequest, {"--method": "method", "--iterations": "iterations", "--noise-model": "noise_model",
                                 "--output-dtype": "output_dtype", "--seed": "seed"}),
    "superres": (SuperresRequest, {"--method": "method", "--axis": "axis", "--adversarial-weight": "adversarial_weight",
                                   "--profile-shape": "profile_shape",
                                   "--output-dtype": "output_dtype", "--seed": "seed"}),
    "enhance": (ops.enhance.EnhanceRequest, {"--n4-shrink": "n4_shrink", "--clahe-clip": "clahe_clip",
                                             "--clahe-kernel": "clahe_kernel_mm", "--unsharp-sigma": "unsharp_sigma_mm",
                                             "--unsharp-amount": "unsharp_amount"}),
    "fuse": (FuseRequest, {"--method": "method", "--fixed-modality": "fixed_modality", "--ct-window": "ct_window",
                           "--normalization": "normalization", "--mi-unit": "mi_unit", "--color-map": "color_map",
                           "--functional": "functional"}),
    "fuse-eval": (ops.fusion.FuseEvalRequest, {"--baseline": ("baseline", "free text, lower-cased"),
                                               "--mi-unit": "mi_unit", "--color-map": "color_map"}),
}


def _subparser(command):
    import argparse

    from medtorch.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", sorted(CLI_FIELDS))
def test_cli_choices_and_defaults_are_the_requests(command):
    cls, flags = CLI_FIELDS[command]
    parser = _subparser(command)
    for flag, name in flags.items():
        action = next(a for a in parser._actions if flag in a.option_strings)
        if isinstance(name, tuple):  # (field, why the option takes more than the field's choices)
            assert action.default == default_of(cls, name[0]) and action.choices is None, flag
            continue
        assert action.default == default_of(cls, name), flag
        try:
            expected = choices(cls, name)
        except KeyError:
            expected = None
        assert (tuple(action.choices) if action.choices is not None else None) == expected, flag


def _spy(monkeypatch):
    calls = []
    real = ops.run

    def spy(name_or_request, *args, **kwargs):
        calls.append(name_or_request)
        return real(name_or_request, *args, **kwargs)

    monkeypatch.setattr(ops, "run", spy)
    return calls


def test_cli_commands_run_through_the_operations(tmp_path, monkeypatch):
    import numpy as np

    from medtorch.cli import main
    from medtorch.io import write_volume
    from medtorch.phantoms import blob_phantom, oblique_geometry
    from medtorch.registration.synthetic import synthetic_pair
    from medtorch.volume import Volume

    calls = _spy(monkeypatch)
    vol = blob_phantom(oblique_geometry(size=(24, 22, 16)), noise=4.0, seed=2)
    write_volume(vol, tmp_path / "v.nrrd")
    seeds = np.zeros(vol.array.shape, np.uint8)
    z, y, x = np.array(vol.array.shape) // 2
    seeds[z, y - 1:y + 2, x - 1:x + 2] = 1
    seeds[z, 1:3, 1:4] = 2
    write_volume(Volume(seeds, vol.geometry, "label"), tmp_path / "s.nrrd")
    pair = synthetic_pair("rigid", seed=1, size=32, spacing=2.0)
    write_volume(pair.fixed, tmp_path / "f.nrrd")
    write_volume(pair.moving, tmp_path / "m.nrrd")
    v, s = str(tmp_path / "v.nrrd"), str(tmp_path / "s.nrrd")
    c = [round(float(x)) for x in vol.geometry.center()]
    assert main(["threshold-seg", "--in", v, "--lower", "150", "--roi-center", ",".join(map(str, c)), "--roi-size", "30,30,20",
                 "--out", str(tmp_path / "t.nrrd"), "-q"]) == 0
    assert main(["segment", "--in", v, "--seeds", s, "--out", str(tmp_path / "seg.nrrd"), "--seed", "3", "-q"]) == 0
    assert main(["register", "--fixed", str(tmp_path / "f.nrrd"), "--moving", str(tmp_path / "m.nrrd"), "--mode", "affine",
                 "--out-transform", str(tmp_path / "r.tfm"), "--option", "iterations=4", "--device", "cpu", "-q"]) == 0
    assert main(["denoise", "--in", v, "--out", str(tmp_path / "d.nrrd"), "--method", "anisotropic", "-q"]) == 0
    assert [type(c) for c in calls] == [ThresholdRequest, SeededRequest, RegisterRequest, DenoiseRequest]
    assert calls[0].roi == Roi(tuple(map(float, c)), (15.0, 15.0, 10.0)) and calls[1].seed == 3
    assert calls[2].mode == "affine" and calls[2].options == {"iterations": 4} and not calls[2].resample_output
    assert calls[3].iterations == default_of(DenoiseRequest, "iterations")


# -- the Slicer modules: parameter-node defaults and combo boxes are the requests' ----------------------------

#: module -> {parameter-node field: (request, request field[, items the panel adds, choices it leaves out])};
#: an added item is the panel's name for the request's None (colour map "none": no colour fusion).
MODULE_FIELDS = {
    "FusionRegistration": {
        "registrationMode": (RegisterRequest, "mode"), "metric": (RegisterRequest, "metric"),
        "engine": (RegisterRequest, "engine"), "initialization": (RegisterRequest, "init"),
        "seed": (RegisterRequest, "seed"), "blendWeight": (ops.fusion.BlendRequest, "weight"),
        "fusionMethod": (FuseRequest, "method", (), ("max",)), "normalization": (FuseRequest, "normalization"),
        "fixedModality": (FuseRequest, "fixed_modality"), "movingModality": (FuseRequest, "moving_modality"),
        "ctWindow": (FuseRequest, "ct_window"), "colorMap": (FuseRequest, "color_map", ("none",), ()),
        "evaluationBaseline": (ops.fusion.FuseCompareRequest, "baseline", (), ("max",)),
    },
    "EnhanceSR": {
        "method": (DenoiseRequest, "method"), "iterations": (DenoiseRequest, "iterations"),
        "seed": (DenoiseRequest, "seed"), "comparison": (DenoiseRequest, "comparison"),
        "srMethod": (SuperresRequest, "method"), "axis": (SuperresRequest, "axis"),
        "clahe": (ops.enhance.EnhanceRequest, "clahe"), "claheClip": (ops.enhance.EnhanceRequest, "clahe_clip"),
        "unsharp": (ops.enhance.EnhanceRequest, "unsharp"),
        "unsharpAmount": (ops.enhance.EnhanceRequest, "unsharp_amount"),
    },
    "SegmentTumor": {
        "largestComponent": (ThresholdRequest, "keep_largest"), "smoothness": (SeededRequest, "smoothness"),
        "seededMethod": (SeededRequest, "method"),
        "marginMm": (SeededRequest, "margin_mm"), "minSizeMm3": (SeededRequest, "min_size_mm3"),
        "fillHoles": (SeededRequest, "fill_holes"), "testTimeAugmentation": (ops.segmentation.ModelRequest, "tta"),
        "minNoduleMm": (ops.segmentation.NodulesRequest, "min_diameter_mm"),
        "maxNoduleMm": (ops.segmentation.NodulesRequest, "max_diameter_mm"),
    },
}


def _combo_items(module):
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    out = {}
    for w in root.iter("widget"):
        if w.get("class") != "QComboBox":
            continue
        param = next((p.findtext("string") for p in w.findall("property") if p.get("name") == "SlicerParameterName"),
                     None)
        out[param] = [i.findtext("property/string") for i in w.findall("item")]
    return out


@pytest.mark.parametrize("module", sorted(MODULE_FIELDS))
def test_module_parameters_and_combo_boxes_are_the_requests(module, headless_slicer):
    import slicer_testbed
    from slicer.parameterNodeWrapper import Choice

    node_fields = getattr(slicer_testbed.load_module(module), module + "ParameterNode").allParameters
    combos = _combo_items(module)
    for name, (cls, field, *extra) in MODULE_FIELDS[module].items():
        f = node_fields[name]
        added, left_out = extra if extra else ((), ())
        assert (None if f.default in added else f.default) == default_of(cls, field), name
        try:
            values = choices(cls, field)
        except KeyError:
            continue
        expected = [*added, *(v for v in values if v not in left_out)]
        node_choice = next(e for e in f.extras if isinstance(e, Choice)).choices
        assert sorted(node_choice) == sorted(expected), name
        assert sorted(combos[name]) == sorted(expected), name
