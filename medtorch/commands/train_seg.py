"""``medtorch train-seg``: train a 3D segmentation network on labelled cases; write a MONAI bundle."""

from __future__ import annotations

import argparse

from medtorch.commands import Command, progress_bar, triple_arg
from medtorch.progress import CancelToken

_ints3 = triple_arg(int, "whole numbers", one_for_all=True)
_floats3 = triple_arg(float, "numbers", one_for_all=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="folder of cases: imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz (nnU-Net/MSD layout, "
                        "optional dataset.json), or <case>_image.nii.gz + <case>_label.nii.gz")
    p.add_argument("--out", required=True, help="MONAI bundle folder to write (new or empty)")
    p.add_argument("--network", choices=["segresnet", "unet"], default="segresnet", help="MONAI network")
    p.add_argument("--size", choices=["tiny", "small", "default"], default="default",
                   help="network size (tiny: for quick checks)")
    p.add_argument("--epochs", type=int, default=100, help="most epochs to run")
    p.add_argument("--patience", type=int, default=10, help="stop after this many validations without improvement")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded in the bundle)")
    p.add_argument("--roi-size", type=_ints3, default=(96, 96, 96), help="patch / window size in voxels, x,y,z")
    p.add_argument("--batch-size", type=int, default=2, help="patches per step")
    p.add_argument("--samples-per-case", type=int, default=1, help="patches per case per epoch")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of cases kept for validation")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW, cosine decay)")
    p.add_argument("--spacing", type=_floats3, default=None, help="resample every case to this spacing (mm) first")
    p.add_argument("--no-augment", action="store_true", help="no rotation, shift, flip or intensity augmentation")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.segment.training import train_segmentation

    res = train_segmentation(
        args.data, args.out, network=args.network, network_size=args.size, epochs=args.epochs, patience=args.patience,
        seed=args.seed, roi_size=args.roi_size, batch_size=args.batch_size, samples_per_case=args.samples_per_case,
        val_fraction=args.val_fraction, learning_rate=args.lr, target_spacing=args.spacing,
        augment=not args.no_augment, device=args.device, overwrite=args.overwrite,
        progress=progress_bar(args), cancel=cancel,
    )
    if not args.quiet:
        print(f"Trained {res.num_train} cases ({res.num_val} for validation) for {res.epochs_run} epochs"
              f"{' (early stop)' if res.stopped_early else ''} in {res.seconds:.0f} s, seed {res.seed}: best validation "
              f"Dice {res.best_val_dice:.4f} at epoch {res.best_epoch}. Bundle: {res.bundle_dir}")
    return 0


COMMANDS = [Command(
    "train-seg", "train a 3D segmentation network (MONAI SegResNet or UNet) on labelled cases; write a MONAI bundle",
    "  medtorch train-seg --data Task01_BrainTUMORKEEP --out my_bundle\n"
    "  medtorch train-seg --data cases/ --out my_bundle --network unet --epochs 200 --roi-size 128,128,96 --seed 1\n"
    "  medtorch segment --model my_bundle --in new_case.nii.gz --out seg.nrrd   # use it",
    add_arguments, run)]
