"""Learned methods as a user trains them: real brain slices in, unseen pairs with known smooth deformations out.

Data (:func:`prepare`): OASIS-TRT subjects prepared like config/studies/oasis-trt-2d.yaml (RAS,
an axial slice, 2 mm, 80x128, clipped, min-max), ``--slices`` axial slices per subject (the middle
one and offsets of 6 voxels at 1 mm). Training: the slices of sub-04..sub-10 (14 images with the
default 2 slices each). Test pairs: the middle slices of the unseen sub-01..sub-03, each the fixed
image of ``--fields`` pairs whose moving image is its copy deformed by a known single-frequency
field (:func:`registration_core.data.synth.random_smooth_displacement`, up to ``--max-disp-mm``,
seeded, noise 1 %; :func:`registration_core.data.truth.deform_with_truth`). Dice: mean over the
labels present in the fixed slice, moving labels warped nearest.

    .venv/bin/python benchmarks/learned_synth_2d.py --data ../shared/data/oasis-trt --out /tmp/lsynth \\
        --method linear_deformable --param steps=400

Prints and writes OUT/summary.json: identity and predicted Dice per pair and their means, the
training budget (steps, images, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from registration_core.core.io import load_image
from registration_core.core.params import parse_assignments
from registration_core.core.spatial import warp_array
from registration_core.data import synth
from registration_core.data.truth import deform_with_truth
from registration_core.evaluation.metrics import dice_summary, jacobian_stats
from registration_core.methods import get_method
from registration_core.methods.training import train_method
from registration_core.preprocessing.steps import run_steps

TRAIN = [f"sub-{n:02d}" for n in range(4, 11)]
TEST = ["sub-01", "sub-02", "sub-03"]
OFFSETS = (0, -6, 6, -12)


def _steps(index: int | str) -> list[dict]:
    return [
        {"step": "reorient", "orientation": "RAS"},
        {"step": "slice", "axis": 2, "index": index},
        {"step": "resample", "spacing": 2.0},
        {"step": "clip", "percentiles": [0.5, 99.5]},
        {"step": "normalize", "mode": "minmax"},
    ]


def prepare(data: Path, out: Path, slices: int) -> tuple[list[Path], dict[str, tuple]]:
    """Training slice files under ``out`` and the test subjects' (image, labels) middle slices."""
    from registration_core.core.io import save_image

    out.mkdir(parents=True, exist_ok=True)
    train = []
    for name in TRAIN:
        volume = load_image(data / name / "t1w_brain.nii.gz")
        labels = load_image(data / name / "labels.nii.gz", "labels")
        middle = volume.shape[0] // 2  # ASL: axis 0 -> RAS axis 2 (reversed, symmetric about the middle)
        for offset in OFFSETS[:slices]:
            image, _ = run_steps(volume, labels, _steps(middle + offset))
            path = out / f"{name}_{offset:+d}.nii.gz"
            save_image(image, path)
            train.append(path)
    test = {
        name: run_steps(load_image(data / name / "t1w_brain.nii.gz"), load_image(data / name / "labels.nii.gz", "labels"),
                        _steps("middle"))
        for name in TEST
    }
    return train, test


def test_pairs(test: dict[str, tuple], fields: int, max_disp_mm: float) -> list[tuple[str, object, list[int]]]:
    """(name, TruthPair, labels) for every test subject and field seed."""
    pairs = []
    for name, (image, labels) in test.items():
        ids = sorted(set(np.unique(labels.data).tolist()) - {0})
        for seed in range(fields):
            rng = np.random.default_rng(1000 + seed)
            disp = synth.random_smooth_displacement(image.shape, image.spacing, rng, max_disp_mm=max_disp_mm)
            pairs.append((f"{name}/{seed}", deform_with_truth(image, disp, rng, labels=labels, noise_std=0.01), ids))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/oasis-trt"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/learned_synth_2d"))
    parser.add_argument("--method", default="linear_deformable")
    parser.add_argument("--param", action="append", help="training parameter key=value (repeatable)")
    parser.add_argument("--slices", type=int, default=2, choices=range(1, len(OFFSETS) + 1))
    parser.add_argument("--fields", type=int, default=2)
    parser.add_argument("--max-disp-mm", type=float, default=8.0)
    parser.add_argument("--io-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = prepare(args.data, args.out / "data", args.slices)
    method = get_method(args.method)
    start = time.perf_counter()
    if method.name == "nephi" and args.io_steps and not args.param:
        log = None
    else:
        log = train_method(method.name, train, args.out / "model", parse_assignments(args.param or []))
    wall = time.perf_counter() - start
    params = {"io_steps": args.io_steps, "device": "cpu"}
    if log is not None:
        params["checkpoint"] = str(args.out / "model" / "model.pt")
    params = method.resolve_params(params)
    rows = []
    for name, pair, ids in test_pairs(test, args.fields, args.max_disp_mm):
        result = method.register(pair.fixed, pair.moving, params)
        fixed_labels, moving_labels = pair.fixed_labels.data, pair.moving_labels.data
        rows.append({
            "pair": name,
            "dice_identity": dice_summary(fixed_labels, moving_labels, ids)["mean"],
            "dice_after": dice_summary(fixed_labels, warp_array(moving_labels, result.disp_vox, "nearest"), ids)["mean"],
            "neg_jac_ratio": jacobian_stats(result.disp_vox)["neg_jac_ratio"],
        })
        print(rows[-1], flush=True)
    summary = {
        "method": method.name, "params": args.param, "n_train": len(train), "steps": log["steps"] if log else 0,
        "train_wall_s": wall, "io_steps": args.io_steps,
        "dice_identity": float(np.mean([r["dice_identity"] for r in rows])),
        "dice_after": float(np.mean([r["dice_after"] for r in rows])),
        "neg_jac_ratio": float(np.mean([r["neg_jac_ratio"] for r in rows])), "pairs": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "pairs"}))


if __name__ == "__main__":
    main()
