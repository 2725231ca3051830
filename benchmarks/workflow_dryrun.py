"""DAG build + dry run of a 4,050-registration study (5 atlases x 45 moving x 18 grid points).

Plans the study on a folder dataset of 50 subjects with empty files (planning reads no image),
runs `snakemake --dry-run` on it and prints the wall time and the jobs per rule. ``--steps N``
gives every subject the first N of a typical preprocessing list (one job per step and subject).

    python benchmarks/workflow_dryrun.py [--repeats 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ATLASES = (0, 9, 19, 29, 39)
GRID = {"smoothing_kernel": ["AK", "GK"], "lr": [0.001, 0.005, 0.01], "iterations": [5, 10, 20]}
STEPS = [
    {"step": "reorient"}, {"step": "clip", "percentiles": [0.5, 99.5]}, {"step": "crop_pad", "shape": [160, 192, 160]},
    {"step": "resample", "spacing": 2.0}, {"step": "normalize"},
]


def write_study(root: Path, n_subjects: int = 50, n_steps: int = 0) -> Path:
    """A folder dataset of empty files and the study config; returns the config path."""
    subjects = [f"s{i:02d}" for i in range(1, n_subjects + 1)]
    for subject in subjects:
        (root / "data" / subject).mkdir(parents=True)
        for name in ("t1.nii.gz", "labels.nii.gz"):
            (root / "data" / subject / name).touch()
    config = {
        "study": "large",
        "datasets": {"brains": {"adapter": "folder", "path": "data", "image": "{subject}/t1.nii.gz",
                                "labels": "{subject}/labels.nii.gz", "preprocess": STEPS[:n_steps]}},
        "pairs": {"atlases": [subjects[i] for i in ATLASES], "moving": "rest"},
        "methods": {"nodeo": {"grid": GRID}},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, choices=range(len(STEPS) + 1), help="preprocessing steps")
    args = parser.parse_args()
    snakemake = Path(sys.executable).parent / "snakemake"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_study(root, n_steps=args.steps)
        command = [str(snakemake), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(root),
                   "--configfile", str(config), "--cores", "2", "--dry-run", "--quiet", "rules"]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
        table = (out.stdout + out.stderr)
        table = table[table.index("Job stats:"):]
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    print(f"dry run of {counts['register']:,} registrations ({counts['total']:,} jobs): "
          f"best {min(times):.1f} s, median {sorted(times)[len(times) // 2]:.1f} s over {len(times)} runs")
    print("jobs per rule:", ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
