"""Progress lines: their content on known counts, the heartbeat during a silence, the end lines,
and a real registration through the CLI writing one line per iteration to stderr."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from registration_core.core.io import Image, save_image
from registration_core.core.progress import Progress, progress, report
from registration_core.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_line_states_count_total_terms_rate_eta_and_memory() -> None:
    stream = io.StringIO()
    state = Progress("register x", total=10, stream=stream, interval_s=0.0)
    state.update(0, of=10, total=1.0)
    state._first = (state._first[0] - 4.0, 0)  # the first update 4 s ago: 2 iterations per second below
    state.update(8, sim=0.25, J=0.0)
    line = lines(stream)[-1]
    assert re.match(r"^\[\d\d:\d\d:\d\d\] register x: iteration 8/10 \(80%\) \| sim 0\.25, J 0 \| ", line), line
    rate = float(re.search(r"\| ([\d.]+) it/s \|", line).group(1))
    assert 1.9 < rate <= 2.0
    assert "ETA 0:00:01" in line and "elapsed " in line and re.search(r"rss \d+ MB \(peak \d+ MB\)", line)


def test_lines_wait_for_the_interval() -> None:
    stream = io.StringIO()
    state = Progress("train y", total=100, unit="step", stream=stream, interval_s=3600.0)
    for step in range(1, 50):
        state.update(step, total=1.0)
    assert lines(stream) == []
    state.say("done")
    assert re.search(r"train y: done \| total 1 \| [\d.e+]+ st/s \| elapsed", lines(stream)[0])


def test_report_goes_to_the_innermost_progress_and_is_silent_outside() -> None:
    report(3, 5, total=1.0)  # no progress open: nothing happens
    outer, inner = io.StringIO(), io.StringIO()
    with progress("outer", stream=outer, interval_s=0.0):
        with progress("inner", 5, stream=inner, interval_s=0.0):
            report(3, 5, total=0.5)
    assert "inner: iteration 3/5 (60%)" in lines(inner)[0] and "inner: done" in lines(inner)[-1]
    assert not any("iteration 3" in line for line in lines(outer))


def test_heartbeat_writes_during_a_silence_and_an_error_adds_no_line() -> None:
    stream = io.StringIO()
    with pytest.raises(ValueError):
        with progress("quiet", stream=stream, interval_s=0.05):
            deadline = time.monotonic() + 60
            while not any("quiet: running" in line for line in lines(stream)) and time.monotonic() < deadline:
                time.sleep(0.02)
            raise ValueError("stop")
    assert all("quiet: running" in line for line in lines(stream))
    # bad input: no line of its own (the command's one "error:" line says it)
    stream = io.StringIO()
    with pytest.raises(InputError):
        with progress("checks", stream=stream, interval_s=0.0):
            raise InputError("bad file")
    assert lines(stream) == []


def test_registration_writes_a_line_per_iteration_to_stderr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.random((64, 64)).astype(np.float32)
    for name, array in (("fixed", data), ("moving", np.roll(data, 2, axis=0))):
        save_image(Image(array, np.eye(4)), tmp_path / f"{name}.nii.gz")
    result = subprocess.run(
        [sys.executable, "-m", "registration_core", "register", "--method", "nodeo", "--fixed", tmp_path / "fixed.nii.gz",
         "--moving", tmp_path / "moving.nii.gz", "--out", tmp_path / "out", "--param", "iterations=6",
         "--param", "stop_patience=0", "--param", "device=cpu"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "REGISTRATION_CORE_PROGRESS_S": "0", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    found = [int(m.group(1)) for m in re.finditer(r"register nodeo: iteration (\d+)/6 ", result.stderr)]
    assert sorted(set(found)) == list(range(7)) and found == sorted(found)
    last = [line for line in result.stderr.splitlines() if "iteration 6/6" in line][0]
    assert "| total " in last and " sim " in last and " it/s " in last and "rss " in last
    assert "register nodeo: done" in result.stderr.splitlines()[-1]
