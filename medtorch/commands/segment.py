"""``medtorch segment``: seeded segmentation (``--seeds``) or a trained model (``--model``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtorch.commands import Command, progress_bar, vec3
from medtorch.errors import MedTorchInputError
from medtorch.ops import choices, default_of
from medtorch.ops.segmentation import SeededRequest
from medtorch.progress import CancelToken


def _names(text: str) -> dict[int, str]:
    """argparse type: ``1=Necrosis,2=Edema,3=Enhancing tumor``."""
    out: dict[int, str] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        value, sep, name = part.partition("=")
        if not sep or not value.strip().isdigit() or not name.strip():
            raise argparse.ArgumentTypeError(f"expected VALUE=NAME pairs separated by commas, got {text!r}")
        out[int(value)] = name.strip()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="input", action="append", required=True, metavar="VOLUME",
                   help="input volume (file or DICOM folder); repeat for several co-registered channels "
                        "(e.g. --in flair.nii.gz --in t1c.nii.gz). With --model, NAME=path names the model's channel")
    p.add_argument("--out", required=True, help="label map to write (.nrrd, .nii.gz, .mha)")
    how = p.add_argument_group("what segments (give one)")
    how.add_argument("--seeds", default=None,
                     help="seed label map: 0 unlabelled, 1... classes, the largest value the background; the output "
                          "keeps each class's value and writes the background as 0")
    how.add_argument("--model", default=None,
                     help="trained model: the name of an installed model (medtorch models list), a MONAI bundle "
                          "folder, a TorchScript file or an nnU-Net v2 model folder (never downloaded here)")
    seeded = p.add_argument_group("seeded segmentation (--seeds)")
    seeded.add_argument("--method", default=default_of(SeededRequest, "method"), choices=choices(SeededRequest, "method"),
                        help="geodesic: every class grows from its seeds along the cheapest paths, paying for "
                             "intensity changes and for tissue unlike its seeds (best on real tumor MRI); "
                             "competition: localized region competition")
    seeded.add_argument("--margin", type=float, default=default_of(SeededRequest, "margin_mm"),
                        help="least margin around the seeds' bounding box, mm (at least --margin-fraction of "
                             "the seeds' extent per side)")
    seeded.add_argument("--margin-fraction", type=float, default=default_of(SeededRequest, "margin_fraction"),
                        help="margin as a fraction of the seeds' extent on each side (0.2 as Slicer's Grow from seeds)")
    seeded.add_argument("--region-aspect", type=float, default=default_of(SeededRequest, "region_aspect"),
                        help="every axis of the region spans at least this fraction of the seeds' largest extent, so "
                             "strokes on one slice get a region as deep as it is wide (0: off)")
    seeded.add_argument("--smoothing", type=float, default=default_of(SeededRequest, "smoothing_mm"),
                        help="feature smoothing (Gaussian sigma), mm")
    seeded.add_argument("--radius", type=float, default=default_of(SeededRequest, "radius_mm"),
                        help="competition: window radius of the local region statistics, mm")
    seeded.add_argument("--smoothness", type=float, default=default_of(SeededRequest, "smoothness"),
                        help="competition: weight of the boundary smoothness term")
    seeded.add_argument("--iterations", type=int, default=default_of(SeededRequest, "iterations"),
                        help="competition: most region-competition iterations")
    seeded.add_argument("--growcut-cavity", action=argparse.BooleanOptionalAction,
                        default=default_of(SeededRequest, "growcut_cavity"),
                        help="add what FastGrowCut (Slicer's Grow from seeds) gives the tumor inside the result's "
                             "convex hull: dark cavities and necrosis enclosed by the tumor (needs "
                             "pip install 'medtorch[growcut]')")
    seeded.add_argument("--seed", type=int, default=default_of(SeededRequest, "seed"),
                        help="random seed (k-means start), recorded in --info")
    seeded.add_argument("--roi-center", type=vec3, default=None,
                        help="segment inside this box (centre x,y,z in LPS mm) instead of around the seeds")
    seeded.add_argument("--roi-extent", type=vec3, default=None, help="box size x,y,z in mm (with --roi-center)")
    post = p.add_argument_group("post-processing and volumetry")
    post.add_argument("--min-size", type=float, default=default_of(SeededRequest, "min_size_mm3"),
                      help="remove pieces of a label smaller than this, mm^3")
    post.add_argument("--largest", action="store_true", help="keep only the largest connected piece of the tumor")
    post.add_argument("--fill-holes", action="store_true", help="fill cavities enclosed in the tumor")
    post.add_argument("--names", type=_names, default=None,
                      help="class names for the volumetry, e.g. 1=Necrosis,2=Edema,3=Enhancing tumor")
    post.add_argument("--regions", default=None, choices=["brats2021", "brats2023"],
                      help="also report the BraTS regions TC, WT, ET (labels of that convention)")
    post.add_argument("--volumes-csv", default=None, help="write mL per class and region to this CSV file")
    post.add_argument("--info", default=None, help="write the run's details (settings, seed, times, mL) as JSON")
    model = p.add_argument_group("model inference (--model)")
    model.add_argument("--overlap", type=float, default=None, help="sliding-window overlap, 0 to <1 (default: the bundle's)")
    model.add_argument("--roi-size", type=vec3, default=None, help="sliding-window size in voxels x,y,z (default: the bundle's)")
    model.add_argument("--sw-batch-size", type=int, default=None, help="windows per batch")
    model.add_argument("--tta", action="store_true", help="flip test-time augmentation (4x the time)")
    model.add_argument("--threshold", type=float, default=None, help="probability threshold of sigmoid outputs (0.5)")
    model.add_argument("--label-convention", default=None, choices=["auto", "brats2021", "brats2023"],
                       help="BraTS label values of the output")
    model.add_argument("--crop-foreground", action="store_true", help="run the network on the non-zero box only")
    model.add_argument("--output-interpolation", default=None, choices=["nearest", "linear"],
                       help="how labels go back to the input grid")
    model.add_argument("--cpu-bf16", action="store_true", help="bfloat16 autocast on the CPU (faster on some CPUs)")
    model.add_argument("--trust-bundle-code", action="store_true",
                       help="allow a bundle whose config runs its own Python code")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    if args.seeds and args.model:
        raise MedTorchInputError("both --seeds and --model were given", "give --seeds (seeded) or --model (trained model)")
    if not args.seeds and not args.model:
        raise MedTorchInputError("neither --seeds nor --model was given",
                                 "give a seed label map (--seeds S.nrrd) or a trained model (--model DIR_OR_FILE)")
    if args.model:
        try:
            import medtorch.segment.inference  # noqa: F401 - MONAI and the model code
        except ImportError as exc:
            raise MedTorchInputError(f"segmentation with a trained model is not available in this installation ({exc})",
                                     "update MedTorch, or use seeded segmentation (--seeds)") from None
        return int(run_model_cli(args, cancel))
    return run_seeded(args, cancel)


# -- --model: a trained model -------------------------------------------------------------------


def _parse_inputs(values: Sequence[str]) -> tuple[list[str], list[str | None]]:
    """``--in`` values: ``path`` or ``NAME=path`` (a channel name of the model)."""
    paths: list[str] = []
    names: list[str | None] = []
    for v in values:
        name, sep, rest = str(v).partition("=")
        if sep and name and not Path(v).exists() and "/" not in name and "\\" not in name:
            names.append(name)
            paths.append(rest)
        else:
            names.append(None)
            paths.append(str(v))
    if any(n is not None for n in names) and any(n is None for n in names):
        raise MedTorchInputError("some --in values name their channel (NAME=path) and some do not",
                                 "name every channel, or none (then they are taken in the model's order)")
    return paths, names


def _arg(args: argparse.Namespace, *names: str, default: Any = None) -> Any:
    for n in names:
        if hasattr(args, n) and getattr(args, n) is not None:
            return getattr(args, n)
    return default


def run_model_cli(args: argparse.Namespace, cancel: CancelToken) -> int:
    """``medtorch segment --model DIR_OR_FILE --in V [--in V2 ...] --out seg.nrrd``.

    Reads the ``--in`` volumes (``path`` or ``NAME=path``), runs :func:`~medtorch.segment.inference.segment_with_model`
    and writes the label map atomically to ``--out``. Options read from ``args`` when the
    command defines them: ``overlap``, ``tta``, ``roi_size``, ``sw_batch_size``,
    ``label_convention``, ``threshold``, ``crop_foreground``, ``output_interpolation``,
    ``cpu_bf16``, ``trust_bundle_code``, and the post-processing and volumetry options of the
    seeded form (``min_size`` mm^3, ``largest``, ``fill_holes``, ``names``, ``regions``,
    ``volumes_csv``: mL per label and, for BraTS models, per region TC / WT / ET),
    ``info`` (a JSON file for the run's details), ``device``, ``quiet``.
    """
    from medtorch.io import read_volume, write_json_atomic, write_text_atomic, write_volume
    from medtorch.models.store import ModelStore
    from medtorch.segment.inference import segment_with_model
    from medtorch.segment.postprocess import BRATS_LABELS, BRATS_REGIONS

    model_path = _arg(args, "model")
    out = _arg(args, "out", "output")
    raw_inputs = _arg(args, "input", "inputs", "in_", "volumes", default=[])
    if isinstance(raw_inputs, str):
        raw_inputs = [raw_inputs]
    if not model_path or not out or not raw_inputs:
        raise MedTorchInputError("--model, --in and --out are all needed", "give the model, the input volume(s) and the output file")
    model_path = ModelStore().resolve(str(model_path))  # an installed model's name: its checked bundle folder
    paths, names = _parse_inputs(raw_inputs)
    vols = [read_volume(p) for p in paths]
    for p, v in zip(paths, vols):
        v.metadata.setdefault("path", p)
    inputs: Any = dict(zip(names, vols)) if names and names[0] is not None else vols
    roi = _arg(args, "roi_size")
    label, info = segment_with_model(
        model_path, inputs,
        overlap=_arg(args, "overlap"),
        tta=bool(_arg(args, "tta", default=False)),
        device=_arg(args, "device"),
        roi_size=[int(round(v)) for v in roi] if roi is not None else None,
        sw_batch_size=_arg(args, "sw_batch_size"),
        threshold=float(_arg(args, "threshold", default=0.5)),
        label_convention=str(_arg(args, "label_convention", "brats", default="auto")),
        crop_foreground=bool(_arg(args, "crop_foreground", default=False)),
        output_interpolation=str(_arg(args, "output_interpolation", default="nearest")),  # type: ignore[arg-type]
        cpu_bf16=bool(_arg(args, "cpu_bf16", default=False)),
        channels_last=_arg(args, "channels_last", default=None),
        trust_code=bool(_arg(args, "trust_bundle_code", "trust_code", default=False)),
        progress=progress_bar(args), cancel=cancel,
    )
    min_size = float(_arg(args, "min_size", default=0.0))
    largest = bool(_arg(args, "largest", default=False))
    fill = bool(_arg(args, "fill_holes", default=False))
    if min_size > 0 or largest or fill:
        from medtorch.segment.postprocess import postprocess_label

        label = postprocess_label(label, min_size, largest, fill)  # type: ignore[assignment]
        info["postprocessing"] = {"min_size_mm3": min_size, "largest": largest, "fill_holes": fill}
    write_volume(label, out)
    from medtorch.segment.metrics import volumetry

    label_names = dict(info["labels"])
    label_names.update(_arg(args, "names", default={}) or {})
    convention = _arg(args, "regions", default=None) or info.get("label_convention")
    regions = None
    if convention in BRATS_LABELS:
        lab = BRATS_LABELS[convention]
        regions = {r: [lab[c] for c in classes] for r, classes in BRATS_REGIONS.items()}
    rows = volumetry(label, {int(k): str(v) for k, v in label_names.items()}, regions)
    info["volumes_ml"] = {r.name: r.volume_ml for r in rows}
    csv_path = _arg(args, "volumes_csv")
    if csv_path:
        lines = ["name,values,voxels,volume_ml"] + [
            f"{r.name},{' '.join(str(v) for v in r.values)},{r.voxels},{r.volume_ml:.6f}" for r in rows]
        write_text_atomic(csv_path, "\n".join(lines) + "\n")
    info_path = _arg(args, "info", "info_json")
    if info_path:
        write_json_atomic(info_path, info)
    if not getattr(args, "quiet", False):
        parts = ", ".join(f"{k}: {v:.2f} mL" for k, v in info["volumes_ml"].items()) or "no voxel labelled"
        print(f"Segmented with {info['model']['source']} model in {info['seconds']['total']:.1f} s: {parts}")
    return 0


def _input_path(value: str) -> str:
    """``path`` or ``NAME=path`` (the name is ignored by seeded segmentation)."""
    name, sep, rest = value.partition("=")
    if sep and not Path(value).exists() and "/" not in name and "\\" not in name:
        return rest
    return value


def run_seeded(args: argparse.Namespace, cancel: CancelToken) -> int:
    """The ``--seeds`` form: read, segment, post-process, write the label map (and CSV/JSON)."""
    from medtorch import __version__, ops
    from medtorch.io import read_volume, write_json_atomic, write_text_atomic, write_volume
    from medtorch.ops import Roi
    from medtorch.segment.metrics import volumetry
    from medtorch.segment.postprocess import BRATS_LABELS, BRATS_REGIONS

    if (args.roi_center is None) != (args.roi_extent is None):
        raise MedTorchInputError("--roi-center and --roi-extent go together", "give both, or neither")
    roi = None if args.roi_center is None else Roi.from_size(args.roi_center, args.roi_extent)
    inputs = {f"channel{i}": read_volume(_input_path(v)) for i, v in enumerate(args.input)}
    inputs["seeds"] = read_volume(args.seeds, kind="label")
    request = SeededRequest(method=args.method, margin_mm=args.margin, margin_fraction=args.margin_fraction,
                            region_aspect=args.region_aspect,
                            smoothing_mm=args.smoothing, radius_mm=args.radius,
                            smoothness=args.smoothness, iterations=args.iterations,
                            growcut_cavity=args.growcut_cavity,
                            device=getattr(args, "device", None), seed=args.seed, roi=roi, min_size_mm3=args.min_size,
                            largest=args.largest, fill_holes=args.fill_holes)
    result = ops.run(request, inputs, progress=progress_bar(args), cancel=cancel)
    res, label = result.native, result.volumes["label"]
    write_volume(label, args.out)
    tumor = [c for c in res.classes if c != res.background]
    names = {c: (args.names or {}).get(c, f"class {c}") for c in tumor}
    regions = None
    if args.regions:
        lab = BRATS_LABELS[args.regions]
        regions = {r: [lab[c] for c in cls] for r, cls in BRATS_REGIONS.items()}
    rows = volumetry(label, names, regions)
    if args.volumes_csv:
        lines = ["name,values,voxels,volume_ml"] + [
            f"{r.name},{' '.join(str(v) for v in r.values)},{r.voxels},{r.volume_ml:.6f}" for r in rows]
        write_text_atomic(args.volumes_csv, "\n".join(lines) + "\n")
    if args.info:
        info = {"medtorch": __version__, "method": "seeded (" + ("geodesic competition" if args.method == "geodesic"
                                               else "localized region competition") + ")",
                "inputs": list(args.input), "seeds": args.seeds, "classes": res.classes, "background": res.background,
                "options": res.options, "seed": res.options.get("seed"), "region_zyx": [list(res.region[0]),
                                                                                     list(res.region[1])],
                "iterations": res.iterations, "seconds": res.seconds,
                "volumes_ml": {r.name: r.volume_ml for r in rows},
                "verdict": None if res.verdict is None else res.verdict.to_dict()}
        write_json_atomic(args.info, info)
    if not args.quiet:
        parts = ", ".join(f"{r.name}: {r.volume_ml:.2f} mL" for r in rows)
        print(f"Segmented {len(tumor)} class(es) in {res.seconds['total']:.1f} s: {parts}")
    if res.verdict is not None and not res.verdict.passed:
        # a result that may be wrong says so, on stderr, whatever --quiet says
        print(f"medtorch segment: {res.verdict.summary()}", file=sys.stderr)
        for line in res.verdict.explain():
            print(f"  {line}", file=sys.stderr)
    return 0


COMMANDS = [Command(
    "segment", "segment a tumor from seeds (no training) or with a trained model (offline)",
    "  medtorch segment --in flair.nii.gz --in t1c.nii.gz --seeds seeds.nrrd --out tumor.nrrd\n"
    "  medtorch segment --in flair.nii.gz --in t1c.nii.gz --seeds seeds.nrrd --out tumor.nrrd "
    "--names 1=Necrosis,2=Edema,3=Enhancing --volumes-csv volumes.csv\n"
    "  medtorch segment --model brats_mri_segmentation --in T1c=t1c.nii.gz --in T1=t1.nii.gz --in T2=t2.nii.gz "
    "--in FLAIR=flair.nii.gz --out tumor.nrrd   # an installed model (medtorch models list)\n"
    "  medtorch segment --model brats_bundle/ --in T1c=t1c.nii.gz --in T1=t1.nii.gz --in T2=t2.nii.gz "
    "--in FLAIR=flair.nii.gz --out tumor.nrrd", add_arguments, run)]
