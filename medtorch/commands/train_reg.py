"""``medtorch train-reg``: train a deformable registration network (VoxelMorph) without ground truth; write a model pack."""

from __future__ import annotations

import argparse
import sys

from medtorch.commands import Command, progress_bar
from medtorch.progress import CancelToken


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data",
                     help="folder of pairs (<case>_fixed.nii.gz + <case>_moving.nii.gz, optional _fixed_label/"
                          "_moving_label label maps) or of images (<name>.nii.gz, optional <name>_label.nii.gz; "
                          "random pairs); every pair is aligned affinely by the torch engine first")
    src.add_argument("--synthetic", action="store_true",
                     help="no data: random label maps (the bundled MNI152 template's tissue classes, split at random; "
                          "else generated shapes) painted with random contrasts (SynthMorph): a contrast-agnostic model")
    p.add_argument("--out", required=True, help="model pack to write (.zip)")
    p.add_argument("--size", choices=["tiny", "small", "default"], default="tiny",
                   help="network size (VoxelMorph UNet channels 8-16, 16-32, or 16-32 with one more level)")
    p.add_argument("--spacing", type=float, default=4.0,
                   help="spacing (mm) the network works at; inputs with voxels coarser than 1.5x this are refused")
    p.add_argument("--loss", choices=["lncc", "mi", "mind"], default="lncc",
                   help="image similarity: local normalised cross-correlation (one contrast), global mutual "
                        "information or MIND (two contrasts); --synthetic uses the label Dice only")
    p.add_argument("--reg-weight", type=float, default=0.1, help="weight of the bending energy of the field")
    p.add_argument("--dice-weight", type=float, default=1.0, help="weight of the label Dice term (pairs with labels)")
    p.add_argument("--no-diffeomorphic", action="store_true",
                   help="predict a displacement field directly (default: a velocity field integrated by scaling and "
                        "squaring, which does not fold)")
    p.add_argument("--steps", type=int, default=2000, help="most training steps (one pair each)")
    p.add_argument("--val-every", type=int, default=50, help="validate on the held-out pairs every this many steps")
    p.add_argument("--patience", type=int, default=5, help="stop after this many validations without improvement")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of pairs (or images) held out")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument("--seed", type=int, default=0, help="random seed (recorded in the model pack)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--no-prealign", action="store_true",
                   help="the pairs are already aligned affinely: skip the affine registration of each")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model pack")


def run(args: argparse.Namespace, cancel: CancelToken) -> int:
    from medtorch.registration.learned_training import train_registration

    template = None
    if args.synthetic:
        from medtorch.demo import sample_data_files
        from medtorch.errors import MedTorchInputError

        try:
            template = sample_data_files()
        except MedTorchInputError:
            if not args.quiet:
                sys.stderr.write("medtorch train-reg: the MNI152 sample data was not found: training on generated "
                                 "label maps\n")
    res = train_registration(
        args.data, args.out, synthetic=args.synthetic, template=template, network_size=args.size,
        spacing_mm=args.spacing, diffeomorphic=not args.no_diffeomorphic, image_loss=args.loss,
        reg_weight=args.reg_weight, dice_weight=args.dice_weight, steps=args.steps, val_every=args.val_every,
        patience=args.patience, val_fraction=args.val_fraction, learning_rate=args.lr, seed=args.seed,
        max_minutes=args.max_minutes, prealign=not args.no_prealign, device=args.device, overwrite=args.overwrite,
        progress=progress_bar(args), cancel=cancel)
    if not args.quiet:
        print(f"Trained for {res.steps_run} steps ({res.stopped}) in {res.seconds:.0f} s, seed {res.seed}, on "
              f"{res.num_train} training and {res.num_val} held-out items: best held-out loss {res.best_val_loss:.4f} "
              f"at step {res.best_step} (identity {res.identity_val_loss:.4f}). Model pack: {res.path}")
    return 0


COMMANDS = [Command(
    "train-reg", "train a deformable registration network (MONAI VoxelMorph) without ground truth; write a model pack",
    "  medtorch train-reg --data pairs/ --out reg_model.zip\n"
    "  medtorch train-reg --synthetic --out any_contrast.zip --max-minutes 30 --seed 1   # SynthMorph-style\n"
    "  medtorch train-reg --data t1_images/ --out t1_model.zip --loss lncc --spacing 2 --size small\n"
    "  medtorch register --fixed a.nii.gz --moving b.nii.gz --engine learned --model reg_model.zip --refine "
    "--out-transform reg.h5   # use it",
    add_arguments, run)]
