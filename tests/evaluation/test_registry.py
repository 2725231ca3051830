"""Tests of the metric registry, the Jacobian conventions of Learn2Reg and NODEO, and the label-set presets."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage

from registration_core.evaluation import registry
from registration_core.evaluation.aggregate import KNOWN_SCALAR_METRICS
from registration_core.evaluation.evaluate import parse_label_spec
from registration_core.evaluation.labelsets import LABEL_GROUPS, LABEL_SETS, merge_labels, structure_name
from registration_core.evaluation.metrics import jacobian_conventions, jacobian_stats

from support.paths import REPO_ROOT, SHARED_DATA

SCHEMA = REPO_ROOT / "registration_core" / "study" / "config.schema.yaml"
EVAL_LABELS = SHARED_DATA / "aligned-brains" / "eval-labels.txt"


def test_schema_anova_responses_equal_the_registry() -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    enum = schema["properties"]["anova"]["properties"]["responses"]["items"]["enum"]
    assert tuple(enum) == registry.anova_responses()
    assert set(schema["properties"]["anova"]["properties"]["responses"]["default"]) <= set(enum)


def test_registry_is_consistent() -> None:
    names = [m.name for m in registry.METRICS]
    assert len(names) == len(set(names))
    assert all(set(m.inputs) <= set(registry.INPUTS) and m.convention for m in registry.METRICS)
    assert set(KNOWN_SCALAR_METRICS) == set(registry.pair_metric_names())
    assert registry.metric("dice_mean").robust_column == "dice_mean_q30"
    assert registry.metric("hd95_mean").robust_column == "hd95_mean_q70"
    assert all(registry.metric(r).higher_is_better is not None for r in registry.anova_responses())


def literal_sdlogj_l2r(disp: np.ndarray) -> float:
    """Learn2Reg's recipe in 3D: correlate [-0.5, 0, 0.5] per axis (zero outside), + I, crop 2, det,
    std(log(clip(det + 3, 1e-9, 1e9)))."""
    kernels = [np.array([-0.5, 0, 0.5]).reshape(shape) for shape in ((3, 1, 1), (1, 3, 1), (1, 1, 3))]
    grad = np.stack([np.stack([ndimage.correlate(disp[c], k, mode="constant", cval=0.0) for c in range(3)]) for k in kernels])
    jac = grad + np.eye(3).reshape(3, 3, 1, 1, 1)
    jac = jac[:, :, 2:-2, 2:-2, 2:-2]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return float(np.log(np.clip(det + 3, 1e-9, 1e9)).std())


def test_sdlogj_l2r_of_a_known_jacobian() -> None:
    """u(x) = diag(a) x - c: det J = prod(1 + a) everywhere -> std 0; a field whose det J is
    1 + 0.2 sin along axis 0 has the std of log(4 + 0.2 sin) over the cropped grid."""
    shape = (12, 10, 9)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"))
    affine = np.stack([0.1 * grid[0], -0.2 * grid[1], 0.05 * grid[2]]) - 1.0
    assert jacobian_conventions(affine)["sdlogj_l2r"] == pytest.approx(0.0, abs=1e-7)
    k = 2 * np.pi / 12
    wave = np.zeros((3, *shape))
    wave[0] = 0.2 / k * np.sin(k * grid[0])  # central difference of sin: sin(k) / k * cos -> det J = 1 + 0.2 sin(k)/k cos
    det = 1 + 0.2 * np.sin(k) / k * np.cos(k * grid[0])
    expected = float(np.log(det[2:-2, 2:-2, 2:-2] + 3).std())
    result = jacobian_conventions(wave)["sdlogj_l2r"]
    assert result == pytest.approx(expected, rel=1e-5)
    assert result == pytest.approx(literal_sdlogj_l2r(wave), rel=1e-5)
    rng = np.random.default_rng(0)
    rough = ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0, 1, 1, 1)) * 3
    assert jacobian_conventions(rough)["sdlogj_l2r"] == pytest.approx(literal_sdlogj_l2r(rough), rel=1e-5)
    assert jacobian_stats(rough)["neg_jac_ratio"] > 0  # the clip matters: some det J + 3 stay positive, folds exist


def test_nodeo_conventions_count_forward_difference_folds() -> None:
    """A 1D fold along axis 0 of a 2D field: forward differences see it on one row of the n - 1."""
    disp = np.zeros((2, 6, 5))
    disp[0, 3:] = -1.5  # u jumps by -1.5 between rows 2 and 3: forward det = 1 - 1.5 = -0.5 on row 2
    result = jacobian_conventions(disp)
    assert result["neg_jac_pct_nodeo"] == pytest.approx(100 * 4 / 20)  # (n-1) x (m-1) = 5 x 4 voxels, row 2 folds
    assert result["neg_jac_sum_nodeo"] == pytest.approx(4 * 0.5)
    assert math.isnan(jacobian_conventions(np.zeros((2, 4, 4)))["sdlogj_l2r"])  # nothing left after the crop


def test_label_presets() -> None:
    assert len(LABEL_SETS["oasis-28"]) == 28 and len(LABEL_SETS["voxelmorph-30"]) == 30
    assert parse_label_spec("oasis-28", None) == list(LABEL_SETS["oasis-28"])
    assert parse_label_spec("2,3", None) == [2, 3]
    assert structure_name(17) == "Left-Hippocampus" and structure_name(2035) == "ctx-rh-insula"
    assert structure_name(9999) == "label 9999"


def test_mindboggle_preset_maps_the_paper_structures() -> None:
    """26 of the paper's 28 (no cerebral white matter in Mindboggle), cortex from the DKT parcels."""
    groups = LABEL_GROUPS["mindboggle-oasis-28"]
    assert set(groups) == set(LABEL_SETS["oasis-28"]) - {2, 41} and LABEL_SETS["mindboggle-oasis-28"] == tuple(groups)
    assert groups[3] == tuple(range(1000, 1036)) and groups[47] == (45,) and groups[17] == (17,)


@pytest.mark.realdata
def test_mindboggle_preset_finds_every_structure_in_oasis_trt() -> None:
    path = SHARED_DATA / "oasis-trt" / "sub-01" / "labels.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    merged = merge_labels(np.asarray(nib.load(path).dataobj).astype(np.int32), LABEL_GROUPS["mindboggle-oasis-28"])
    assert set(np.unique(merged).tolist()) - {0} == set(LABEL_GROUPS["mindboggle-oasis-28"])


@pytest.mark.realdata
def test_voxelmorph_30_is_the_shared_eval_labels() -> None:
    if not EVAL_LABELS.is_file():
        pytest.skip(f"{EVAL_LABELS} is absent")
    assert tuple(int(t) for t in EVAL_LABELS.read_text().split()) == LABEL_SETS["voxelmorph-30"]
