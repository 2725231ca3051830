"""Bad input through the command line: one line naming the file or parameter, a non-zero exit, no outputs.

The CLI's ``main`` is called in-process (the same entry point as ``python -m registration_core``);
the disk-full case runs in a subprocess with a file-size limit.
"""

from __future__ import annotations

import gzip
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from registration_core.cli import main
from registration_core.core.io import Image, save_displacement

SHAPE = (64, 72)


def _texture(seed: int) -> np.ndarray:
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(SHAPE), 3.0)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int32)
    labels[10:30, 10:40] = 1
    labels[35:60, 20:50] = 2
    return labels


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs, and one bad variant per case."""
    root = tmp_path_factory.mktemp("inputs")
    good = {
        "fixed": _nifti(root / "fixed.nii.gz", _texture(0)),
        "moving": _nifti(root / "moving.nii.gz", _texture(1)),
        "fixed_labels": _nifti(root / "fixed_labels.nii.gz", _labels()),
        "moving_labels": _nifti(root / "moving_labels.nii.gz", np.roll(_labels(), 2, axis=0)),
    }
    truncated = root / "truncated.nii.gz"
    truncated.write_bytes(good["fixed"].read_bytes()[:300])
    text = root / "text.nii.gz"
    text.write_bytes(gzip.compress(b"subject,age\nsub-01,42\n"))
    nan_image, inf_image = _texture(2), _texture(2)
    nan_image[5, 5] = np.nan
    inf_image[6, 6] = np.inf
    points = root / "points.csv"
    points.write_text("i,j\n10,10\n20,30\n40,50\n")
    bad = {
        "truncated": truncated,
        "text": text,
        "4d": _nifti(root / "4d.nii.gz", np.random.default_rng(3).random((*SHAPE, 3, 2)).astype(np.float32)),
        "3d": _nifti(root / "3d.nii.gz", np.random.default_rng(3).random((*SHAPE, 8)).astype(np.float32)),
        "nan": _nifti(root / "nan.nii.gz", nan_image),
        "inf": _nifti(root / "inf.nii.gz", inf_image),
        "constant": _nifti(root / "constant.nii.gz", np.full(SHAPE, 0.5, np.float32)),
        "float_labels": _nifti(root / "float_labels.nii.gz", _labels().astype(np.float32) * 0.5),
        "labels_other_grid": _nifti(root / "labels_other_grid.nii.gz", _labels(), np.diag([2.0, 1.0, 1.0, 1.0])),
        "empty_labels": _nifti(root / "empty_labels.nii.gz", np.zeros(SHAPE, np.int32)),
        "points": points,
        "points_two": _text(root / "points_two.csv", "i,j\n10,10\n20,30\n"),
        "points_malformed": _text(root / "points_malformed.txt", "index\n3\n10 10\n20 x\n40 50\n"),
        "points_count": _text(root / "points_count.txt", "index\n4\n10 10\n20 30\n40 50\n"),
        "points_outside": _text(root / "points_outside.csv", "i,j\n10,10\n20,300\n40,50\n"),
        "file_as_dir": _text(root / "plain_file", "not a folder"),
    }
    reference = Image(_texture(0), np.eye(4))
    save_displacement(np.zeros((2, *SHAPE), np.float32), reference, root / "displacement.nii.gz")
    save_displacement(
        np.zeros((2, 32, 36), np.float32), Image(np.zeros((32, 36), np.float32), np.eye(4)), root / "small_disp.nii.gz"
    )
    return {**good, **bad, "displacement": root / "displacement.nii.gz", "small_disp": root / "small_disp.nii.gz"}


def _text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[dict[str, Path], Path], list[str]]
    message: str


def register(f: dict[str, Path], out: Path, *, fixed: str = "fixed", moving: str = "moving",
             fixed_labels: str | None = None, moving_labels: str | None = None,
             landmarks: tuple[str, str] | None = None, params: tuple[str, ...] = (), method: str = "nodeo") -> list[str]:
    args = ["register", "--method", method, "--fixed", str(f[fixed]), "--moving", str(f[moving]), "--out", str(out)]
    if fixed_labels:
        args += ["--fixed-labels", str(f[fixed_labels])]
    if moving_labels:
        args += ["--moving-labels", str(f[moving_labels])]
    if landmarks:
        args += ["--fixed-landmarks", str(f[landmarks[0]]), "--moving-landmarks", str(f[landmarks[1]])]
    for p in params:
        args += ["--param", p]
    return args


def evaluate(f: dict[str, Path], out: Path, *, fixed_labels: str = "fixed_labels", warped: str = "moving_labels",
             displacement: str = "displacement", labels: str | None = None) -> list[str]:
    args = ["evaluate", "--fixed-labels", str(f[fixed_labels]), "--warped-labels", str(f[warped]),
            "--displacement", str(f[displacement]), "--out", str(out / "metrics.json")]
    return args + (["--labels", labels] if labels else [])


CASES = [
    Case("missing file", lambda f, o: register(f, o, moving="fixed") + ["--moving", str(o.parent / "absent.nii.gz")], "absent.nii.gz"),
    Case("truncated nii.gz", lambda f, o: register(f, o, moving="truncated"), "truncated.nii.gz"),
    Case("not an image", lambda f, o: register(f, o, moving="text"), "text.nii.gz"),
    Case("4D image", lambda f, o: register(f, o, moving="4d"), "4d.nii.gz"),
    Case("2D/3D mix", lambda f, o: register(f, o, moving="3d"), "3d.nii.gz"),
    Case("NaN voxels", lambda f, o: register(f, o, moving="nan"), "nan.nii.gz"),
    Case("Inf voxels", lambda f, o: register(f, o, moving="inf"), "inf.nii.gz"),
    Case("constant image", lambda f, o: register(f, o, moving="constant"), "constant.nii.gz"),
    Case("non-integer labels", lambda f, o: register(f, o, fixed_labels="fixed_labels", moving_labels="float_labels"), "float_labels.nii.gz"),
    Case("labels on another grid", lambda f, o: register(f, o, fixed_labels="labels_other_grid", moving_labels="moving_labels"), "labels_other_grid.nii.gz"),
    Case("labels of one image only", lambda f, o: register(f, o, fixed_labels="fixed_labels"), "--moving-labels"),
    Case("landmark counts differ", lambda f, o: register(f, o, landmarks=("points", "points_two")), "points_two.csv"),
    Case("malformed landmark line", lambda f, o: register(f, o, landmarks=("points", "points_malformed")), "points_malformed.txt"),
    Case("landmark count header wrong", lambda f, o: register(f, o, landmarks=("points", "points_count")), "points_count.txt"),
    Case("landmark outside the image", lambda f, o: register(f, o, landmarks=("points", "points_outside")), "points_outside.csv"),
    Case("unknown method", lambda f, o: register(f, o, method="ants-syn"), "unknown method 'ants-syn'"),
    Case("unknown parameter", lambda f, o: register(f, o, params=("learning_rate=0.1",)), "unknown parameter 'learning_rate'"),
    Case("parameter of the wrong type", lambda f, o: register(f, o, params=("iterations=many",)), "parameter 'iterations'"),
    Case("negative lr", lambda f, o: register(f, o, params=("lr=-0.001",)), "parameter 'lr'"),
    Case("zero iterations", lambda f, o: register(f, o, params=("iterations=0",)), "parameter 'iterations'"),
    Case("empty label map", lambda f, o: evaluate(f, o, fixed_labels="empty_labels", warped="empty_labels"), "empty_labels.nii.gz"),
    Case("requested labels absent", lambda f, o: evaluate(f, o, labels="7,8"), "7"),
    Case("bad label list", lambda f, o: evaluate(f, o, labels="2,x"), "x"),
    Case("displacement on another grid", lambda f, o: evaluate(f, o, displacement="small_disp"), "small_disp.nii.gz"),
    Case("output folder under a file", lambda f, o: register(f, o.parent / "x", params=("iterations=1",))[:-2]
         + ["--out", str(f["file_as_dir"] / "out"), "--param", "iterations=1"], "plain_file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_and_no_output(
    case: Case, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    status = main(case.args(files, out))
    err = capsys.readouterr().err.strip()
    assert status != 0
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert case.message in err, err
    assert not out.exists() or not any(out.iterdir())


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_disk_full_during_a_write_leaves_no_partial_output(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "registration_core", *register(files, out, params=("iterations=2",))],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))
