"""The workflow on a real SLURM cluster: one node (this machine) started by tests/slurm/cluster.sh.

The smoke study (config/studies/slurm-smoke.yaml: 4 NODEO registrations) runs once locally and
once through ``snakemake --workflow-profile profiles/slurm`` with the SLURM executor plugin. Every
registration must be its own SLURM job, the evaluations one grouped job, and every metric must
equal the local run's (NODEO repeats bit for bit on the CPU with the same seed).

Needs root (to install slurm-wlm and munge with apt-get when missing and to run the daemons) and
snakemake-executor-plugin-slurm (``pip install -e .[cluster]``); skips with the reason otherwise.
The daemons are stopped by pid when the module's tests are done. 6.5 minutes on 2 cores (local
run 2 min, SLURM run 4.5 min: every SLURM job starts Snakemake), 12 minutes on cores busy with
other work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import snakemake_command

from support.paths import REPO_ROOT

SNAKEFILE = REPO_ROOT / "Snakefile"
CLUSTER_SCRIPT = REPO_ROOT / "tests" / "slurm" / "cluster.sh"
STUDY_CONFIG = REPO_ROOT / "config" / "studies" / "slurm-smoke.yaml"
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
DAEMONS = ("slurmd", "slurmctld", "munged")
# Columns of metrics.csv that may differ between two runs of the same study (timing, memory).
TIMING_COLUMNS = ("runtime_s", "peak_rss_mb")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports that are free on this host right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def install_slurm() -> None:
    """apt-get install slurm-wlm and munge when a tool is missing; skip the module when that fails."""
    if all(shutil.which(tool) for tool in SLURM_TOOLS):
        return
    start = time.perf_counter()
    result = subprocess.run([str(CLUSTER_SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not all(shutil.which(tool) for tool in SLURM_TOOLS):
        pytest.skip(f"cannot install slurm-wlm and munge with apt-get: {result.stderr.strip()[-300:]}")
    print(f"apt-get install slurm-wlm munge: {time.perf_counter() - start:.1f} s")


def stop_daemons(cluster_dir: Path) -> None:
    """SIGTERM each daemon that cluster.sh started (its pid file), SIGKILL after 10 s."""
    for name in DAEMONS:
        pid_file = cluster_dir / "run" / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def cancel_jobs(env: dict[str, str]) -> None:
    """scancel every job of the test cluster and wait (30 s at most) until their processes are gone."""
    subprocess.run(["scancel", "--partition", "debug"], env=env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
        if queue.returncode != 0 or not {"RUNNING", "COMPLETING", "PENDING"} & set(queue.stdout.split()):
            return
        time.sleep(1)


def log_tails(cluster_dir: Path) -> str:
    """The last lines of the daemons' logs (for failure messages)."""
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]) for log in sorted((cluster_dir / "log").glob("*.log")))


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment (SLURM_CONF, PATH) of a running one-node SLURM cluster with partition ``debug``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: installs slurm-wlm/munge and runs slurmctld, slurmd and munged")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e .[cluster])")
    install_slurm()
    cluster_dir = tmp_path_factory.mktemp("slurm-cluster")
    env = dict(os.environ)
    env["SLURM_CONF"] = str(cluster_dir / "etc" / "slurm.conf")
    env["PATH"] = os.pathsep.join([str(cluster_dir / "bin"), env["PATH"]])
    ports = [str(port) for port in free_ports(2)]
    try:
        start = time.perf_counter()
        result = subprocess.run([str(CLUSTER_SCRIPT), "start", str(cluster_dir), *ports], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{result.stderr}\n{log_tails(cluster_dir)}"
        print(f"SLURM cluster started in {time.perf_counter() - start:.1f} s")
        yield env
    finally:
        if (cluster_dir / "run" / "slurmctld.pid").is_file():
            cancel_jobs(env)
        stop_daemons(cluster_dir)


def run_study(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    """The smoke study in ``workdir`` (its own .snakemake, results, logs); output streams merged."""
    command = [
        *snakemake_command(), "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(STUDY_CONFIG), "--retries", "0", *args,
    ]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """The sbatch command lines of a --verbose SLURM run, by SLURM log folder (rule_<rule> or group_<group>_<rules>)."""
    calls: dict[str, list[str]] = {}
    for line in re.findall(r"^sbatch call: (.*)$", output, re.M):
        folder = re.search(r"slurm_logs/(\w+)/", line).group(1)
        calls.setdefault(folder, []).append(line)
    return calls


def scores(study_dir: Path) -> pd.DataFrame:
    """metrics.csv without the timing and path columns, one row per registration, sorted."""
    metrics = pd.read_csv(study_dir / "metrics.csv")
    return metrics.drop(columns=[c for c in TIMING_COLUMNS if c in metrics]).sort_values(["grid_id", "moving"]).reset_index(drop=True)


def job_state(env: dict[str, str], job_id: str) -> str:
    """SLURM's state of a finished job (kept by slurmctld for MinJobAge = 3600 s)."""
    result = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, env=env, check=True)
    return re.search(r"JobState=(\w+)", result.stdout).group(1)


def test_smoke_study_on_slurm_matches_local_run(slurm_env: dict[str, str], tmp_path: Path) -> None:
    start = time.perf_counter()
    local = run_study(tmp_path / "local", "--cores", "2", "results/slurm-smoke/metrics.csv")
    assert local.returncode == 0, local.stdout[-4000:]
    local_s = time.perf_counter() - start

    start = time.perf_counter()
    cluster = run_study(
        tmp_path / "slurm", "--workflow-profile", str(REPO_ROOT / "profiles" / "slurm"),
        # The node has 2 CPUs: group jobs at most 2 wide. No accounting database, hence no account
        # and squeue (MinJobAge 3600 s) for the job states; poll every 2 s instead of 40 s.
        "--cores", "2", "--slurm-no-account", "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs", "--latency-wait", "5", "--verbose",
        env=slurm_env,
    )
    slurm_s = time.perf_counter() - start
    assert cluster.returncode == 0, cluster.stdout[-6000:]

    calls = sbatch_calls(cluster.stdout)
    register_calls = calls.pop("rule_register")
    assert len(register_calls) == 4
    for call in register_calls:
        assert " -p debug " in call and " -t 10 " in call and " --mem 1000 " in call and " --cpus-per-task=1 " in call
        assert "--gpus" not in call
    # Everything else ran in three batches: data + preprocessing + QC, evaluations, tables + report.
    batches = {folder.split("_")[1]: lines for folder, lines in calls.items()}
    assert sorted(batches) == ["eval", "prep", "study"] and all(len(lines) == 1 for lines in batches.values()), calls
    # Four evaluations of 1 CPU and 1000 MB, at most 2 at a time: 2 rounds of 10 minutes.
    assert " -t 20 --mem 2000 --ntasks=1 --cpus-per-task=2 " in batches["eval"][0]

    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", cluster.stdout)
    assert len(submitted) == 4 + 3
    register_logs = {Path(log) for job_id, log in submitted if "/rule_register/" in log}
    assert len(register_logs) == 4
    for job_id, log in submitted:
        assert job_state(slurm_env, job_id) == "COMPLETED", (job_id, Path(log).read_text()[-2000:])
        assert Path(log).is_file()
    for log in register_logs:
        assert "localrule register:" in log.read_text() and "1 of 1 steps (100%) done" in log.read_text()

    slurm_study = tmp_path / "slurm" / "results" / "slurm-smoke"
    pd.testing.assert_frame_equal(scores(slurm_study), scores(tmp_path / "local" / "results" / "slurm-smoke"), check_exact=True)
    for metrics_file in sorted(slurm_study.glob("eval/nodeo/*/*.json")):
        local_file = tmp_path / "local" / metrics_file.relative_to(tmp_path / "slurm")
        assert json.loads(metrics_file.read_text()) == json.loads(local_file.read_text()), metrics_file.name
    assert len(list(slurm_study.glob("eval/nodeo/*/*.json"))) == 4
    assert (tmp_path / "slurm" / "reports" / "slurm-smoke" / "index.html").is_file()

    print(f"local run (to metrics.csv): {local_s:.1f} s; SLURM run (whole study): {slurm_s:.1f} s")
    print("sbatch (register):", register_calls[0])
    print("sbatch (evaluate group):", batches["eval"][0])
