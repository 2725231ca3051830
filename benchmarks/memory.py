"""Peak memory and time per step of NePhi, VoxelMorph and NODEO at growing image sizes.

Every case (method x mode x size) runs in a fresh Python process, so its peak resident set size
(``ru_maxrss``) is its own; the table also gives the growth over the RSS measured just before the
case's work (torch imported, images made), and the peak CUDA allocation when the device is a GPU.

Modes (one pair of smooth random images, the moving one shifted by 2 voxels; method defaults):

* ``train``: ``--steps`` optimiser steps of the learned method's training loss (batch of 1 pair);
* ``io``: ``--steps`` instance-optimisation steps on the pair from a fresh network, then the dense
  field(s) at full resolution (NePhi: chunk-wise; NODEO: ``--steps`` iterations of its per-pair
  optimisation, its only mode).

``s/step`` and ``cpu/step`` are the median wall and process CPU (all threads) seconds over the steps
after the first (warm-up); CPU time is less distorted by a loaded machine. For NODEO, CPU time is
its whole run over the iterations (set-up included). VoxelMorph is skipped when
``registration_core/methods/voxelmorph.py`` is absent; NODEO needs every axis >= 64.

    python benchmarks/memory.py                          # default: 2D 128, 256; 3D 64; 3 steps (~minutes)
    python benchmarks/memory.py --sizes-2d 128,256,512 --sizes-3d 64,96,128,160 --steps 5   # full sweep
    python benchmarks/memory.py --methods nephi --modes io --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

MODES = {"nephi": ("train", "io"), "voxelmorph": ("train", "io"), "nodeo": ("io",)}


def make_pair(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random image in [0, 1] (float32) and a copy shifted by 2 voxels along every axis."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 2.0)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    return fixed, np.roll(fixed, 2, axis=tuple(range(len(shape))))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _timed_steps(step: Any, steps: int, sync: Any) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each call of ``step()``; ``sync()`` waits for the device."""
    times = []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return times


def _learned_case(
    name: str, mode: str, fixed: np.ndarray, moving: np.ndarray, steps: int, device_name: str
) -> list[tuple[float, float]]:
    """``steps`` training or instance-optimisation steps of a learned method (then its dense fields for io)."""
    import torch

    from registration_core.core.provenance import resolve_device
    from registration_core.methods import get_method

    method = get_method(name)
    params = method.resolve_params({"device": device_name})
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = method.build_model(fixed.shape, params).to(device)
    batch = {key: torch.from_numpy(image)[None, None].to(device) for key, image in (("fixed", fixed), ("moving", moving))}
    train = mode == "train"
    loss = method.loss if train else method.instance_loss
    optimizer = torch.optim.Adam(model.parameters() if train else method.instance_parameters(model),
                                 lr=params["lr" if train else "io_lr"])

    def step() -> None:
        total, _ = loss(model, batch, params)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = _timed_steps(step, steps, sync)
    if not train:
        with torch.no_grad():
            method.predict(model, batch["fixed"], batch["moving"], params)
            method.predict_inverse(model, batch["fixed"], batch["moving"], params)
    return times


def _nodeo_case(fixed: np.ndarray, moving: np.ndarray, steps: int, device_name: str) -> list[tuple[float, float]]:
    """``steps`` NODEO iterations: wall seconds per iteration from its loss history, CPU seconds the
    run's total over the iterations (set-up included)."""
    from registration_core.core.io import Image
    from registration_core.methods import get_method

    nodeo = get_method("nodeo")
    params = nodeo.resolve_params({"iterations": steps, "device": device_name})
    cpu_start = time.process_time()
    result = nodeo.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params)
    cpu = (time.process_time() - cpu_start) / steps
    elapsed = [0.0] + [h["elapsed_s"] for h in result.loss_history]
    return [(wall, cpu) for wall in np.diff(elapsed)]


def run_case(name: str, mode: str, shape: tuple[int, ...], steps: int, device_name: str) -> dict[str, Any]:
    """One case in this process: its figures as a dict."""
    import torch

    from registration_core.methods import get_method

    get_method(name)  # the method's imports count in the baseline
    fixed, moving = make_pair(shape)
    baseline = _rss_mb()
    if name == "nodeo":
        times = _nodeo_case(fixed, moving, steps, device_name)
    else:
        times = _learned_case(name, mode, fixed, moving, steps, device_name)
    timed = np.array(times[1:] if len(times) > 1 else times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "method": name, "mode": mode, "shape": list(shape), "steps": steps,
        "device": "cuda" if cuda is not None else "cpu", "threads": torch.get_num_threads(),
        "s_per_step": float(np.median(timed[:, 0])), "cpu_s_per_step": float(np.median(timed[:, 1])),
        "peak_rss_mb": peak, "rss_growth_mb": peak - baseline, "peak_cuda_mb": cuda,
    }


def _voxelmorph_present() -> bool:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "registration_core" / "methods" / "voxelmorph.py").is_file()


def _sizes(text: str, ndim: int) -> list[tuple[int, ...]]:
    return [(int(n),) * ndim for n in text.split(",") if n.strip()]


def _row(r: dict[str, Any]) -> str:
    size = "x".join(map(str, r["shape"]))
    if "error" in r:
        return f"{r['method']:>10} {r['mode']:>5} {size:>12}  failed: {r['error']}"
    cuda = f"{r['peak_cuda_mb']:10.0f}" if r["peak_cuda_mb"] is not None else f"{'-':>10}"
    return (f"{r['method']:>10} {r['mode']:>5} {size:>12} {r['device']:>5} {r['s_per_step']:9.3f} {r['cpu_s_per_step']:9.3f} "
            f"{r['peak_rss_mb']:9.0f} {r['rss_growth_mb']:9.0f} {cuda}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="nephi,voxelmorph,nodeo")
    parser.add_argument("--modes", default="train,io")
    parser.add_argument("--sizes-2d", default="128,256", help="comma-separated square sizes (full sweep: 128,256,512)")
    parser.add_argument("--sizes-3d", default="64", help="comma-separated cube sizes (full sweep: 64,96,128,160)")
    parser.add_argument("--steps", type=int, default=3, help="steps per case (the first is a warm-up)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per case (0: torch's default)")
    parser.add_argument("--case-timeout", type=int, default=600, help="seconds before a case is abandoned")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--one", nargs=4, metavar=("METHOD", "MODE", "SHAPE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, mode, shape, steps = args.one
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_case(name, mode, tuple(int(n) for n in shape.split("x")), int(steps), args.device)))
        return
    methods = [m for m in args.methods.split(",") if m != "voxelmorph" or _voxelmorph_present()]
    if "voxelmorph" in args.methods.split(",") and "voxelmorph" not in methods:
        print("voxelmorph: methods/voxelmorph.py not present, skipped", flush=True)
    shapes = _sizes(args.sizes_2d, 2) + _sizes(args.sizes_3d, 3)
    header = ("method", "mode", "size", "dev", "s/step", "cpu/step", "peakRSS", "+RSS", "peakCUDA")
    widths = (10, 5, 12, 5, 9, 9, 9, 9, 10)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths)) + "  (MiB)", flush=True)
    rows = []
    for shape in shapes:
        for name in methods:
            for mode in (m for m in args.modes.split(",") if m in MODES[name]):
                cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads), "--one", name, mode,
                       "x".join(map(str, shape)), str(args.steps)]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
                    if done.returncode == 0:
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                    else:
                        row = {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
                except subprocess.TimeoutExpired:
                    row = {"error": f"over {args.case_timeout} s"}
                row = {"method": name, "mode": mode, "shape": list(shape), **row}
                rows.append(row)
                print(_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
