"""Lung CT with a known respiratory motion: landmark and dense TRE of NODEO, demons and B-spline.

The real thorax CT of ``../shared/data/thorax-ct`` is resampled to ``--spacing`` mm, masked
(:func:`registration_core.preprocessing.lung.lung_mask`), clipped to HU [-1000, 0] and normalised to [0, 1],
cropped to the lungs plus a margin, and deformed by a respiratory motion of largest magnitude
``--max-disp-mm`` inside the lungs plus Gaussian noise (:func:`registration_core.data.truth.make_truth_pair`).
Landmarks are detected in both lungs of the fixed image and mapped exactly. Each method registers
the deformed copy (moving) onto the CT (fixed); printed per method: landmark mTRE before/after (mm),
largest landmark error, dense TRE inside the lungs against the true field (mm), runtime, min det J.

    python benchmarks/lung_truth.py                      # all methods, lung settings below
    python benchmarks/lung_truth.py --methods demons --out lung_truth.json

Figures of one run (2 CPU cores shared with other jobs): mTRE 6.75 mm before; after NODEO 0.18
(405 s), demons 0.42 (96 s), B-spline 2.07 (140 s); dense TRE in the lungs 7.42 -> 0.32 / 0.73 /
2.50 mm; pair construction 57 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from registration_core.core import io
from registration_core.data.truth import TruthPair, make_truth_pair
from registration_core.evaluation import metrics
from registration_core.methods import get_method
from registration_core.preprocessing import lung
from registration_core.preprocessing import steps as preprocess

CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "thorax-ct" / "ct.nii.gz"

# Lung settings per method (the rest are the method's defaults).
LUNG_PARAMS: dict[str, dict[str, Any]] = {
    "nodeo": {"iterations": 100, "ncc_window": 9, "stop_patience": 0},
    "demons": {"iterations": "50x50x25", "field_sigma": 2.5},
    "bspline": {
        "control_spacing_mm": 15.0, "grid_scale_factors": "1x2x4", "metric": "mean_squares",
        "sampling_percentage": 0.1, "iterations": 60, "threads": 0,
    },
}


def prepare_ct(path: Path, spacing_mm: float, margin_vox: int) -> tuple[io.Image, io.Image]:
    """The CT at ``spacing_mm`` clipped to HU [-1000, 0], normalised, cropped to the lungs + margin; its lung mask."""
    ct = preprocess.resample(io.load_image(path), spacing=spacing_mm)
    mask = lung.lung_mask(ct)
    image = preprocess.normalize(preprocess.clip_intensity(ct, -1000.0, 0.0))
    inside = np.argwhere(mask.data > 0)
    low = np.maximum(inside.min(axis=0) - margin_vox, 0)
    high = np.minimum(inside.max(axis=0) + margin_vox, np.asarray(ct.shape) - 1)  # no padding: stay in the CT
    shape, centre = (high - low + 1).tolist(), (low + high) / 2.0
    return preprocess.crop_pad(image, shape, centre), preprocess.crop_pad(mask, shape, centre)


def evaluate(pair: TruthPair, disp_vox: np.ndarray) -> dict[str, float]:
    """Landmark and dense errors (mm) and the Jacobian minimum of one estimated field."""
    spacing = pair.fixed.spacing
    tre = metrics.tre_mm(pair.fixed_landmarks, pair.moving_landmarks, disp_vox, spacing)
    dense = metrics.displacement_error_mm(disp_vox, pair.disp_vox, spacing, pair.mask.data)
    jacobian = metrics.jacobian_stats(disp_vox)
    return {
        "mtre_mm": float(tre.mean()),
        "tre_max_mm": float(tre.max()),
        "tre_truth_mm": dense["mean"],
        "tre_truth_max_mm": dense["max"],
        "detj_min": jacobian["detj_min"],
        "neg_jac_ratio": jacobian["neg_jac_ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=CT)
    parser.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size (mm)")
    parser.add_argument("--margin", type=int, default=8, help="voxels kept around the lungs")
    parser.add_argument("--motion", default="respiratory-inhale", help="respiratory or respiratory-inhale")
    parser.add_argument("--max-disp-mm", type=float, default=15.0)
    parser.add_argument("--noise-std", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-landmarks", type=int, default=150)
    parser.add_argument("--methods", default="demons,bspline,nodeo")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not args.ct.is_file():
        print(f"error: {args.ct} not found (../shared/data is needed)", file=sys.stderr)
        return 2

    start = time.perf_counter()
    fixed, mask = prepare_ct(args.ct, args.spacing, args.margin)
    pair = make_truth_pair(fixed, mask, args.motion, args.max_disp_mm, args.noise_std, args.seed, args.n_landmarks)
    labels = mask.data[tuple(pair.fixed_landmarks.astype(int).T)]
    before = metrics.tre_before(pair.fixed_landmarks, pair.moving_landmarks, fixed.spacing)
    zero = np.zeros_like(pair.disp_vox)
    setup = {
        "shape": list(fixed.shape),
        "spacing_mm": list(fixed.spacing),
        "landmarks_per_lung": {str(label): int(np.sum(labels == label)) for label in (1, 2)},
        "mtre_before_mm": float(before.mean()),
        "tre_before_max_mm": float(before.max()),
        "tre_truth_before_mm": metrics.displacement_error_mm(zero, pair.disp_vox, fixed.spacing, mask.data)["before"],
        "setup_s": time.perf_counter() - start,
        **pair.info,
    }
    print(json.dumps(setup, indent=1))

    overrides: dict[str, dict[str, str]] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        overrides.setdefault(method, {})[name] = value
    results = {}
    for name in args.methods.split(","):
        method = get_method(name)
        params = method.resolve_params({**LUNG_PARAMS.get(name, {}), **overrides.get(name, {})})
        tic = time.perf_counter()
        result = method.register(pair.fixed, pair.moving, params)
        results[name] = {"runtime_s": time.perf_counter() - tic, **evaluate(pair, result.disp_vox), "params": params}
        row = {k: round(v, 3) for k, v in results[name].items() if isinstance(v, float)}
        print(name, json.dumps(row), flush=True)

    print("\n| method | mTRE before (mm) | mTRE after (mm) | max TRE (mm) | dense TRE (mm) | runtime (s) | min det J |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {setup['mtre_before_mm']:.2f} | {r['mtre_mm']:.2f} | {r['tre_max_mm']:.2f} | "
            f"{r['tre_truth_mm']:.2f} | {r['runtime_s']:.0f} | {r['detj_min']:.2f} |"
        )
    if args.out:
        io.write_json({"setup": setup, "methods": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
