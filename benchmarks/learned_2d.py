"""Benchmark a learned method against NODEO on 2D brain slices of OASIS-TRT (real data, CPU or GPU).

Preparation (:func:`prepare`): every subject is reoriented to RAS, resampled to 2 mm, clipped to its
0.5-99.5 percentiles and min-max normalised in 3D, affinely aligned to sub-01 (Mattes MI,
:func:`registration_core.preprocessing.align.align_to_fixed`; VoxelMorph assumes affinely aligned inputs), and the
middle axial slice of sub-01's grid is kept (80x128 at 2 mm, one grid for all). The learned method
trains on sub-03..sub-10 and registers the held-out pairs sub-01 <-> sub-02 and the atlas pairs
sub-01 <- sub-03..sub-10 (training images, unseen as pairs with this fixed image). Dice is the mean
over the labels of the fixed slice (nearest warping); r^D is the fraction of voxels with detJ <= 0.

    .venv/bin/python benchmarks/learned_2d.py --data ../shared/data/oasis-trt --out /tmp/learned_2d \\
        --method voxelmorph --param steps=300 --param lr=1e-3 [--io-steps 0 50] [--nodeo]

Writes OUT/pairs.csv (one row per method x pair) and OUT/summary.json (training log figures and
per-method means), and prints both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from registration_core.core.io import load_displacement, load_image, save_image
from registration_core.core.params import parse_assignments
from registration_core.core.spatial import warp_array
from registration_core.evaluation.metrics import dice_summary, jacobian_stats
from registration_core.methods.training import train_method
from registration_core.preprocessing.align import align_to_fixed
from registration_core.preprocessing.steps import extract_slice, run_steps
from registration_core.registration import run_registration

STEPS_3D = [
    {"step": "reorient", "orientation": "RAS"},
    {"step": "resample", "spacing": 2.0},
    {"step": "clip", "percentiles": [0.5, 99.5]},
    {"step": "normalize", "mode": "minmax"},
]
ATLAS = "sub-01"
SUBJECTS = [f"sub-{n:02d}" for n in range(1, 11)]
TRAIN = SUBJECTS[2:]
PAIRS = [("sub-01", "sub-02", "held-out"), ("sub-02", "sub-01", "held-out")] + [
    (ATLAS, moving, "atlas") for moving in TRAIN
]
ALIGN_SETTINGS: dict[str, Any] = {"shrink_factors": (4, 2), "iterations": 100}


def prepare(data: Path, out: Path, align_settings: dict[str, Any] = ALIGN_SETTINGS) -> dict[str, tuple[Path, Path]]:
    """Aligned middle axial slices of sub-01..sub-10 -> {subject: (image path, labels path)} under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    volumes = {
        name: run_steps(
            load_image(data / name / "t1w_brain.nii.gz"), load_image(data / name / "labels.nii.gz", "labels"), STEPS_3D
        )
        for name in SUBJECTS
    }
    atlas_image = volumes[ATLAS][0]
    files = {}
    for name, (image, labels) in volumes.items():
        if name != ATLAS:
            aligned = align_to_fixed(atlas_image, image, labels, **align_settings)
            image, labels = aligned.image, aligned.labels
        files[name] = (out / f"{name}.nii.gz", out / f"{name}_labels.nii.gz")
        save_image(extract_slice(image, axis=2), files[name][0])
        save_image(extract_slice(labels, axis=2), files[name][1])
    return files


def score(files: dict[str, tuple[Path, Path]], fixed: str, moving: str, reg_dir: Path) -> dict[str, float]:
    """Dice before/after and Jacobian statistics of the registration written in ``reg_dir``."""
    fixed_image = load_image(files[fixed][0])
    fixed_labels = load_image(files[fixed][1], "labels").data
    moving_labels = load_image(files[moving][1], "labels").data
    disp = load_displacement(reg_dir / "displacement.nii.gz", fixed_image)
    labels = sorted(set(np.unique(fixed_labels).tolist()) - {0})
    jac = jacobian_stats(disp)
    log = json.loads((reg_dir / "log.json").read_text())
    return {
        "dice_before": dice_summary(fixed_labels, moving_labels, labels)["mean"],
        "dice_after": dice_summary(fixed_labels, warp_array(moving_labels, disp, "nearest"), labels)["mean"],
        "neg_jac_ratio": jac["neg_jac_ratio"],
        "detj_min": jac["detj_min"],
        "runtime_s": log["runtime_s"],
    }


def run_pairs(
    method: str, variant: str, params: dict[str, str], files: dict[str, tuple[Path, Path]], out: Path
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for fixed, moving, kind in PAIRS:
        reg_dir = out / "reg" / variant / f"{fixed}__{moving}"
        run_registration(method, files[fixed][0], files[moving][0], reg_dir, params)
        rows.append({"variant": variant, "kind": kind, "fixed": fixed, "moving": moving,
                     **score(files, fixed, moving, reg_dir)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/oasis-trt"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/learned_2d"))
    parser.add_argument("--method", default="voxelmorph")
    parser.add_argument("--param", action="append", help="training parameter key=value (repeatable)")
    parser.add_argument("--io-steps", type=int, nargs="+", default=[0], help="instance-optimisation steps to compare")
    parser.add_argument("--nodeo", action="store_true", help="also run NODEO (default preset) on the same pairs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    files = prepare(args.data, args.out / "data")
    train_params = parse_assignments(args.param)
    start = time.perf_counter()
    log = train_method(args.method, [files[name][0] for name in TRAIN], args.out / "model", train_params)
    train_wall = time.perf_counter() - start
    rows = []
    for io_steps in args.io_steps:
        params = {"checkpoint": str(args.out / "model" / "model.pt"), "io_steps": str(io_steps)}
        rows += run_pairs(args.method, f"{args.method}-io{io_steps}", params, files, args.out)
    if args.nodeo:
        rows += run_pairs("nodeo", "nodeo", {"preset": "default"}, files, args.out)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "pairs.csv", index=False)
    means = table.groupby(["variant", "kind"])[["dice_before", "dice_after", "neg_jac_ratio", "runtime_s"]].mean()
    summary = {
        "method": args.method, "train_params": log["params"], "train_time_s": log["train_time_s"],
        "train_wall_s": train_wall, "threads": args.threads, "device": log["device"],
        "validation_first": log["validation"][0], "validation_last": log["validation"][-1],
        "means": {f"{variant}/{kind}": values for (variant, kind), values in means.to_dict("index").items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(means.to_string())
    print(json.dumps({k: summary[k] for k in ("train_time_s", "threads", "device")}))


if __name__ == "__main__":
    main()
