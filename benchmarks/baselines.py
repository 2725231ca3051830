"""ANTs SyN and elastix in the registry beside antspyx and itk-elastix called directly with their defaults.

Pairs: real brain slices (aligned-brains subject-a and subject-b, axial slices 80, 100, 112, 130,
160x192 at 1 mm) each deformed by a known smooth random field (max 8 mm, noise 0.01, seed = slice),
so the moving labels are known exactly; Dice over the 30 evaluation labels. One thread each
(ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1, elastix number_of_threads=1, torch 1 thread).
The direct calls: ``ants.registration(F, M, type_of_transform=T)`` with the seed set through
``ants.config._random_seed`` (without it ANTs' sampling is not repeatable) and
``itk.elastix_registration_method`` with ``GetDefaultParameterMap("bspline")`` (its own RandomSeed).

    .venv/bin/python benchmarks/baselines.py [--slices 80 100 112 130]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from registration_core.core.io import load_image  # noqa: E402
from registration_core.core.spatial import warp_array  # noqa: E402
from registration_core.data import synth  # noqa: E402
from registration_core.data.truth import deform_with_truth  # noqa: E402
from registration_core.evaluation.metrics import dice_summary  # noqa: E402
from registration_core.methods import get_method  # noqa: E402
from registration_core.preprocessing.steps import extract_slice  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "aligned-brains"


def pairs(slices: list[int]):
    """(name, TruthPair) for every subject and slice."""
    labels = [int(v) for v in (DATA / "eval-labels.txt").read_text().split()]
    for subject in ("subject-a", "subject-b"):
        for index in slices:
            image = extract_slice(load_image(DATA / subject / "t1w.nii.gz"), axis=2, index=index)
            seg = extract_slice(load_image(DATA / subject / "aseg.nii.gz", "labels"), axis=2, index=index)
            rng = np.random.default_rng(index)
            disp = synth.random_smooth_displacement(image.shape, image.spacing, rng, max_disp_mm=8.0)
            yield f"{subject}/{index}", deform_with_truth(image, disp, rng, labels=seg, noise_std=0.01), labels


def dice(pair, labels, disp_vox) -> float:
    return dice_summary(pair.fixed_labels.data, warp_array(pair.moving_labels.data, disp_vox, "nearest"), labels)["mean"]


def ours(method: str, raw: dict, pair) -> tuple[np.ndarray, float]:
    spec = get_method(method)
    start = time.perf_counter()
    result = spec.register(pair.fixed, pair.moving, spec.resolve_params(raw))
    return result.disp_vox, time.perf_counter() - start


def direct_ants(transform: str, pair) -> tuple[np.ndarray, float]:
    import ants

    from registration_core.methods.syn import composed_disp_vox, to_ants

    ants.config._random_seed = 1
    fixed, moving = to_ants(ants, pair.fixed), to_ants(ants, pair.moving)
    start = time.perf_counter()
    out = ants.registration(fixed, moving, type_of_transform=transform)
    seconds = time.perf_counter() - start
    return composed_disp_vox(ants, fixed, moving, out["fwdtransforms"], out["fwdtransforms"][0] + "-c"), seconds


def direct_elastix(pair) -> tuple[np.ndarray, float]:
    import itk

    from registration_core.methods.elastix import field_disp_vox, to_itk

    fixed, moving = to_itk(itk, pair.fixed), to_itk(itk, pair.moving)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False,
                                                number_of_threads=1)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        field = itk.transformix_deformation_field(moving, result, output_directory=tmp)
    return field_disp_vox(itk, field, pair.fixed), seconds


CASES = [
    ("SyN", lambda p: ours("syn", {"preset": "SyN"}, p), lambda p: direct_ants("SyN", p)),
    ("SyNCC", lambda p: ours("syn", {"preset": "SyNCC"}, p), lambda p: direct_ants("SyNCC", p)),
    ("SyNOnly", lambda p: ours("syn", {"preset": "SyNOnly"}, p), lambda p: direct_ants("SyNOnly", p)),
    ("elastix default", lambda p: ours("elastix", {}, p), direct_elastix),
    ("elastix multiresolution", lambda p: ours("elastix", {"preset": "multiresolution"}, p), direct_elastix),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[80, 100, 112, 130])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent")
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name, *_ in CASES}
    before = []
    for pair_name, pair, labels in pairs(args.slices):
        before.append(dice(pair, labels, np.zeros_like(pair.disp_vox)))
        for name, run_ours, run_direct in CASES:
            ours_disp, ours_s = run_ours(pair)
            direct_disp, direct_s = run_direct(pair)
            rows[name].append((dice(pair, labels, ours_disp), ours_s, dice(pair, labels, direct_disp), direct_s))
            print(f"{pair_name:16s} {name:24s} ours {rows[name][-1][0]:.4f} ({ours_s:5.2f} s)   "
                  f"direct {rows[name][-1][2]:.4f} ({direct_s:5.2f} s)", flush=True)
    print(f"\n{len(before)} pairs, Dice before {np.mean(before):.3f}")
    print(f"{'method':24s} {'ours Dice':>10s} {'ours s':>7s} {'direct Dice':>12s} {'direct s':>9s}")
    for name, values in rows.items():
        a = np.asarray(values)
        print(f"{name:24s} {a[:, 0].mean():10.4f} {np.median(a[:, 1]):7.2f} {a[:, 2].mean():12.4f} {np.median(a[:, 3]):9.2f}")


if __name__ == "__main__":
    main()
