"""NODEO speed and memory on the current device: seconds per iteration and peak memory.

Cases: 2D 160x192 (a full 300-iteration run: wall time, s/iteration, final similarity) and 3D
160x192x144 (a few iterations: s/iteration, similarity after them), for the `reference` and
`default` presets. Each case runs in a fresh process so its peak memory is its own.
Real slices/volumes of ../shared/data/aligned-brains are used when present, else smooth noise.

    python benchmarks/nodeo_speed.py                 # all cases
    python benchmarks/nodeo_speed.py --iterations-3d 10 --presets reference
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "aligned-brains"


def load_case(ndim: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Fixed and moving arrays: 2D (160, 192), 3D (160, 192, 144)."""
    if (DATA / "subject-a/t1w.nii.gz").is_file():
        import nibabel as nib

        vols = [np.asarray(nib.load(DATA / f"subject-{s}/t1w.nii.gz").dataobj, dtype=np.float32) for s in "ab"]
        crop = (slice(None), slice(None), 112) if ndim == 2 else (slice(None), slice(None), slice(40, 184))
        return vols[0][crop], vols[1][crop], "aligned-brains subject-b -> subject-a"
    from scipy import ndimage

    shape = (160, 192) if ndim == 2 else (160, 192, 144)
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random(shape), 4).astype(np.float32)
    return fixed, ndimage.shift(fixed, [2.0] * ndim, order=1, mode="nearest"), "smooth noise (no real data)"


def run_case(ndim: int, preset: str, iterations: int, device: str) -> dict:
    """One case in this process; returns its figures."""
    import torch

    from registration_core.core.allocator import retain_freed_memory
    from registration_core.core.io import Image
    from registration_core.methods import get_method

    retain_freed_memory()  # as the command line does
    fixed, moving, source = load_case(ndim)
    nodeo = get_method("nodeo")
    params = nodeo.resolve_params({"preset": preset, "iterations": iterations, "device": device})
    result = nodeo.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params)
    times = np.array([h["elapsed_s"] for h in result.loss_history])
    per_iteration = np.diff(times)[1:] if len(times) > 2 else np.diff(times)  # first step includes warm-up
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if result.device.startswith("cuda") else None
    return {
        "case": f"{ndim}D {'x'.join(map(str, fixed.shape))}",
        "preset": preset,
        "device": result.device,
        "threads": torch.get_num_threads(),
        "iterations": iterations,
        "wall_s": float(times[-1]),
        "s_per_iteration": float(np.median(per_iteration)),
        "sim_start": result.loss_history[0]["sim"],
        "sim_final": result.loss_history[-1]["sim"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_cuda_mb": cuda_peak,
        "data": source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="reference,default")
    parser.add_argument("--iterations-2d", type=int, default=300)
    parser.add_argument("--iterations-3d", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", nargs=3, metavar=("NDIM", "PRESET", "ITERATIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        ndim, preset, iterations = args.one
        print(json.dumps(run_case(int(ndim), preset, int(iterations), args.device)))
        return
    rows = []
    for preset in args.presets.split(","):
        for ndim, iterations in ((2, args.iterations_2d), (3, args.iterations_3d)):
            cmd = [sys.executable, __file__, "--device", args.device, "--one", str(ndim), preset, str(iterations)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{r['case']:>18} {r['preset']:>9} {r['device']:>5}: {r['s_per_iteration']:.3f} s/iteration, "
                f"{r['iterations']} iterations in {r['wall_s']:.1f} s, sim {r['sim_start']:.3f} -> "
                f"{r['sim_final']:.3f}, peak RSS {r['peak_rss_mb']:.0f} MiB"
                + (f", peak CUDA {r['peak_cuda_mb']:.0f} MiB" if r["peak_cuda_mb"] else ""),
                flush=True,
            )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
