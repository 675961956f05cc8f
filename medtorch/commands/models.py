"""``medtorch models``: the installed models (list, import, verify, remove), making packs, and
downloading catalog models after the user agrees to their terms."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from medtorch import ops
from medtorch.commands import Command, progress_bar
from medtorch.errors import MedTorchInputError
from medtorch.ops.models import (
    ModelsDownloadRequest,
    ModelsImportRequest,
    ModelsListRequest,
    ModelsPackRequest,
    ModelsRemoveRequest,
    ModelsVerifyRequest,
)
from medtorch.progress import CancelToken


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", default="", metavar="DIR",
                   help="the model store's folder (default: $MEDTORCH_MODELS_DIR, else medtorch/models in the user's "
                        "cache folder)")
    # also after the sub-command (medtorch models list -q); SUPPRESS keeps a value given before it
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _accept(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accept-license", "--accept-licence", dest="accept_license", action="store_true",
                   help="agree to the model's license without being asked (for scripts; read it first: it is "
                        "LICENSE.txt in the pack, or the catalog's terms shown by 'medtorch models list --catalog')")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    a = sub.add_parser("list", help="the installed models (with --catalog: the downloadable ones too)")
    a.add_argument("--catalog", action="store_true", help="also list the catalog of public models to download")
    a.add_argument("--json", action="store_true", help="print JSON")
    _common(a)
    a = sub.add_parser("import", help="install a model pack (.zip) after checking every hash and its license "
                                      "(works without a network)")
    a.add_argument("pack", help="the model pack file (.zip)")
    a.add_argument("--name", default="", help="install under this name (default: the pack's own)")
    _accept(a)
    _common(a)
    a = sub.add_parser("download", help="download a catalog model (after you agree to its terms), check its "
                                        "published hash, make it a pack and install it; resumes an interrupted download")
    a.add_argument("name", help="the catalog model's name (medtorch models list --catalog)")
    _accept(a)
    _common(a)
    a = sub.add_parser("verify", help="check an installed model against its pack's SHA-256 hashes")
    a.add_argument("name", help="the installed model's name")
    _common(a)
    a = sub.add_parser("remove", help="remove an installed model")
    a.add_argument("name", help="the installed model's name")
    _common(a)
    a = sub.add_parser("pack", help="make a model pack from a medtorch train-seg output or a MONAI bundle folder")
    a.add_argument("bundle", help="the bundle folder (it has configs/metadata.json and models/model.pt)")
    a.add_argument("--out", required=True, help="the pack to write (.zip)")
    a.add_argument("--name", default="", help="the model's name (default: the folder's)")
    a.add_argument("--license", dest="license_file", default="", metavar="FILE",
                   help="the license text to ship (default: the bundle's LICENSE or docs/license.txt; needed for a "
                        "train-seg output, e.g. the terms of the data it was trained on)")
    a.add_argument("--intended-use", default="", help="the model card's intended use (default: the bundle's)")
    a.add_argument("--training-data", default="", help="the model card's training data (default: the bundle's)")
    a.add_argument("--trust-bundle-code", dest="trust_code", action="store_true",
                   help="allow $ Python expressions in the bundle's network, preprocessing and inferer configs")
    _common(a)
    # also after the sub-command; SUPPRESS keeps the value of the general option given before it
    a.add_argument("--overwrite-input", action="store_true", default=argparse.SUPPRESS,
                   help="let --out be the license file (or another input) and replace it (refused otherwise)")


def _ask(model: str, license_name: str, text: str) -> bool:
    """Show the license and ask for agreement on the terminal."""
    if not sys.stdin or not sys.stdin.isatty():
        raise MedTorchInputError(
            f"the license of the model {model} needs your agreement, and there is no terminal to ask on",
            "read the license, then run the command again with --accept-license")
    print(f"License of the model {model}{f' ({license_name})' if license_name else ''}:\n")
    print(text.rstrip() + "\n")
    answer = input(f"Do you agree to these terms for {model}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _with_license(request: Any, args: argparse.Namespace, cancel: CancelToken) -> Any:
    result = ops.run(request, {}, progress=progress_bar(args), cancel=cancel)
    if result.values.get("needs_license"):
        v = result.values
        if not _ask(str(v["model"]), str(v.get("license_name") or ""), str(v["license"])):
            raise MedTorchInputError(f"the license of {v['model']} was not agreed to; nothing was installed",
                                     "agree to the license to install the model")
        request = dataclasses.replace(request, accept_license=True)
        result = ops.run(request, {}, progress=progress_bar(args), cancel=cancel)
    return result


def _line(m: dict[str, Any]) -> str:
    channels = ", ".join(str(c) for c in m.get("input_channels") or []) or "?"
    labels = ", ".join(f"{k}={v}" for k, v in (m.get("labels") or {}).items())
    return f"{m['name']:<28} {m.get('version', ''):<8} inputs: {channels}; labels: {labels}; license: {m.get('license')}"


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    cmd, models_dir = args.models_command, args.models_dir
    quiet = bool(getattr(args, "quiet", False))
    if cmd == "list":
        res = ops.run(ModelsListRequest(catalog=args.catalog, models_dir=models_dir), {})
        if args.json:
            print(json.dumps(res.values, indent=2))
            return 0
        models = res.values["models"]
        print(f"Installed models ({res.values['models_dir']}):" if models else
              f"No model is installed in {res.values['models_dir']}.")
        for m in models:
            print("  " + _line(m))
        if args.catalog:
            print("Catalog (medtorch models download NAME):")
            for e in res.values["catalog"]:
                flag = " (installed)" if e["installed"] else ""
                print(f"  {e['name']:<28} {e['version']:<8} {e['title']}{flag}\n"
                      f"    {e['hash_type']} {e['hash']}  {e['url']}\n    terms: {e['terms']}")
        return 0
    if cmd == "import":
        res = _with_license(ModelsImportRequest(pack=args.pack, name=args.name, accept_license=args.accept_license,
                                                models_dir=models_dir), args, cancel)
        if not quiet:
            print(f"Installed {res.values['model']['name']} (every hash checked): {_line(res.values['model'])}")
        return 0
    if cmd == "download":
        res = _with_license(ModelsDownloadRequest(name=args.name, accept_license=args.accept_license,
                                                  models_dir=models_dir), args, cancel)
        if not quiet:
            print(f"Downloaded, checked and installed {res.values['model']['name']}: {_line(res.values['model'])}")
        return 0
    if cmd == "verify":
        res = ops.run(ModelsVerifyRequest(name=args.name, models_dir=models_dir), {})
        print(f"{args.name}: every hash matches (pack SHA-256 {res.values['model']['sha256']})")
        return 0
    if cmd == "remove":
        ops.run(ModelsRemoveRequest(name=args.name, models_dir=models_dir), {})
        if not quiet:
            print(f"Removed {args.name}")
        return 0
    res = ops.run(ModelsPackRequest(bundle=args.bundle, out=args.out, name=args.name, license_file=args.license_file,
                                    intended_use=args.intended_use, training_data=args.training_data,
                                    trust_code=args.trust_code), {}, progress=progress_bar(args), cancel=cancel)
    if not quiet:
        c = res.values["config"]
        print(f"Wrote the pack {res.values['pack']} (SHA-256 {res.values['sha256']}): {c['name']}, inputs "
              + ", ".join(ch["name"] for ch in c["input_channels"]))
    return 0


COMMANDS = [Command(
    "models", "installed models: list, import a pack, download from the catalog, verify, remove; make a pack",
    "  medtorch models import brats_mri_segmentation.zip             # no network needed\n"
    "  medtorch models download brats_mri_segmentation               # asks you to agree to its terms first\n"
    "  medtorch models list --catalog\n"
    "  medtorch models verify brats_mri_segmentation\n"
    "  medtorch models pack my_bundle/ --out my_model.zip --license DATA_TERMS.txt   # from medtorch train-seg\n"
    "  medtorch segment --model brats_mri_segmentation --in T1c=t1c.nii.gz --in T1=t1.nii.gz --in T2=t2.nii.gz "
    "--in FLAIR=flair.nii.gz --out tumor.nrrd",
    add_arguments, run)]
