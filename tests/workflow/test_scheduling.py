"""Running jobs never hold more threads together than ``--cores``: Snakemake's free pool of cores is
counted in a real Snakemake run, on a minimal workflow that triggers the scheduler's fault
(registration_core.study.scheduling) with and without the guard, and on the project's workflow.

Concurrency is counted, not timed: the Snakemake log lists each job when it starts ("rule NAME:"
... "jobid: N") and when it ends ("Finished jobid: N"); replaying those events in order gives the
threads Snakemake held at once (jobs also overlap on the machine by at most that much: a job is
listed before its process starts and finished after it ends).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from registration_core.layout import PATHS
from registration_core.study.scheduling import missing_subtraction

from support.paths import REPO_ROOT


def snakemake_command() -> list[str]:
    executable = Path(sys.executable).parent / "snakemake"
    return [str(executable)] if executable.is_file() else [sys.executable, "-m", "snakemake"]


def max_threads_held(log: str, threads_of: dict[str, int]) -> int:
    """Replay the job start / finish events of a Snakemake log; the most threads running at once.
    ``threads_of``: threads of each rule (1 for rules not listed)."""
    running: dict[str, int] = {}
    most = 0
    rule = None
    for line in log.splitlines():
        started = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if started:
            rule = started.group(1)
            continue
        job = re.match(r"^jobid: (\d+)$", line.strip())
        if job and rule is not None:
            running[job.group(1)] = threads_of.get(rule, 1)
            rule = None
            most = max(most, sum(running.values()))
            continue
        finished = re.match(r"^Finished jobid: (\d+)", line.strip())
        if finished:
            running.pop(finished.group(1), None)
    return most


SNAKEFILE = """
{guard}
rule all:
    input: expand("out/{{i}}.txt", i=range(4))

rule common:
    output: "common.txt"
    threads: 2
    shell: "touch {{output}}"

rule work:
    input: "common.txt"
    output: "out/{{i}}.txt"
    threads: lambda wildcards: 2
    shell: "sleep 1; touch {{output}}"
"""


def run_minimal(tmp_path: Path, guarded: bool) -> str:
    guard = "from registration_core.study.scheduling import guard_scheduler\nguard_scheduler()\n" if guarded else ""
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(guard=guard))
    result = subprocess.run(
        [*snakemake_command(), "--cores", "2", "--directory", str(tmp_path), "--snakefile", str(tmp_path / "Snakefile")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return result.stdout


def test_the_fault_exists_without_the_guard(tmp_path: Path) -> None:
    """A job started alone ("common") is not taken from the free pool but given back: two jobs of 2
    threads then run at once on 2 cores. If a Snakemake release fixes this, this test fails: the guard
    is then harmless and this test can go."""
    log = run_minimal(tmp_path, guarded=False)
    assert max_threads_held(log, {"common": 2, "work": 2}) == 4


def test_the_guard_keeps_threads_within_cores(tmp_path: Path) -> None:
    log = run_minimal(tmp_path, guarded=True)
    assert max_threads_held(log, {"common": 2, "work": 2}) == 2
    assert len(list((tmp_path / "out").iterdir())) == 4


def job(**resources: int) -> SimpleNamespace:
    return SimpleNamespace(scheduler_resources=resources)


def test_missing_subtraction_only_on_the_faulty_path() -> None:
    names = ["_cores", "_nodes", "_job_count", "gpu"]
    pool = {"_cores": 2, "_nodes": 99, "_job_count": 99, "gpu": 1}
    selected = [job(_cores=2, _nodes=1, _job_count=1)]
    # unchanged pool after a selection that needs cores: subtract what the jobs hold
    assert missing_subtraction(pool, dict(pool), selected, names) == {"_cores": 2, "_nodes": 1}
    # Snakemake subtracted already (its normal path): nothing more
    after = {"_cores": 0, "_nodes": 98, "_job_count": 99, "gpu": 1}
    assert missing_subtraction(pool, after, selected, names) == {}
    # nothing selected, or jobs that hold nothing
    assert missing_subtraction(pool, dict(pool), [], names) == {}
    assert missing_subtraction(pool, dict(pool), [job(_job_count=1)], names) == {}


@pytest.mark.slow
def test_workflow_registrations_never_exceed_cores(tmp_path: Path) -> None:
    """The project's workflow on a known-truth study, up to the evaluations: the base subject's
    preparation runs job after job, each started alone (the fault's trigger), then the known-truth
    pairs and registrations of 2 threads each, on 2 cores."""
    config = {
        "study": "cores",
        "datasets": {
            "demo": {"adapter": "demo", "n_subjects": 2, "spacing_mm": 3.0,
                     "preprocess": [{"step": "slice", "axis": 2, "index": "middle"}, {"step": "normalize", "mode": "minmax"}]},
            "pairs": {"adapter": "truth", "base": "demo", "subject": "demo-00", "n_pairs": 3, "motion": "single",
                      "max_disp_mm": 4.0, "n_landmarks": 10},
        },
        "pairs": {"dataset": "pairs"},
        "methods": {"nodeo": {"params": {"iterations": 4, "seed": 0, "stop_patience": 0}}},
        "resources": {"prepare": {"threads": 2}, "register": {"threads": 2}},
        "anova": {"factors": []},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # the evaluations only: the study-level jobs (config, plan) would be ready beside the chain
    targets = [
        PATHS["metrics"].format(study="cores", method="nodeo", grid_id="default", atlas="demo-00", moving=f"demo-00-m{k}")
        for k in range(3)
    ]
    result = subprocess.run(
        [*snakemake_command(), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "study.yaml"), "--cores", "2", "--retries", "0", *targets],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    threads = {"register": 2, "demo_subject": 2, "slice": 2, "normalize_final": 2, "synth_pair": 2}
    assert result.stdout.count("rule register:") == 3 and result.stdout.count("rule evaluate:") == 3
    assert max_threads_held(result.stdout, threads) <= 2
