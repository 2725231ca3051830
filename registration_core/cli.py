"""Command line: ``python -m registration_core <command> ...``; the workflow's rules call these.

Every command maps its arguments to one library call. Bad input ends with one line
``error: <message>`` on stderr and exit status 2; nothing is left in the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from registration_core.errors import InputError
from registration_core.failures import add_failure_options

Handler = Callable[[argparse.Namespace], None]


def _csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _register(args: argparse.Namespace) -> None:
    from registration_core.core.params import parse_assignments
    from registration_core.registration import run_registration

    run_registration(
        args.method, args.fixed, args.moving, args.out, parse_assignments(args.param),
        args.fixed_labels, args.moving_labels, args.fixed_landmarks, args.moving_landmarks,
    )


def _train(args: argparse.Namespace) -> None:
    from registration_core.core.params import parse_assignments
    from registration_core.methods.training import train_method

    train_method(
        args.method, args.images, args.out, parse_assignments(args.param),
        labels=args.labels, val_images=args.val_images, val_labels=args.val_labels,
    )


def _evaluate(args: argparse.Namespace) -> None:
    from registration_core.evaluation.evaluate import evaluate_pair, parse_label_spec
    from registration_core.evaluation.labelsets import groups
    from registration_core.failures import check_registration

    check_registration(args.displacement)
    if (args.fixed_landmarks is None) != (args.moving_landmarks is None):
        raise InputError("--fixed-landmarks and --moving-landmarks must be given together")
    evaluate_pair(
        args.fixed_labels, args.warped_labels, args.displacement,
        parse_label_spec(args.labels, args.labels_file), args.out,
        moving_labels=args.moving_labels, fixed_landmarks=args.fixed_landmarks,
        moving_landmarks=args.moving_landmarks, fixed_image=args.fixed_image, moving_image=args.moving_image,
        warped_image=args.warped_image, truth_displacement=args.truth_displacement, mask=args.mask,
        label_groups=groups(args.labels),
    )


def _synth_pair(args: argparse.Namespace) -> None:
    from registration_core.data.truth import synth_pair

    synth_pair(
        args.image, args.out_dir, mask=args.mask, labels=args.labels, motion=args.motion,
        max_disp_mm=args.max_disp_mm, noise_std=args.noise_std, seed=args.seed,
        n_landmarks=args.n_landmarks, min_distance_mm=args.min_distance_mm,
    )


def _read_steps(text: str) -> list[dict]:
    """Steps as inline JSON or a path to a JSON/YAML file holding the list."""
    from registration_core.core.yaml_io import load_yaml_file

    path = Path(text)
    if not text.lstrip().startswith("[") and path.exists():
        steps = load_yaml_file(path, "--steps file")
        where = f"--steps {path}"
    else:
        try:
            steps = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"--steps is neither a file nor a JSON list ({exc.msg})") from None
        where = "--steps"
    if not isinstance(steps, list):
        raise InputError(f"{where} must be a list of {{step: name, ...settings}}")
    return steps


def _prepare_and_write(args: argparse.Namespace, steps: list[dict], out_image: Path) -> None:
    """:func:`registration_core.preprocessing.steps.prepare_subject` on the files of ``args`` (image, labels,
    mask, landmarks, reference); writes the image to ``out_image`` and the others to
    ``args.out_<kind>``. Everything is computed before anything is written."""
    from registration_core.core.io import load_image, load_landmarks, save_image, save_landmarks
    from registration_core.preprocessing.steps import prepare_subject

    for given in ("labels", "mask", "landmarks"):
        if (getattr(args, given) is None) != (getattr(args, f"out_{given}") is None):
            raise InputError(f"--{given} and --out-{given} must be given together")
    raw = load_image(args.image, "image")
    prepared = prepare_subject(
        raw, steps, labels=load_image(args.labels, "labels") if args.labels else None,
        mask=load_image(args.mask, "labels") if args.mask else None,
        landmarks=load_landmarks(args.landmarks, raw) if args.landmarks else None,
        reference=load_image(args.reference, "image") if args.reference else None,
    )
    save_image(prepared.image, out_image)
    for output, result in ((args.out_labels, prepared.labels), (args.out_mask, prepared.mask)):
        if result is not None:
            save_image(result, output)
    if prepared.landmarks is not None:
        save_landmarks(prepared.landmarks, prepared.image, args.out_landmarks)


def _prepare(args: argparse.Namespace) -> None:
    """The steps on the image; labels and mask follow them (a mask as a second label map), landmarks
    are mapped exactly (not across a slice step); an affine_align step registers onto --reference."""
    _prepare_and_write(args, _read_steps(args.steps), args.out_image)


def _parse_settings(items: list[str] | None) -> dict:
    """``--set key=value`` items -> settings; values are read as YAML (numbers, lists, strings)."""
    from registration_core.core.yaml_io import load_yaml_text

    settings = {}
    for item in items or []:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise InputError(f"--set '{item}' is not of the form key=value")
        if key in settings:
            raise InputError(f"--set '{key}' given twice")
        settings[key] = load_yaml_text(value, f"--set {key}")
    return settings


def _preprocess(args: argparse.Namespace) -> None:
    """One step (the name with ``-`` or ``_``) and its ``--set`` settings on one subject's files;
    ``affine-align`` registers onto ``--reference`` (its ``reference`` setting defaults to that path)."""
    from registration_core.preprocessing.steps import STEPS

    name = args.step.replace("-", "_")
    if name not in STEPS:
        steps = ", ".join(step.replace("_", "-") for step in STEPS)
        raise InputError(f"preprocess: unknown step {args.step!r}; allowed: {steps}")
    settings = _parse_settings(args.set)
    if name == "affine_align":
        if args.reference is None:
            raise InputError("preprocess affine-align: --reference is required")
        settings.setdefault("reference", str(args.reference))
    elif args.reference is not None:
        raise InputError(f"preprocess {args.step}: --reference is an option of affine-align only")
    _prepare_and_write(args, [{"step": name, **settings}], args.out)


def _demo_subject(args: argparse.Namespace) -> None:
    from registration_core.data.demo import write_demo_subject

    write_demo_subject(
        args.index, args.seed, args.out_image, args.out_labels,
        spacing_mm=args.spacing_mm, max_disp_mm=args.max_disp_mm,
    )


def _import_raw(args: argparse.Namespace) -> None:
    from registration_core.data.imports import RawImport, import_raw

    raw = RawImport(str(args.raw), tuple(args.shape), tuple(args.spacing), args.dtype, args.orientation, args.intercept)
    import_raw(raw, args.out)


def _import_landmarks(args: argparse.Namespace) -> None:
    from registration_core.core.io import load_image
    from registration_core.data.imports import LandmarkImport, import_landmarks

    import_landmarks(LandmarkImport(str(args.points), args.format), load_image(args.reference), args.out)


def _qc(args: argparse.Namespace) -> None:
    from registration_core.core.io import load_image
    from registration_core.preprocessing.qc import save_qc_png

    def optional(path: Path | None, kind: str):
        return load_image(path, kind) if path is not None else None

    save_qc_png(
        load_image(args.raw_image), load_image(args.image), args.out, raw_labels=optional(args.raw_labels, "labels"),
        prepared_labels=optional(args.labels, "labels"), prepared_mask=optional(args.mask, "labels"), title=args.title,
    )


def _plan(args: argparse.Namespace) -> None:
    from registration_core.study.plan import write_jobs_table

    write_jobs_table(args.config, args.out)


def _aggregate(args: argparse.Namespace) -> None:
    from registration_core.evaluation.aggregate import aggregate_study

    aggregate_study(args.jobs, args.out_dir)


def _anova(args: argparse.Namespace) -> None:
    from registration_core.evaluation.stats import run_anova_study

    run_anova_study(
        args.metrics, _csv_list(args.responses), _csv_list(args.factors), args.alpha, args.out_dir,
        method=args.method, model=args.model, seed=args.seed,
    )


def _report(args: argparse.Namespace) -> None:
    from registration_core.report import build_report

    build_report(args.study_dir, args.config, args.out)


def _methods(args: argparse.Namespace) -> None:
    from registration_core.core.params import value_text
    from registration_core.methods import available_methods, get_method

    for name in args.names or available_methods():
        method = get_method(name)
        presets = f" (presets: {', '.join(method.presets)})" if method.presets else ""
        trained = ""
        if method.trainable:
            trained = " (learned: `train`, then register with checkpoint=DIR/model.pt"
            trained += ")" if method.requires_checkpoint else "; without one it optimises each pair from scratch)"
        print(f"{name}{presets}{trained}")
        for param in method.params.values():
            print(f"  {param.name} = {value_text(param.default)}  [{param.allowed()}]  {param.help}")


@dataclass(frozen=True)
class FileOption:
    """A file option of a command: its flag, help text, whether it is required and whether it
    takes several paths."""

    flag: str
    help: str | None = None
    required: bool = False
    many: bool = False


FILE_OPTIONS: dict[str, dict[str, FileOption]] = {
    "register": {
        "fixed": FileOption("--fixed", "fixed image (the atlas)", True),
        "moving": FileOption("--moving", "moving image, on the fixed grid", True),
        "fixed_labels": FileOption("--fixed-labels", "fixed label map"),
        "moving_labels": FileOption("--moving-labels", "moving label map (warped into warped_labels.nii.gz)"),
        "fixed_landmarks": FileOption("--fixed-landmarks", "fixed landmarks (CSV or elastix points)"),
        "moving_landmarks": FileOption("--moving-landmarks", "moving landmarks, same order"),
    },
    "train": {
        "images": FileOption("--images", "training images, all on one grid", True, True),
        "labels": FileOption("--labels", "their label maps (same order), for label supervision", many=True),
        "val_images": FileOption("--val-images", "validation images (default: validate on training pairs)", many=True),
        "val_labels": FileOption("--val-labels", "their label maps", many=True),
    },
    "evaluate": {
        "fixed_labels": FileOption("--fixed-labels", "fixed label map (with --warped-labels: Dice, HD95)"),
        "warped_labels": FileOption("--warped-labels", "warped_labels.nii.gz written by register"),
        "displacement": FileOption("--displacement", "displacement.nii.gz written by register", True),
        "moving_labels": FileOption("--moving-labels", "moving labels, for the Dice before registration"),
        "fixed_landmarks": FileOption("--fixed-landmarks", "fixed landmarks"),
        "moving_landmarks": FileOption("--moving-landmarks", "moving landmarks, same order"),
        "fixed": FileOption("--fixed-image", "fixed image (with --moving-image / --warped-image: NCC, MSE)"),
        "moving": FileOption("--moving-image", "moving image, for ncc_before / mse_before"),
        "warped": FileOption("--warped-image", "warped.nii.gz written by register, for ncc_after / mse_after"),
        "truth_displacement": FileOption("--truth-displacement", "true displacement of a synth-pair, for tre_truth_mm"),
        "mask": FileOption("--mask", "mask on the fixed grid bounding tre_truth_mm (default: every voxel)"),
    },
    "subject": {
        "image": FileOption("--image", "the subject's image", True),
        "labels": FileOption("--labels", "its label map (geometric steps carry it along, nearest)"),
        "mask": FileOption("--mask", "a mask on the image's grid; geometric steps carry it like labels"),
        "landmarks": FileOption("--landmarks", "its landmarks (CSV or elastix points), mapped exactly"),
        "reference": FileOption("--reference", "affine_align: the reference subject's image at the same stage"),
    },
    "subject_outputs": {
        "labels": FileOption("--out-labels", "output label map"),
        "mask": FileOption("--out-mask", "output mask"),
        "landmarks": FileOption("--out-landmarks", "landmarks CSV on the output grid (i,j[,k],x,y[,z])"),
    },
    "qc": {
        "raw_image": FileOption("--raw-image", "the image as read from the dataset", True),
        "raw_labels": FileOption("--raw-labels", "its labels as read"),
        "image": FileOption("--image", "the prepared image", True),
        "labels": FileOption("--labels", "the prepared labels"),
        "mask": FileOption("--mask", "the prepared mask"),
    },
}
"""File options of the commands the workflow runs, keyed like the files of
:mod:`registration_core.study.files`; the parser and the rules' arguments both read them."""


def add_file_options(p: argparse.ArgumentParser, group: str) -> None:
    """Add the options of ``FILE_OPTIONS[group]`` to a command's parser."""
    for option in FILE_OPTIONS[group].values():
        p.add_argument(option.flag, type=Path, required=option.required, nargs="+" if option.many else None, help=option.help)


def file_args(group: str, files: Mapping[str, str | Sequence[str]]) -> list[str]:
    """``flag path [path ...]`` for every key of ``FILE_OPTIONS[group]`` present in ``files``, in
    declaration order (what a rule passes to the command)."""
    args: list[str] = []
    for key, option in FILE_OPTIONS[group].items():
        if key in files:
            value = files[key]
            args += [option.flag, *value] if isinstance(value, (list, tuple)) else [option.flag, str(value)]
    return args


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all commands."""
    from registration_core import __version__

    parser = argparse.ArgumentParser(prog="python -m registration_core", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"registration_core {__version__}",
                        help="print the package version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = command("register", _register, "register a moving image onto a fixed (atlas) image")
    p.add_argument("--method", required=True, help="registration method (see the method registry)")
    add_file_options(p, "register")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    add_failure_options(p)

    p = command("train", _train, "train a learned method on a set of images; writes OUT/model.pt and OUT/log.json")
    p.add_argument("--method", required=True, help="a learned method (see `methods`)")
    add_file_options(p, "train")
    p.add_argument("--out", type=Path, required=True, help="output folder (model.pt, log.json, checkpoint.pt)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")

    p = command("evaluate", _evaluate, "metrics of one registered pair")
    add_file_options(p, "evaluate")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labels", help="comma-separated label values or a preset (oasis-28, voxelmorph-30, "
                       "mindboggle-oasis-28: scored on merged maps); default: all labels of the fixed map")
    group.add_argument("--labels-file", type=Path, help="file with label values")
    p.add_argument("--out", type=Path, required=True, help="metrics.json")
    add_failure_options(p)

    p = command("synth-pair", _synth_pair, "deform a real image by a known motion: a pair with exact truth")
    p.add_argument("--image", required=True, help="fixed image, or skimage:retina (2D fundus, 256x256, 1 mm)")
    p.add_argument("--mask", type=Path, help="label map on the image's grid (lungs 1, 2): motion, maximum, landmarks")
    p.add_argument("--labels", type=Path, help="label map of the image, deformed with it (nearest)")
    p.add_argument("--motion", choices=("respiratory", "respiratory-inhale", "single", "mixed"), default="respiratory",
                   help="respiratory: fixed inhale -> moving exhale; respiratory-inhale: the reverse; "
                   "single / mixed: smooth random (single- / mixed-frequency)")
    p.add_argument("--max-disp-mm", type=float, default=15.0, help="largest true displacement, inside the mask")
    p.add_argument("--noise-std", type=float, default=0.01, help="noise on the moving image, fraction of the range")
    p.add_argument("--seed", type=int, default=0, help="seed of the random motion and noise")
    p.add_argument("--n-landmarks", type=int, default=150, help="landmarks to place (at corners, inside the mask)")
    p.add_argument("--min-distance-mm", type=float, help="smallest landmark distance (default 5 voxels)")
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (fixed, moving, truth displacement, truth.json)")

    p = command("prepare", _prepare, "preprocess one image (and its labels, mask, landmarks) by a list of steps")
    add_file_options(p, "subject")
    p.add_argument("--steps", required=True, help="JSON list of {step: name, ...} or a JSON/YAML file")
    p.add_argument("--out-image", type=Path, required=True, help="output image")
    add_file_options(p, "subject_outputs")

    p = command("preprocess", _preprocess, "run one preprocessing step on one image (and its labels, mask, landmarks)")
    p.add_argument(
        "step",
        help="a preprocessing step: reorient, clip, normalize, slice, resample, crop-pad, lung-mask, affine-align",
    )
    add_file_options(p, "subject")
    p.add_argument("--out", type=Path, required=True, help="output image (lung-mask: the mask)")
    add_file_options(p, "subject_outputs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="step setting, value as YAML (repeatable)")

    p = command("demo-subject", _demo_subject, "write one subject of the embedded demo dataset")
    p.add_argument("--index", type=int, required=True, help="subject number (0: the template itself)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subject's random deformation")
    p.add_argument("--spacing-mm", type=float, default=2.0, help="voxel size of the written image (mm)")
    p.add_argument("--max-disp-mm", type=float, default=8.0, help="largest displacement of the subject's deformation (mm)")
    p.add_argument("--out-image", type=Path, required=True, help="output image (.nii.gz)")
    p.add_argument("--out-labels", type=Path, required=True, help="output label map (.nii.gz)")

    p = command("import-raw", _import_raw, "convert a raw volume (DIR-Lab .img) or a picture (green channel) to NIfTI")
    p.add_argument("--raw", type=Path, required=True, help="headerless binary file, or .jpg/.png/.tif picture")
    p.add_argument("--shape", type=int, nargs="+", required=True, help="sizes along i j [k], i fastest in the file")
    p.add_argument("--spacing", type=float, nargs="+", required=True, help="voxel size (mm) along i j [k]")
    p.add_argument("--dtype", required=True, help="numpy dtype with byte order, e.g. '<i2' (pictures: u1)")
    p.add_argument("--orientation", default="LPS", help="direction of axes i j k, e.g. LPI (default LPS)")
    p.add_argument("--intercept", type=float, default=0.0, help="added to every stored value (DIR-Lab: -1024)")
    p.add_argument("--out", type=Path, required=True, help="output image (.nii.gz)")

    p = command("import-landmarks", _import_landmarks, "convert a dataset's point file to a landmark CSV")
    p.add_argument("--points", type=Path, required=True, help="the dataset's point file")
    p.add_argument("--format", required=True, help="dirlab-xyz, learn2reg-csv, fire-fixed or fire-moving")
    p.add_argument("--reference", type=Path, required=True, help="the image the points belong to (as imported)")
    p.add_argument("--out", type=Path, required=True, help="landmarks CSV (i,j[,k],x,y[,z])")

    p = command("qc", _qc, "QC picture: mid-slices before and after preprocessing with label/mask outlines")
    add_file_options(p, "qc")
    p.add_argument("--title", default="", help="caption above the panels (e.g. the subject id)")
    p.add_argument("--out", type=Path, required=True, help="PNG")

    p = command("plan", _plan, "write the jobs table of a study config")
    p.add_argument("--config", type=Path, required=True, help="study config (YAML)")
    p.add_argument("--out", type=Path, required=True, help="jobs table (TSV)")

    p = command("aggregate", _aggregate, "collect per-pair metrics and logs into tables")
    p.add_argument("--jobs", type=Path, required=True, help="jobs table written by plan")
    p.add_argument("--out-dir", type=Path, required=True, help="folder of the tables (metrics.csv, summary.csv, ...)")

    p = command("anova", _anova, "ANOVA of metrics against grid factors")
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv written by aggregate")
    p.add_argument("--responses", required=True, help="comma-separated metric columns")
    p.add_argument("--factors", required=True, help="comma-separated grid factors")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--method", help="restrict to one method")
    p.add_argument("--model", choices=("repeated", "independent"), default="repeated",
                   help="repeated: pairs as subjects (AnovaRM, mixed model when cells are missing); "
                   "independent: pairs as replicates (factorial ANOVA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap confidence intervals")
    p.add_argument("--out-dir", type=Path, required=True, help="folder of the ANOVA tables, plots and anova.json")

    p = command("methods", _methods, "list the registered methods and their parameters")
    p.add_argument("names", nargs="*", help="methods to describe (default: all)")

    p = command("report", _report, "build the self-contained HTML report of a study")
    p.add_argument("--study-dir", type=Path, required=True, help="the study's results folder (results/<study>)")
    p.add_argument("--config", type=Path, required=True, help="the resolved study config")
    p.add_argument("--out", type=Path, required=True, help="output HTML file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status: 0, 2 on bad input, 1 on a failed write, 128 + the
    signal's number when SIGTERM / SIGINT / SIGHUP stopped it (after the command's cleanup ran:
    all-or-nothing writers remove what they wrote)."""
    from registration_core.core.allocator import retain_freed_memory
    from registration_core.core.outputs import Interrupted, interruption_of, signals_as_exceptions

    retain_freed_memory()  # torch's large temporaries reuse freed pages (core/allocator.py)
    args = None
    with signals_as_exceptions():
        try:
            args = build_parser().parse_args(argv)
            args.handler(args)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if getattr(args, "record_failures", False):
                from registration_core.failures import record_input_error

                return record_input_error(args, exc)
            return 2
        except (OSError, Interrupted) as exc:
            interrupted = interruption_of(exc)
            if interrupted is not None:
                print(f"error: {interrupted}; nothing of this run was kept", file=sys.stderr)
                return 128 + interrupted.signum
            assert isinstance(exc, OSError)
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
