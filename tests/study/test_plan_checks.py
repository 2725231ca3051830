"""Plan-time checks (registration_core.study.checks, .headers): grids predicted from headers equal
the preprocessing steps' real outputs, and every problem the config and headers show is one line
naming the key and the file, before any job (also through a Snakemake dry run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from registration_core.core.io import Image, load_image, save_image
from registration_core.errors import InputError
from registration_core.preprocessing.steps import run_steps, validate_steps
from registration_core.study.headers import Grid, predict_grid, read_grid
from registration_core.study.plan import Study

REPO_ROOT = Path(__file__).resolve().parents[2]
OBLIQUE = np.array([[0.0, -1.5, 0.0, 10.0], [-2.0, 0.0, 0.0, 20.0], [0.0, 0.0, 2.5, -5.0], [0.0, 0.0, 0.0, 1.0]])
"""A 3D affine with swapped, flipped axes and anisotropic voxels (1.5 x 2 x 2.5 mm)."""


def volume(shape: tuple[int, ...], affine: np.ndarray = OBLIQUE, seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    data = rng.random(shape).astype(np.float32)
    data[tuple(slice(n // 4, 3 * n // 4) for n in shape)] += 2.0  # a bright block: crop_pad's foreground
    return Image(data, affine)


# ----------------------------------------------------------------------------- headers and steps


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_header_grid_is_the_loaded_grid(tmp_path: Path, suffix: str) -> None:
    for image in (volume((12, 10, 8)), Image(np.ones((14, 9), np.float32) * np.arange(9), np.diag([0.7, 1.3, 1.0, 1.0]))):
        path = tmp_path / f"image{image.ndim}{suffix}"
        save_image(image, path)
        loaded, grid = load_image(path), read_grid(path)
        assert grid is not None and grid.shape == loaded.shape
        assert grid.difference(Grid(loaded.shape, loaded.affine)) is None
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert read_grid(tmp_path / "empty.nii.gz") is None


STEP_CASES = [
    [{"step": "reorient"}],
    [{"step": "slice", "axis": 1, "index": 0.3}],
    [{"step": "reorient"}, {"step": "slice", "axis": 2, "index": "middle"}, {"step": "resample", "spacing": 1.7}],
    [{"step": "resample", "spacing": [3.0, 1.0, 2.0]}],
    [{"step": "resample", "shape": [9, 7, 11]}],
    [{"step": "resample", "scale": 0.6}],
    [{"step": "clip", "percentiles": [1, 99]}, {"step": "normalize", "mode": "zscore"}],
    [{"step": "reorient"}, {"step": "crop_pad", "shape": [8, 20, 6]}],
]


@pytest.mark.parametrize("steps", STEP_CASES, ids=lambda steps: "+".join(step["step"] for step in steps))
def test_predicted_grid_equals_the_steps_output(steps: list[dict]) -> None:
    image = volume((16, 12, 10))
    prepared, _ = run_steps(image, None, steps)
    resolved = [{**settings, "step": step["step"]} for settings, step in zip(validate_steps(steps), steps)]
    grid = predict_grid(Grid(image.shape, image.affine), resolved, lambda position: None)
    assert grid is not None and grid.shape == prepared.shape
    assert grid.difference(Grid(prepared.shape, prepared.affine)) is None
    assert grid.origin_known == (steps[-1]["step"] != "crop_pad")


def test_unknown_geometry_is_none() -> None:
    grid = Grid((16, 12, 10), OBLIQUE)
    assert predict_grid(grid, [{"step": "affine_align", "reference": "x"}], lambda position: None) is None
    assert predict_grid(grid, [{"step": "slice", "axis": 2, "index": 99}], lambda position: None) is None  # fails: the job says why
    assert predict_grid(None, [], lambda position: None) is None


# ----------------------------------------------------------------------------- study problems


def folder(root: Path, shapes: dict[str, tuple[int, ...]], labels: dict[str, list[int]] | None = None) -> dict:
    """A folder dataset of 2D images (2 mm) with the given shapes and, optionally, label maps holding the given values."""
    for i, (subject, shape) in enumerate(shapes.items()):
        (root / subject).mkdir(parents=True)
        save_image(volume(shape, np.diag([2.0, 2.0, 1.0, 1.0]), seed=i), root / subject / "image.nii.gz")
        if labels is not None:
            values = np.zeros(shape, np.int32)
            for k, value in enumerate(labels[subject]):
                values[k * 2:(k + 1) * 2, :] = value
            save_image(Image(values, np.diag([2.0, 2.0, 1.0, 1.0])), root / subject / "labels.nii.gz")
    spec = {"adapter": "folder", "path": str(root), "image": "{subject}/image.nii.gz"}
    if labels is not None:
        spec["labels"] = "{subject}/labels.nii.gz"
    return {
        "study": "checks", "datasets": {"data": spec}, "pairs": {"atlases": ["a"], "moving": "rest"},
        "methods": {"demons": {"params": {"iterations": [5], "shrink_factors": [1], "smoothing_sigmas": [0.0]}}},
        "anova": {"factors": []},
    }


def problems(config: dict) -> list[str]:
    with pytest.raises(InputError) as info:
        Study(config)
    return str(info.value).splitlines()


def test_pairs_on_different_grids_without_align(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (32, 32), "b": (32, 32), "c": (32, 36)})
    [line] = problems(config)
    assert line.startswith("config key datasets.data: pairs on different grids after preprocessing, c (")
    assert f"{tmp_path}/data/c/image.nii.gz) onto a: shape (32, 32) vs (32, 36)" in line and "datasets.data.align" in line
    resampled = {**config["datasets"]["data"], "preprocess": [{"step": "resample", "shape": [32, 32]}]}
    [line] = problems({**config, "datasets": {"data": resampled}})  # the extent is kept: 2.25 mm voxels
    assert "onto a: spacing [2.0, 2.0] vs [2.0, 2.25] mm" in line
    cropped = {**config["datasets"]["data"], "preprocess": [{"step": "crop_pad", "shape": [32, 32]}]}
    Study({**config, "datasets": {"data": cropped}})  # one grid (origins decided by the voxels): no problem
    aligned = {**config["datasets"]["data"], "align": {"transform": "rigid"}}
    Study({**config, "datasets": {"data": aligned}})  # pre-aligned onto the atlas grid: no problem


def test_method_size_limits_from_headers(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (12, 40), "b": (12, 40)})
    config["methods"] = {"nodeo": {"params": {"iterations": 1}}}
    [line] = problems(config)
    assert line.startswith("config key methods.nodeo: nodeo needs every image axis >= 16 voxels, got shape (12, 40)")
    assert line.endswith(f"subject a ({tmp_path}/data/a/image.nii.gz), b ({tmp_path}/data/b/image.nii.gz) after preprocessing")
    config = folder(tmp_path / "data2", {"a": (20, 40), "b": (20, 40)})
    config["methods"] = {"nodeo": {"params": {"iterations": 1}, "grid": {"ncc_window": [9, 41]}}}
    [line] = problems(config)
    assert "parameter 'ncc_window' = 41 exceeds 39 voxels" in line


def test_labels_absent_from_every_label_map(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (32, 32), "b": (32, 32)}, labels={"a": [1, 2], "b": [2, 3]})
    config["metrics"] = {"labels": [1, 3, 7, 9]}
    [line] = problems(config)
    assert line.startswith("config key metrics.labels: label value(s) 7, 9 are in none of the 2 label maps")
    config["metrics"] = {"labels": [1, 3]}
    Study(config)
    # a merging preset: a scored label is present when any value it merges is (cortex 3 <- 1000s)
    config = folder(tmp_path / "data3", {"a": (32, 32), "b": (32, 32)}, labels={"a": [1002, 4], "b": [2035, 4]})
    config["metrics"] = {"labels": "mindboggle-oasis-28"}
    [line] = problems(config)
    assert line.startswith("config key metrics.labels: label value(s) 7, 8, 10, ")
    assert " 3," not in line and " 4," not in line and " 42," not in line


def test_grid_values_equal_once_read_and_one_line_per_problem(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (32, 32), "b": (32, 36)})
    config["methods"] = {"nodeo": {"params": {"iterations": 1}, "grid": {"lr": [0.001, "1e-3"]}}}
    config["anova"] = {"factors": ["lr"], "responses": ["dice_mean"]}
    lines = problems(config)
    assert lines[0] == ("config key methods.nodeo.grid.lr: 0.001 and '1e-3' are one value (0.001) once read; "
                        "list each value once")
    assert lines[1] == "config key anova.responses: dice_mean needs labels, which no pair of the study has"
    assert lines[2].startswith("config key datasets.data: pairs on different grids") and len(lines) == 3


def test_a_dry_run_stops_before_any_job(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (32, 32), "b": (32, 36)})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    executable = Path(sys.executable).parent / "snakemake"
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "snakemake"]
    result = subprocess.run(
        [*command, "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
         str(tmp_path / "study.yaml"), "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "config key datasets.data: pairs on different grids after preprocessing, b (" in result.stdout
    assert not (tmp_path / "results").exists()


def test_itk_header_of_a_2d_file(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(9 * 14, dtype=np.float32).reshape(9, 14))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "plane.mha"))
    grid = read_grid(tmp_path / "plane.mha")
    assert grid is not None and grid.shape == (14, 9) and grid.difference(Grid((14, 9), load_image(tmp_path / "plane.mha").affine)) is None


def test_default_responses_are_those_the_pairs_give(tmp_path: Path) -> None:
    config = folder(tmp_path / "data", {"a": (32, 32), "b": (32, 32)})
    config["methods"]["demons"]["grid"] = {"field_sigma": [1.0, 2.0]}
    config["anova"] = {"factors": ["field_sigma"]}
    assert Study(config).config["anova"]["responses"] == ["neg_jac_ratio"]  # no Dice without labels
