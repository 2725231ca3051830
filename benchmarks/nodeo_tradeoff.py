"""NODEO's presets against elastix's default B-spline: Dice, displacement error and wall time.

2D: real brain slices with a known deformation (the pairs of ``benchmarks/baselines.py``:
aligned-brains subject-a and subject-b, axial slices, each deformed by a known smooth random field
up to 8 mm, noise 0.01); Dice over the 30 evaluation labels (nearest warping) and the mean
end-point error against the known field inside the brain (mm). Inter-subject
(``--intersubject``, no known field): subject-b -> subject-a of aligned-brains, the same axial
slices at 1 mm, and (``--3d``) the volumes at 2 mm (80x96x112); Dice over the same labels. One
thread each (torch, ITK, elastix).

Curves: NODEO with ``stop_patience 0`` and a budget of N iterations (per level) gives one point
(time, Dice) per budget; a preset with its plateau stop gives one point.

    .venv/bin/python benchmarks/nodeo_tradeoff.py [--slices 80 100 112 130] [--budgets 25 50 100 200]
        [--presets default plateau reference] [--variant name:key=value,...]
        [--intersubject 80 100 112 130] [--3d]

Prints one row per method x pair and a summary (mean Dice, mean error, median seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from baselines import DATA, pairs  # noqa: E402
from scipy import ndimage  # noqa: E402

from registration_core.core.allocator import retain_freed_memory  # noqa: E402
from registration_core.core.io import Image, load_image  # noqa: E402
from registration_core.core.params import parse_assignments  # noqa: E402
from registration_core.core.spatial import warp_array  # noqa: E402
from registration_core.evaluation.metrics import dice_summary  # noqa: E402
from registration_core.methods import get_method  # noqa: E402
from registration_core.preprocessing.steps import extract_slice  # noqa: E402


def brain_3d() -> tuple[Image, Image, np.ndarray, np.ndarray, list[int]]:
    """subject-a (fixed) and subject-b (moving) at 2 mm, with their aseg labels and the evaluation labels."""
    labels = [int(v) for v in (DATA / "eval-labels.txt").read_text().split()]

    def load(name: str, labels_map: bool) -> np.ndarray:
        data = np.asarray(nib.load(DATA / name).dataobj)
        if labels_map:
            return data[::2, ::2, ::2].astype(np.int32)
        return ndimage.zoom(data.astype(np.float32), 0.5, order=1)

    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    return (Image(load("subject-a/t1w.nii.gz", False), grid), Image(load("subject-b/t1w.nii.gz", False), grid),
            load("subject-a/aseg.nii.gz", True), load("subject-b/aseg.nii.gz", True), labels)


def brain_slices(slices: list[int]) -> Iterator[tuple[str, Image, Image, np.ndarray, np.ndarray, list[int]]]:
    """Inter-subject slices: subject-b (moving) -> subject-a (fixed), the same axial slice of both
    (the volumes are affinely aligned), 1 mm, with their aseg labels and the evaluation labels."""
    labels = [int(v) for v in (DATA / "eval-labels.txt").read_text().split()]
    for index in slices:
        images = [extract_slice(load_image(DATA / f"{s}/t1w.nii.gz"), axis=2, index=index) for s in ("subject-a", "subject-b")]
        segs = [extract_slice(load_image(DATA / f"{s}/aseg.nii.gz", "labels"), axis=2, index=index).data
                for s in ("subject-a", "subject-b")]
        yield f"b->a slice {index}", images[0], images[1], segs[0], segs[1], labels


def run(method: str, raw: dict[str, Any], fixed: Image, moving: Image) -> tuple[np.ndarray, float, int]:
    """(voxel displacement, seconds, iterations run over all levels; 0 for elastix)."""
    spec = get_method(method)
    start = time.perf_counter()
    result = spec.register(fixed, moving, spec.resolve_params(raw))
    return result.disp_vox, time.perf_counter() - start, len(result.loss_history or [])


def cases(variants: dict[str, dict[str, Any]], budgets: list[int]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, params): elastix's default map, every NODEO variant with its own stop, and
    the variants' budget curves."""
    out: list[tuple[str, str, dict[str, Any]]] = [("elastix default", "elastix", {"threads": 1})]
    for name, raw in variants.items():
        out.append((f"nodeo {name}", "nodeo", raw))
        for budget in budgets:
            out.append((f"nodeo {name} @{budget}", "nodeo", {**raw, "iterations": budget, "stop_patience": 0}))
    return out


def variants(presets: list[str], extra: list[str]) -> dict[str, dict[str, Any]]:
    """NODEO variants by name: each preset, and ``name:key=value,key=value`` settings (tuning runs)."""
    out: dict[str, dict[str, Any]] = {preset: {"preset": preset} for preset in presets}
    for text in extra:
        name, _, settings = text.partition(":")
        out[name] = parse_assignments([item for item in settings.split(",") if item])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="*", default=[80, 100, 112, 130])
    parser.add_argument("--presets", nargs="+", default=["default", "plateau"])
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,... (tuning)")
    parser.add_argument("--budgets", type=int, nargs="*", default=[])
    parser.add_argument("--intersubject", type=int, nargs="*", default=[], help="inter-subject slices b -> a")
    parser.add_argument("--3d", dest="three_d", action="store_true", help="also the 3D pair (2 mm)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    retain_freed_memory()  # as the command line does
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent")
    rows: dict[str, list[tuple[float, float, float, int]]] = {}
    print(f"{'pair':16s} {'method':28s} {'Dice':>7s} {'error mm':>9s} {'s':>7s} {'iters':>6s}")
    for pair_name, pair, labels in pairs(args.slices):
        brain = pair.fixed_labels.data > 0
        spacing = np.asarray(pair.fixed.spacing).reshape(-1, *([1] * pair.fixed.data.ndim))
        for label, method, raw in cases(variants(args.presets, args.variant), args.budgets):
            disp, seconds, iterations = run(method, raw, pair.fixed, pair.moving)
            moved = warp_array(pair.moving_labels.data, disp, "nearest")
            dice = dice_summary(pair.fixed_labels.data, moved, labels)["mean"]
            error = float(np.linalg.norm((disp - pair.disp_vox) * spacing, axis=0)[brain].mean())
            rows.setdefault(label, []).append((dice, error, seconds, iterations))
            print(f"{pair_name:16s} {label:28s} {dice:7.4f} {error:9.3f} {seconds:7.2f} {iterations:6d}", flush=True)
    unknown = list(brain_slices(args.intersubject))
    if args.three_d:
        unknown.append(("3D b->a 2 mm", *brain_3d()))
    for pair_name, fixed, moving, fixed_labels, moving_labels, labels in unknown:
        group = "3D" if fixed.data.ndim == 3 else "b->a"
        for label, method, raw in cases(variants(args.presets, args.variant), args.budgets):
            disp, seconds, iterations = run(method, raw, fixed, moving)
            dice = dice_summary(fixed_labels, warp_array(moving_labels, disp, "nearest"), labels)["mean"]
            rows.setdefault(f"{group} {label}", []).append((dice, float("nan"), seconds, iterations))
            print(f"{pair_name:16s} {label:28s} {dice:7.4f} {'':9s} {seconds:7.2f} {iterations:6d}", flush=True)
    print(f"\n{'method':31s} {'mean Dice':>9s} {'error mm':>9s} {'median s':>9s} {'total s':>8s}")
    for label, values in rows.items():
        a = np.asarray(values, dtype=float)
        print(f"{label:31s} {a[:, 0].mean():9.4f} {a[:, 1].mean():9.3f} {np.median(a[:, 2]):9.2f} {a[:, 2].sum():8.1f}")


if __name__ == "__main__":
    main()
