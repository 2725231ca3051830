"""NODEO per-iteration time and similarity, ours beside the public reference code, in one run.

The reference (github.com/yifannnwu/NODEO-DIR) is imported from a checkout given by
``--reference DIR`` or ``$NODEO_REFERENCE_DIR`` (its Network.py, NeuralODE.py, Loss.py, Utils.py);
the script exits 0 with a message when there is none. Both run on the 160x192x144 pair of
benchmarks/nodeo_speed.py (aligned-brains subject-b -> subject-a) with the reference's settings
(our `reference` preset), one optimiser step at a time, alternating ours and theirs (``--rounds``
rounds of ``--block`` steps each), so machine load hits both alike. Printed: median and spread
(min-max) of seconds per iteration, their ratio per round, and the similarity loss
``1 - mean(local NCC^2)`` (window 21) of each after the same number of iterations.
Both run under the command line's allocator setting (:mod:`registration_core.core.allocator`)
unless ``--system-allocator``. ``--profile`` also prints torch.profiler's op table for our iterate 0 and one step.

    NODEO_REFERENCE_DIR=/tmp/nodeo-ref python benchmarks/nodeo_vs_reference.py --rounds 3 --block 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodeo_speed import load_case  # noqa: E402

from registration_core.core.allocator import retain_freed_memory  # noqa: E402

Step = Callable[[], float]


def reference_stepper(ref_dir: Path, fixed: np.ndarray, moving: np.ndarray) -> Step:
    """One iteration of the reference's training loop (its Registration.registration body, default settings)."""
    sys.path.insert(0, str(ref_dir))
    from Loss import NCC, magnitude_loss, neg_Jdet_loss, smoothloss_loss  # type: ignore[import-not-found]
    from Network import BrainNet  # type: ignore[import-not-found]
    from NeuralODE import NeuralODE  # type: ignore[import-not-found]
    from Utils import SpatialTransformer, generate_grid3D_tensor  # type: ignore[import-not-found]

    shape = fixed.shape
    fixed_t, moving_t = torch.from_numpy(fixed)[None, None].float(), torch.from_numpy(moving)[None, None].float()
    net = BrainNet(img_sz=shape, smoothing_kernel="AK", smoothing_win=15, smoothing_pass=1, ds=2, bs=16)
    ode = NeuralODE(net, "Euler", 0.001)
    scale = torch.tensor(shape).view(1, 3, 1, 1, 1) * 1.0
    st = SpatialTransformer(shape)
    grid = generate_grid3D_tensor(shape).unsqueeze(0)
    opt = torch.optim.Adam(ode.parameters(), lr=0.005, amsgrad=True)
    ncc = NCC(win=21)

    def step() -> float:
        all_phi = ode(grid, torch.Tensor(np.arange(2)), return_whole_sequence=True)
        all_v = all_phi[1:] - all_phi[:-1]
        all_phi = (all_phi + 1.0) / 2.0 * scale
        df = all_phi[-1] - (grid + 1.0) / 2.0 * scale
        warped, df_with_grid = st(moving_t, df, return_phi=True)
        sim = ncc(warped, fixed_t)
        loss = sim + 5e-5 * magnitude_loss(all_v) + 2.5 * neg_Jdet_loss(df_with_grid) + 0.05 * smoothloss_loss(df)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(sim.detach())

    return step


def our_run(fixed: np.ndarray, moving: np.ndarray, iterations: int) -> tuple[list[float], list[float]]:
    """Our `reference` preset through Nodeo.register: (seconds of each step after the first two, similarity per iterate).

    The first two steps of a fresh run grow the allocator (the reference stepper is already warm)."""
    from registration_core.core.io import Image
    from registration_core.methods import get_method

    nodeo = get_method("nodeo")
    params = nodeo.resolve_params({"preset": "reference", "iterations": iterations, "device": "cpu"})
    history = nodeo.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params).loss_history
    elapsed = [h["elapsed_s"] for h in history]
    return [float(t) for t in np.diff(elapsed)[2:]], [h["sim"] for h in history]


def timed(step: Step) -> tuple[float, float]:
    start = time.perf_counter()
    sim = step()
    return time.perf_counter() - start, sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=os.environ.get("NODEO_REFERENCE_DIR"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc's allocator as it is (by default both run under the CLI's setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.system_allocator:
        retain_freed_memory()
    fixed, moving, source = load_case(3)
    print(f"pair {'x'.join(map(str, fixed.shape))}: {source}; {torch.get_num_threads()} threads", flush=True)
    ref_dir = Path(args.reference) if args.reference else None
    if ref_dir is None or not (ref_dir / "Network.py").is_file():
        print("no reference checkout (--reference DIR or NODEO_REFERENCE_DIR): skipped")
        return
    theirs = reference_stepper(ref_dir, fixed, moving)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            our_run(fixed, moving, 1)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    timed(theirs)  # warm-up
    t_ours: list[float] = []
    t_ref: list[float] = []
    ratios: list[float] = []
    sim_ref = float("nan")
    for r in range(args.rounds):
        a = our_run(fixed, moving, args.block + 2)[0]
        b = [timed(theirs) for _ in range(args.block)]
        t_ours += a
        t_ref += [t for t, _ in b]
        sim_ref = b[-1][1]
        ratios.append(statistics.median(t for t, _ in b) / statistics.median(a))
        print(f"round {r}: ours {[round(float(t), 2) for t in a]} s, reference {[round(t, 2) for t, _ in b]} s", flush=True)
    n = 1 + args.rounds * args.block  # reference steps taken; its last similarity is that of the state before step n
    sim_ours = our_run(fixed, moving, n)[1][n - 1]
    print(f"ours      {statistics.median(t_ours):.3f} s/iteration (min {min(t_ours):.3f}, max {max(t_ours):.3f})")
    print(f"reference {statistics.median(t_ref):.3f} s/iteration (min {min(t_ref):.3f}, max {max(t_ref):.3f})")
    print(f"speed-up per round {[round(float(x), 2) for x in ratios]}, median {statistics.median(ratios):.2f}")
    print(f"similarity loss of the iterate after {n - 1} steps: ours {sim_ours:.4f}, reference {sim_ref:.4f}")


if __name__ == "__main__":
    main()
