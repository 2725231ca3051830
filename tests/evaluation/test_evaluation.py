"""Tests of registration_core.evaluation.evaluate: metrics.json from tiny NIfTI files and real brains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from registration_core.core import io
from registration_core.errors import InputError
from registration_core.evaluation.evaluate import evaluate_pair, parse_label_spec
from registration_core.evaluation.labelsets import merge_labels

SHAPE = (10, 8, 6)
AFFINE = np.diag([2.0, 1.0, 3.0, 1.0])  # spacing (2, 1, 3) mm in array axis order


def _strict_json(path: Path) -> dict:
    """Parse JSON, failing on NaN / Infinity tokens."""

    def reject(token: str) -> None:
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def _labels(cubes: dict[int, tuple[int, int, int]], size: int = 2) -> np.ndarray:
    """Label map of SHAPE with a cube of side ``size`` per label at the given start."""
    data = np.zeros(SHAPE, dtype=np.int32)
    for label, start in cubes.items():
        data[tuple(slice(s, s + size) for s in start)] = label
    return data


def _save_labels(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    io.save_image(io.Image(data=data, affine=affine), path)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> dict[str, Path]:
    """Fixed, warped and moving label maps and a zero displacement on one (2, 1, 3) mm grid.

    Label 1: 2x2x2 cubes offset by 1 voxel along axis 0 in the warped map (Dice 0.5) and by
    2 voxels in the moving map (Dice 0); label 2: identical cubes (Dice 1, HD95 0);
    label 3: in the fixed map only (Dice 0, HD95 undefined).
    """
    fixed = _labels({1: (1, 1, 1), 2: (5, 5, 2), 3: (8, 1, 4)})
    warped = _labels({1: (2, 1, 1), 2: (5, 5, 2)})
    moving = _labels({1: (3, 1, 1), 2: (5, 5, 2)})
    reference = io.Image(data=fixed, affine=AFFINE)
    displacement = tmp_path / "displacement.nii.gz"
    io.save_displacement(np.zeros((3, *SHAPE), dtype=np.float32), reference, displacement)
    return {
        "fixed_labels": _save_labels(fixed, tmp_path / "fixed_labels.nii.gz"),
        "warped_labels": _save_labels(warped, tmp_path / "warped_labels.nii.gz"),
        "moving_labels": _save_labels(moving, tmp_path / "moving_labels.nii.gz"),
        "displacement": displacement,
    }


def test_evaluate_pair_writes_the_contract_keys(pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval" / "metrics.json"
    result = evaluate_pair(
        pair["fixed_labels"], pair["warped_labels"], pair["displacement"], [1, 2, 3, 9], out,
        moving_labels=pair["moving_labels"],
    )
    written = _strict_json(out)
    assert written["dice_per_label"] == {"1": pytest.approx(0.5), "2": 1.0, "3": 0.0}
    assert written["dice_mean"] == pytest.approx(0.5)
    # label 1: 2x2x2 cubes offset by one voxel of 2 mm along axis 0 -> HD95 = 2 mm
    assert written["hd95_voxel_per_label"] == {"1": pytest.approx(2.0), "2": 0.0, "3": None}
    assert written["hd95_undefined"] == {"3": "present in fixed labels only"}
    assert written["hd95_voxel_mean"] == pytest.approx(1.0)
    assert written["n_labels"] == 3
    assert written["labels_skipped"] == [9]
    assert written["dice_mean_before"] == pytest.approx((0.0 + 1.0 + 0.0) / 3)
    assert (written["neg_jac_ratio"], written["neg_jac_sum"], written["sdlogj"]) == (0.0, 0.0, 0.0)
    assert written["detj_min"] == written["detj_max"] == 1.0
    assert "tre_mean_mm" not in written
    assert math.isnan(result["hd95_voxel_per_label"]["3"])
    assert result["dice_per_label"] == written["dice_per_label"]


def test_evaluate_pair_defaults_to_the_fixed_labels(pair: dict[str, Path], tmp_path: Path) -> None:
    result = evaluate_pair(
        pair["fixed_labels"], pair["warped_labels"], pair["displacement"], None, tmp_path / "m.json"
    )
    assert sorted(result["dice_per_label"]) == ["1", "2", "3"]
    assert result["labels_skipped"] == []
    assert "dice_mean_before" not in result


def test_evaluate_pair_scores_merged_label_groups(pair: dict[str, Path], tmp_path: Path) -> None:
    """Group 10 = labels 1 and 3 (16 fixed voxels, 8 warped, 4 shared): Dice 2*4/24 = 1/3, not the
    0.25 mean of its parts; group 2 = label 2 (identical cubes)."""
    result = evaluate_pair(
        pair["fixed_labels"], pair["warped_labels"], pair["displacement"], None, tmp_path / "m.json",
        moving_labels=pair["moving_labels"], label_groups={2: (2,), 10: (1, 3)},
    )
    assert result["dice_per_label"] == {"2": 1.0, "10": pytest.approx(1 / 3)}
    assert result["dice_mean_before"] == pytest.approx(0.5)  # group 10 of the moving map misses by 2 voxels
    assert result["hd95_undefined"] == {}
    with pytest.raises(InputError, match="score only the groups' labels"):
        evaluate_pair(pair["fixed_labels"], pair["warped_labels"], pair["displacement"], [1, 2], tmp_path / "n.json",
                      label_groups={2: (2,), 10: (1, 3)})


def test_merge_labels_keeps_only_the_groups() -> None:
    data = np.array([[0, 1, 2], [3, 1002, 2035]], dtype=np.int32)
    merged = merge_labels(data, {3: range(1000, 1036), 42: range(2000, 2036), 5: (1,)})
    assert merged.tolist() == [[0, 5, 0], [0, 3, 42]] and merged.dtype == data.dtype
    with pytest.raises(ValueError, match="two groups"):
        merge_labels(data, {1: (1, 2), 2: (2,)})


def test_evaluate_pair_folding_field_and_landmarks(pair: dict[str, Path], tmp_path: Path) -> None:
    # u_0 jumps by -4 voxels between rows 3 and 4: detJ = -1 on rows 3 and 4 (2 * 8 * 6 voxels).
    reference = io.load_image(pair["fixed_labels"], kind="labels")
    disp_vox = np.zeros((3, *SHAPE), dtype=np.float32)
    disp_vox[0, 4:] = -4.0
    displacement = tmp_path / "folding.nii.gz"
    io.save_displacement(disp_vox, reference, displacement)
    # Landmarks: p = (6, 2, 1) maps to (2, 2, 1); q is off by one voxel along axis 2 (3 mm).
    fixed_points = np.array([[6.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    moving_points = np.array([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    io.save_landmarks(fixed_points, reference, tmp_path / "fixed_points.csv")
    io.save_landmarks(moving_points, reference, tmp_path / "moving_points.csv")
    result = evaluate_pair(
        pair["fixed_labels"], pair["warped_labels"], displacement, [1, 2], tmp_path / "m.json",
        fixed_landmarks=tmp_path / "fixed_points.csv", moving_landmarks=tmp_path / "moving_points.csv",
    )
    assert result["neg_jac_ratio"] == pytest.approx(2 * 8 * 6 / np.prod(SHAPE))
    assert result["neg_jac_sum"] == pytest.approx(2 * 8 * 6)
    assert result["detj_min"] == pytest.approx(-1.0)
    assert result["tre_mean_mm"] == pytest.approx((3.0 + 0.0) / 2)
    assert result["tre_std_mm"] == pytest.approx(1.5)
    # before: (6,2,1) vs (2,2,2) -> (8 mm, 0, 3 mm); the second pair coincides
    assert result["tre_before_mm"] == pytest.approx(math.hypot(8.0, 3.0) / 2)
    assert result["n_landmarks"] == 2
    assert _strict_json(tmp_path / "m.json")["tre_mean_mm"] == pytest.approx(1.5)


def test_evaluate_pair_in_2d(tmp_path: Path) -> None:
    affine = np.diag([0.5, 2.0, 1.0, 1.0])
    fixed = np.zeros((12, 10), dtype=np.int32)
    fixed[2:6, 2:6] = 4
    warped = np.roll(fixed, 1, axis=1)  # 4x4 square offset by one voxel of 2 mm along axis 1
    reference = io.Image(data=fixed, affine=affine)
    io.save_displacement(np.zeros((2, 12, 10), dtype=np.float32), reference, tmp_path / "d.nii.gz")
    result = evaluate_pair(
        _save_labels(fixed, tmp_path / "f.nii.gz", affine), _save_labels(warped, tmp_path / "w.nii.gz", affine),
        tmp_path / "d.nii.gz", [4], tmp_path / "m.json",
    )
    assert result["dice_per_label"] == {"4": pytest.approx(0.75)}
    assert result["hd95_voxel_per_label"] == {"4": pytest.approx(2.0)}
    assert result["sdlogj"] == 0.0


@pytest.mark.parametrize(
    "shape, affine",
    [((10, 8, 7), AFFINE), (SHAPE, np.diag([2.0, 1.0, 2.0, 1.0]))],
    ids=["shape", "affine"],
)
def test_evaluate_pair_rejects_label_maps_on_another_grid(
    pair: dict[str, Path], tmp_path: Path, shape: tuple[int, ...], affine: np.ndarray
) -> None:
    other = _save_labels(np.ones(shape, dtype=np.int32), tmp_path / "other.nii.gz", affine)
    out = tmp_path / "m.json"
    for key in ("warped_labels", "moving_labels"):
        paths = {**pair, key: other}
        with pytest.raises(InputError, match=r"other\.nii\.gz.*fixed_labels\.nii\.gz"):
            evaluate_pair(
                paths["fixed_labels"], paths["warped_labels"], paths["displacement"], [1], out,
                moving_labels=paths["moving_labels"],
            )
    assert not out.exists()


def test_evaluate_pair_rejects_a_displacement_on_another_grid(pair: dict[str, Path], tmp_path: Path) -> None:
    reference = io.Image(data=np.zeros((10, 8, 7), dtype=np.int32), affine=AFFINE)
    io.save_displacement(np.zeros((3, 10, 8, 7), dtype=np.float32), reference, tmp_path / "d.nii.gz")
    with pytest.raises(InputError, match=r"d\.nii\.gz"):
        evaluate_pair(pair["fixed_labels"], pair["warped_labels"], tmp_path / "d.nii.gz", [1], tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_evaluate_pair_rejects_labels_absent_from_both_maps(pair: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="none of the requested labels"):
        evaluate_pair(pair["fixed_labels"], pair["warped_labels"], pair["displacement"], [7, 8], tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_evaluate_pair_rejects_an_empty_fixed_label_map(pair: dict[str, Path], tmp_path: Path) -> None:
    empty = _save_labels(np.zeros(SHAPE, dtype=np.int32), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="no nonzero label"):
        evaluate_pair(empty, pair["warped_labels"], pair["displacement"], None, tmp_path / "m.json")


def test_evaluate_pair_rejects_incomplete_or_mismatched_landmarks(pair: dict[str, Path], tmp_path: Path) -> None:
    reference = io.load_image(pair["fixed_labels"], kind="labels")
    io.save_landmarks(np.array([[1.0, 1.0, 1.0]]), reference, tmp_path / "one.csv")
    io.save_landmarks(np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), reference, tmp_path / "two.csv")
    args = (pair["fixed_labels"], pair["warped_labels"], pair["displacement"], [1], tmp_path / "m.json")
    with pytest.raises(InputError, match="both fixed_landmarks and moving_landmarks"):
        evaluate_pair(*args, fixed_landmarks=tmp_path / "one.csv")
    with pytest.raises(InputError, match=r"one\.csv holds 1 landmarks but .*two\.csv holds 2"):
        evaluate_pair(*args, fixed_landmarks=tmp_path / "one.csv", moving_landmarks=tmp_path / "two.csv")
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- label specification


@pytest.mark.parametrize(
    "text, expected",
    [("2,3,4", [2, 3, 4]), (" 2, 3  4 ", [2, 3, 4]), ("17", [17]), (None, None)],
)
def test_parse_label_spec_text(text: str | None, expected: list[int] | None) -> None:
    assert parse_label_spec(text, None) == expected


@pytest.mark.parametrize("content", ["2\n3\n4\n", "2 3\t4", "2\n\n3 4\n"])
def test_parse_label_spec_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(content)
    assert parse_label_spec(None, path) == [2, 3, 4]


@pytest.mark.parametrize(
    "text, message",
    [("", "no labels"), ("2,a", "'a' is not a positive integer"), ("0,2", "'0'"), ("-3", "'-3'"),
     ("2.5", "'2.5'"), ("2,3,2", r"more than once: \[2\]")],
)
def test_parse_label_spec_rejects_bad_text(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_label_spec(text, None)


def test_parse_label_spec_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not both"):
        parse_label_spec("2", tmp_path / "labels.txt")
    with pytest.raises(InputError, match="labels file not found"):
        parse_label_spec(None, tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"empty\.txt: no labels"):
        parse_label_spec(None, empty)


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.realdata
def test_evaluate_pair_on_two_aligned_brains(shared_data: Path, tmp_path: Path) -> None:
    """Subject B's aseg against subject A's (affinely aligned, no deformation): partial overlap."""
    brains = shared_data / "aligned-brains"
    fixed_labels = brains / "subject-a" / "aseg.nii.gz"
    reference = io.load_image(fixed_labels, kind="labels")
    displacement = tmp_path / "displacement.nii.gz"
    io.save_displacement(np.zeros((3, *reference.shape), dtype=np.float32), reference, displacement)
    labels = parse_label_spec(None, brains / "eval-labels.txt")
    assert labels is not None and len(labels) == 30
    result = evaluate_pair(
        fixed_labels, brains / "subject-b" / "aseg.nii.gz", displacement, labels, tmp_path / "metrics.json"
    )
    assert result["n_labels"] + len(result["labels_skipped"]) == 30
    assert result["n_labels"] >= 25
    assert 0.3 < result["dice_mean"] < 1.0
    assert all(0.0 <= value <= 1.0 for value in result["dice_per_label"].values())
    assert 0.0 < result["hd95_mean"] < 30.0
    assert (result["neg_jac_ratio"], result["sdlogj"]) == (0.0, 0.0)
    assert _strict_json(tmp_path / "metrics.json")["n_labels"] == result["n_labels"]


# --------------------------------------------------------------------------- images and known truth


@pytest.fixture
def truth_pair(tmp_path: Path) -> dict[str, Path]:
    """A 2D pair without labels: images, a true field (1 voxel along axis 0), an estimate and a mask."""
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    grid = np.arange(48, dtype=np.float32).reshape(8, 6)
    reference = io.Image(grid, affine)
    truth = np.zeros((2, 8, 6), np.float32)
    truth[0] = 1.0
    estimate = truth.copy()
    estimate[1, 2, 2] = 3.0  # 3 mm wrong at voxel (2, 2)
    mask = np.zeros((8, 6), np.uint8)
    mask[2, 1:3] = 1
    files = {
        "fixed_image": (grid, "fixed.nii.gz"),
        "moving_image": (47 - grid, "moving.nii.gz"),
        "warped_image": (2 * grid + 1, "warped.nii.gz"),
        "mask": (mask, "mask.nii.gz"),
    }
    paths = {}
    for key, (data, name) in files.items():
        io.save_image(reference.with_data(data), tmp_path / name)
        paths[key] = tmp_path / name
    for key, field in (("truth_displacement", truth), ("displacement", estimate)):
        io.save_displacement(field, reference, tmp_path / f"{key}.nii.gz")
        paths[key] = tmp_path / f"{key}.nii.gz"
    return paths


def test_evaluate_without_labels_writes_similarity_and_truth_keys_only(truth_pair, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    evaluate_pair(None, None, labels=None, out=out, **truth_pair)
    written = _strict_json(out)
    assert not any(key.startswith(("dice", "hd95", "n_labels", "labels_")) for key in written)
    assert written["ncc_after"] == pytest.approx(1.0) and written["ncc_before"] == pytest.approx(-1.0)
    grid = np.arange(48.0).reshape(8, 6)
    assert written["mse_after"] == pytest.approx(np.mean((grid + 1) ** 2), rel=1e-6)
    assert written["mse_before"] == pytest.approx(np.mean((2 * grid - 47) ** 2), rel=1e-6)
    # inside the mask: voxel (2, 1) exact, voxel (2, 2) 3 mm off; the truth moves 2 mm everywhere
    assert written["tre_truth_mm"] == pytest.approx(1.5, abs=1e-5)
    assert written["tre_truth_max_mm"] == pytest.approx(3.0, abs=1e-5)
    assert written["tre_truth_before_mm"] == pytest.approx(2.0, abs=1e-5)
    assert written["n_truth_voxels"] == 2
    # the spike folds voxel (2, 3): central difference of u_1 along axis 1 is (0 - 3) / 2, det J = -0.5
    assert written["neg_jac_ratio"] == pytest.approx(1 / 48)


def test_evaluate_truth_over_the_whole_grid_without_a_mask(truth_pair, tmp_path: Path) -> None:
    paths = {k: truth_pair[k] for k in ("displacement", "truth_displacement", "fixed_image")}
    result = evaluate_pair(None, None, labels=None, out=tmp_path / "m.json", **paths)
    assert result["tre_truth_mm"] == pytest.approx(3.0 / 48, abs=1e-5) and result["n_truth_voxels"] == 48
    assert "ncc_after" not in result


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        (("fixed_image", "moving_image", "warped_image", "mask"), {}, "fixed labels, a fixed image or a mask"),
        (("fixed_image",), {}, "need fixed_image"),
        (("truth_displacement",), {}, "mask: it bounds tre_truth_mm"),
        ((), {"fixed_labels": "fixed_image"}, "both fixed_labels and warped_labels"),
        ((), {"labels": [1]}, "need fixed_labels and warped_labels"),
    ],
)
def test_evaluate_rejects_inputs_missing_their_partner(truth_pair, tmp_path: Path, drop, add, message) -> None:
    kwargs = {key: value for key, value in truth_pair.items() if key not in drop}
    fixed_labels = truth_pair[add["fixed_labels"]] if "fixed_labels" in add else None
    out = tmp_path / "m.json"
    with pytest.raises(InputError, match=message):
        evaluate_pair(fixed_labels, None, labels=add.get("labels"), out=out, **kwargs)
    assert not out.exists()


def test_evaluate_rejects_an_image_on_another_grid(truth_pair, tmp_path: Path) -> None:
    small = np.arange(40, dtype=np.float32).reshape(8, 5)
    io.save_image(io.Image(small, np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match="is not on the grid"):
        evaluate_pair(
            None, None, truth_pair["displacement"], None, tmp_path / "m.json",
            fixed_image=truth_pair["fixed_image"], warped_image=tmp_path / "small.nii.gz",
        )
