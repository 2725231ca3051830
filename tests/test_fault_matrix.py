"""Bad inputs and interruptions through the real CLI (a subprocess): each gives exit status != 0, one
line ``error: ...`` naming the file or key, and leaves no file that looks finished; plus the library
pieces behind them (YAML reading, staged output folders) on analytic cases."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from registration_core import __version__
from registration_core.cli import build_parser
from registration_core.core.io import Image, load_displacement, load_image, save_displacement, save_image
from registration_core.core.outputs import staged_folder
from registration_core.core.yaml_io import load_yaml_text
from registration_core.errors import InputError
from registration_core.methods.nodeo import encoder_depth
from registration_core.preprocessing.steps import resample

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registration_core", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd)


def blobs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    centre = np.random.default_rng(seed).uniform(0.3, 0.7, size=len(shape)) * np.asarray(shape)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return np.exp(-r2 / (2 * (min(shape) / 5) ** 2)).astype(np.float32)


@pytest.fixture()
def pair(tmp_path: Path) -> dict[str, Path]:
    """A 2D pair with labels and landmarks on one grid."""
    fixed, moving = Image(blobs((24, 20), 1), np.eye(4)), Image(blobs((24, 20), 2), np.eye(4))
    files = {"fixed": tmp_path / "fixed.nii.gz", "moving": tmp_path / "moving.nii.gz",
             "labels": tmp_path / "labels.nii.gz", "points": tmp_path / "points.csv"}
    save_image(fixed, files["fixed"])
    save_image(moving, files["moving"])
    save_image(fixed.with_data((fixed.data > 0.5).astype(np.int32)), files["labels"])
    files["points"].write_text("i,j\n3,4\n10,12\n")
    return files


def finished_files(folder: Path) -> list[str]:
    """Files in ``folder`` (recursively) that a reader could take for outputs: any non-hidden file."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def assert_one_line_error(result: subprocess.CompletedProcess[str], names: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert names in lines[0], lines[0]
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- library, analytic


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb:\n  c: 2\n  c: 3\n", "duplicate key 'c' on line 4 (first on line 3)"),
    ("methods:\n  nodeo: {}\n  demons: {}\n  nodeo: {grid: {}}\n", "duplicate key 'nodeo' on line 4"),
    ("a:\n\tb: 1\n", "not valid YAML on line 2"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdef", "bcdefg")), "anchors and aliases"),
])
def test_yaml_refuses_duplicates_syntax_errors_and_bombs(text: str, message: str) -> None:
    with pytest.raises(InputError, match="^f.yaml: ") as error:
        load_yaml_text(text, "f.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_yaml_keeps_legitimate_anchors_and_merge_keys() -> None:
    assert load_yaml_text("base: &b {x: 1}\nm:\n  <<: *b\n  y: 2\nl: [*b]\n", "f") == {
        "base": {"x": 1}, "m": {"x": 1, "y": 2}, "l": [{"x": 1}]}


def test_staged_folder_removes_stale_files_and_keeps_nothing_on_error(tmp_path: Path) -> None:
    names = ["a.txt", "b.txt", "log.json"]
    for name in names:
        (tmp_path / name).write_text("old")
    with staged_folder(tmp_path, names, "log.json") as stage:
        (stage / "a.txt").write_text("new")
        (stage / "log.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "log.json"]  # stale b.txt gone
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path, names, "log.json") as stage:
            (stage / "a.txt").write_text("newer")
            raise RuntimeError("fails before the log")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="log.json was not written"):
        with staged_folder(tmp_path, names, "log.json") as stage:
            (stage / "a.txt").write_text("no log")
    assert list(tmp_path.iterdir()) == []


def test_nan_vectors_in_a_nifti_field_are_refused(tmp_path: Path) -> None:
    reference = Image(blobs((6, 5, 4)), np.eye(4))
    save_displacement(np.zeros((3, 6, 5, 4)), reference, tmp_path / "d.nii.gz")
    field = sitk.ReadImage(str(tmp_path / "d.nii.gz"))
    vectors = sitk.GetArrayFromImage(field)
    vectors[1, 2, 3, 0] = np.nan
    bad = sitk.GetImageFromArray(vectors, isVector=True)
    bad.CopyInformation(field)
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nan.nii.gz")))).any()  # ITK: 0
    with pytest.raises(InputError, match="nan.nii.gz: contains NaN"):
        load_displacement(tmp_path / "nan.nii.gz", reference)


def test_coronal_2d_slice_round_trips_a_displacement(tmp_path: Path) -> None:
    affine = np.array([[0.8, 0, 0, 1], [0, 0, 1, 2], [0, 1.5, 0, 3], [0, 0, 0, 1]])  # j -> S: coronal
    save_image(Image(blobs((12, 10)), affine), tmp_path / "cor.nii.gz")
    image = load_image(tmp_path / "cor.nii.gz")
    disp = np.random.default_rng(0).normal(size=(2, 12, 10)).astype(np.float32)
    save_displacement(disp, image, tmp_path / "d.nii.gz")
    np.testing.assert_allclose(load_displacement(tmp_path / "d.nii.gz", image), disp, atol=1e-5)


def test_grid_difference_names_origin_and_direction() -> None:
    a = Image(blobs((6, 5, 4)), np.eye(4))
    shifted = np.eye(4)
    shifted[2, 3] = 5.0
    assert a.grid_difference(Image(a.data, shifted)) == "origin [0.0, 0.0, 0.0] vs [0.0, 0.0, 5.0] mm"
    assert a.grid_difference(Image(a.data, np.diag([1.0, -1, 1, 1]))).startswith("direction")
    assert a.grid_difference(Image(a.data, np.eye(4))) is None


def test_resample_refuses_a_huge_grid_with_its_size() -> None:
    image = Image(blobs((20, 20, 20)), np.eye(4))
    with pytest.raises(InputError, match=r"resample: output grid \[20000, 20000, 20000\].* GiB"):
        resample(image, spacing=0.001)


@pytest.mark.parametrize(("side", "depth"), [(16, 3), (31, 3), (32, 4), (63, 4), (64, 5), (300, 5)])
def test_nodeo_encoder_depth_follows_the_smallest_axis(side: int, depth: int) -> None:
    assert encoder_depth((side, 400)) == depth


# --------------------------------------------------------------------------- CLI


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {option}", help) for option, help in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action.help


def test_every_cli_option_has_help() -> None:
    missing = [option for option, help in _options(build_parser()) if not help]
    assert missing == []


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"registration_core {__version__}"


def test_register_into_a_used_folder_keeps_no_stale_output(pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    common = ["register", "--method", "demons", "--fixed", pair["fixed"], "--moving", pair["moving"],
              "--out", out, "--param", "iterations=2", "--param", "shrink_factors=1", "--param", "smoothing_sigmas=0"]
    first = cli(*common, "--fixed-labels", pair["labels"], "--moving-labels", pair["labels"])
    assert first.returncode == 0, first.stderr
    assert (out / "warped_labels.nii.gz").is_file()
    second = cli(*common)
    assert second.returncode == 0, second.stderr
    assert finished_files(out) == ["displacement.nii.gz", "log.json", "warped.nii.gz"]
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_write_phase_leaves_nothing(tmp_path: Path, signum: int) -> None:
    """The signal is sent when the staging folder holds its first output (an ordering, not a timing):
    the command must exit 128 + signal with one line and leave neither outputs nor hidden leftovers."""
    shape = (96, 96, 96)  # the three writes take long enough for the signal to land among them
    save_image(Image(blobs(shape, 1), np.eye(4)), tmp_path / "f.nii.gz")
    save_image(Image(blobs(shape, 2), np.eye(4)), tmp_path / "m.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.json").write_text("{}")  # a previous run's: must not survive either
    process = subprocess.Popen(
        [sys.executable, "-m", "registration_core", "register", "--method", "demons", "--fixed", tmp_path / "f.nii.gz",
         "--moving", tmp_path / "m.nii.gz", "--out", out, "--param", "iterations=1", "--param", "shrink_factors=4",
         "--param", "smoothing_sigmas=0"], stderr=subprocess.PIPE, text=True, env=ENV)
    while process.poll() is None and not any(out.glob(".staging-*/warped.nii.gz")):
        pass
    assert process.poll() is None, "the command ended before its write phase was seen"
    process.send_signal(signum)
    _, stderr = process.communicate()
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [f"error: interrupted by {signal.Signals(signum).name}; nothing of this run was kept"]
    assert list(out.iterdir()) == []


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def fault_cases(tmp: Path, pair: dict[str, Path]) -> dict[str, tuple[list, str, Path]]:
    """name -> (CLI arguments, text the one-line error must contain, output folder or file)."""
    out = tmp / "out"
    reg = ["register", "--method", "demons", "--out", out, "--param", "iterations=1"]
    good = ["--fixed", pair["fixed"], "--moving", pair["moving"]]
    truncated = _write(tmp / "truncated.nii.gz", pair["fixed"].read_bytes()[:200])
    empty = _write(tmp / "empty.nii.gz", b"")
    folder = tmp / "folder.nii.gz"
    folder.mkdir()
    float_labels = tmp / "float_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((24, 20), 1.5, np.float32), np.eye(4)), float_labels)
    big_labels = tmp / "big_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((24, 20), 2**40, np.int64), np.eye(4), dtype=np.int64), big_labels)
    huge = tmp / "huge.nii.gz"
    nib.save(nib.Nifti1Image(np.where(blobs((24, 20)) > 0.5, 1e300, 0.0), np.eye(4)), huge)
    shifted_affine = np.eye(4)
    shifted_affine[0, 3] = 3.0
    shifted = tmp / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(blobs((24, 20), 2), shifted_affine), shifted)
    nan_points = _write(tmp / "nan.txt", b"index\n2\n3 4\nnan 5\n")
    field_3d = tmp / "field3d.nii.gz"
    save_displacement(np.zeros((3, 6, 5, 4)), Image(blobs((6, 5, 4)), np.eye(4)), field_3d)
    dup = _write(tmp / "steps.yaml", b"- step: clip\n  low: 1\n  low: 2\n")
    bomb = _write(tmp / "bomb.yaml", ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdef", "bcdefg"))).encode())
    bad_utf8 = _write(tmp / "latin.yaml", "- step: clip  # \xe9\n".encode("latin-1"))
    raw = _write(tmp / "nan.img", np.full(24 * 20, np.nan, np.float32).tobytes())
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    evaluate = ["evaluate", "--fixed-labels", pair["labels"], "--warped-labels", pair["labels"], "--out", tmp / "m.json"]
    return {
        "truncated nii.gz": ([*reg, "--fixed", truncated, "--moving", pair["moving"]], "truncated.nii.gz", out),
        "empty image file": ([*reg, "--fixed", empty, "--moving", pair["moving"]], "empty.nii.gz", out),
        "folder as image": ([*reg, "--fixed", pair["fixed"], "--moving", folder], "folder.nii.gz", out),
        "float label map": ([*reg, *good, "--fixed-labels", float_labels, "--moving-labels", pair["labels"]],
                            "float_labels.nii.gz: label map has non-integer", out),
        "labels beyond int32": ([*reg, *good, "--fixed-labels", big_labels, "--moving-labels", pair["labels"]],
                                "big_labels.nii.gz: label values", out),
        "float64 beyond float32": ([*reg, "--fixed", huge, "--moving", pair["moving"]], "huge.nii.gz: intensities", out),
        "origin mismatch": ([*reg, "--fixed", pair["fixed"], "--moving", shifted], "shifted.nii.gz: its grid differs from", out),
        "landmark NaN": ([*reg, *good, "--fixed-landmarks", nan_points, "--moving-landmarks", nan_points],
                         "nan.txt: point 2 has a NaN", out),
        "3D field on 2D grid": ([*evaluate, "--displacement", field_3d], "field3d.nii.gz: is a 3D field", tmp / "m.json"),
        "duplicate key in steps": (["prepare", "--image", pair["fixed"], "--steps", dup, "--out-image", tmp / "p.nii.gz"],
                                   "steps.yaml: duplicate key 'low' on line 3", tmp / "p.nii.gz"),
        "alias bomb in steps": (["prepare", "--image", pair["fixed"], "--steps", bomb, "--out-image", tmp / "p.nii.gz"],
                                "bomb.yaml: expands", tmp / "p.nii.gz"),
        "non-UTF-8 steps": (["prepare", "--image", pair["fixed"], "--steps", bad_utf8, "--out-image", tmp / "p.nii.gz"],
                            "latin.yaml", tmp / "p.nii.gz"),
        "huge crop-pad": (["preprocess", "crop-pad", "--image", pair["fixed"], "--out", tmp / "p.nii.gz",
                           "--set", "shape=[100000, 100000]"], "GiB", tmp / "p.nii.gz"),
        "NaN raw import": (["import-raw", "--raw", raw, "--shape", "24", "20", "--spacing", "1", "1", "--dtype", "<f4",
                            "--out", tmp / "r.nii.gz"], "nan.img: holds NaN", tmp / "r.nii.gz"),
        "unwritable output folder": ([*reg, *good, "--out", locked / "out"], str(locked), locked),
        "duplicate config key": (["plan", "--config", _write(tmp / "c.yaml", b"study: a\nstudy: b\n"),
                                  "--out", tmp / "jobs.tsv"], "c.yaml: duplicate key 'study' on line 2", tmp / "jobs.tsv"),
        "empty config": (["plan", "--config", _write(tmp / "e.yaml", b""), "--out", tmp / "jobs.tsv"],
                         "e.yaml: config file is empty", tmp / "jobs.tsv"),
    }


def test_fault_matrix_through_the_cli(pair: dict[str, Path], tmp_path: Path) -> None:
    cases = fault_cases(tmp_path, pair)
    if os.geteuid() == 0:  # root writes into read-only folders
        del cases["unwritable output folder"]
    failures = []
    for name, (args, names, output) in cases.items():
        result = cli(*args)
        try:
            assert_one_line_error(result, names)
            left = finished_files(output) if output.is_dir() else ([output.name] if output.exists() else [])
            assert left == [], f"left {left}"
        except AssertionError as error:
            failures.append(f"{name}: {error} | {result.stderr.strip()[-300:]}")
    assert failures == []
