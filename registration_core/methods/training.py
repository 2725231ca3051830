"""Learned registration methods: one network trained over a dataset, then applied pair by pair.

A learned method subclasses :class:`LearnedMethod` and supplies the network
(:meth:`~LearnedMethod.build_model`), its training loss on a batch (:meth:`~LearnedMethod.loss`) and
its prediction (:meth:`~LearnedMethod.predict`). This module holds what they share:

* :func:`train_method` (the ``train`` command): seeded Adam loop over batches drawn from the
  training images, a validation loss every ``val_every`` steps on fixed validation batches,
  ``checkpoint.pt`` every ``checkpoint_every`` steps (a rerun with the same parameters resumes from
  it and reproduces the uninterrupted run), then ``model.pt`` and ``log.json``;
* :meth:`LearnedMethod.register` (the ``register`` command): load ``checkpoint=model.pt``, predict,
  optionally refine the network on the pair for ``io_steps`` steps (instance optimisation).

Tensors: images ``(B, 1, *spatial)`` float32, label maps ``(B, 1, *spatial)`` int64, displacements
``(B, ndim, *spatial)`` in voxels of the fixed grid (fixed point ``x`` -> moving point ``x + u(x)``;
see :mod:`registration_core.core.spatial`). All images of a training set share one grid.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from registration_core.core.io import Image, atomic_path, load_image, write_json
from registration_core.core.params import Param
from registration_core.core.progress import progress, report
from registration_core.core.provenance import peak_memory_mb, resolve_device, software_versions
from registration_core.errors import InputError
from registration_core.layout import train_file
from registration_core.methods import Method, RegistrationResult

Batch = dict[str, torch.Tensor]
"""``fixed``/``moving`` (B, 1, *spatial) float32; ``fixed_labels``/``moving_labels`` (B, 1, *spatial)
int64 when the training set has labels; methods may add their own keys (e.g. a true displacement)."""

MODEL_FORMAT = "registration_core.model/1"
RUNTIME_PARAMS = ("checkpoint", "io_steps", "io_lr", "device", "steps", "val_every", "checkpoint_every")
"""Parameters that do not define the trained network: taken from the ``register``/``train`` call,
not from the checkpoint (``steps`` may be raised to continue a training run)."""

_N_VAL_BATCHES = 8


def common_params(steps: int = 1000, lr: float = 1e-4, io_lr: float = 1e-4, batch_size: int = 1) -> list[Param]:
    """The parameters every learned method has, with method-specific defaults."""
    return [
        Param("checkpoint", str, None, "model.pt written by `train` (none: untrained network)", nullable=True),
        Param("steps", int, steps, "training optimiser steps", minimum=0),
        Param("lr", float, lr, "Adam learning rate for training", minimum=0.0, exclusive_minimum=True),
        Param("batch_size", int, batch_size, "pairs per training step", minimum=1),
        Param("val_every", int, 50, "steps between validation losses", minimum=1),
        Param("checkpoint_every", int, 100, "steps between resumable checkpoints", minimum=1),
        Param("io_steps", int, 0, "instance-optimisation steps on each pair at registration", minimum=0),
        Param("io_lr", float, io_lr, "Adam learning rate of instance optimisation", minimum=0.0, exclusive_minimum=True),
        Param("seed", int, 0, "random seed (training batches, initialisation)", minimum=0),
        Param("device", str, "auto", "auto uses CUDA when available", choices=("auto", "cpu", "cuda")),
    ]


def param_schema(*params: Param) -> dict[str, Param]:
    """A method's parameter schema from a list (later entries replace earlier ones of the same name)."""
    return {p.name: p for p in params}


@dataclass(frozen=True)
class TrainingSet:
    """Images (and label maps) of one split on one grid.

    ``images``: (N, 1, *spatial) float32; ``labels``: (N, 1, *spatial) int64 or None;
    ``reference``: the first image (its grid is every image's grid); ``paths``: the image files.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    reference: Image
    paths: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[2:])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_training_set(
    images: Sequence[Path], labels: Sequence[Path] | None, option: str, reference: Image | None = None
) -> TrainingSet:
    """Read ``images`` (and as many ``labels``) onto one grid; InputError names the file.

    ``option`` is the CLI option the files came from (``--images``/``--val-images``), for messages;
    ``reference`` (optional) is a grid every image must share (the training set's).
    """
    if not images:
        raise InputError(f"{option}: no images given")
    if labels is not None and len(labels) != len(images):
        raise InputError(f"{option}: {len(images)} images but {len(labels)} label maps")
    loaded = [load_image(path, "image") for path in images]
    grid = reference if reference is not None else loaded[0]
    label_maps = [load_image(path, "labels") for path in labels] if labels is not None else []
    for image in [*loaded, *label_maps]:
        if not grid.same_grid(image):
            raise InputError(
                f"{image.path}: grid (shape {image.shape}) differs from {grid.path} (shape {grid.shape}); "
                "training images and labels must share one grid (resample in preprocessing)"
            )
    stacked = torch.from_numpy(np.stack([np.asarray(i.data, dtype=np.float32) for i in loaded]))[:, None]
    stacked_labels = (
        torch.from_numpy(np.stack([np.asarray(m.data, dtype=np.int64) for m in label_maps]))[:, None]
        if label_maps else None
    )
    return TrainingSet(stacked, stacked_labels, grid, tuple(str(p) for p in images))


def random_pairs(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` ordered pairs (fixed, moving) of distinct indices in ``range(n)``, shape (count, 2)."""
    if n < 2:
        raise InputError(f"training needs at least 2 images to form pairs, got {n}")
    fixed = rng.integers(0, n, size=count)
    moving = (fixed + rng.integers(1, n, size=count)) % n
    return np.stack([fixed, moving], axis=1)


def pair_batch(data: TrainingSet, pairs: np.ndarray, device: torch.device) -> Batch:
    """The :data:`Batch` of index ``pairs`` (B, 2) of ``data``."""
    batch = {"fixed": data.images[pairs[:, 0]], "moving": data.images[pairs[:, 1]]}
    if data.labels is not None:
        batch.update(fixed_labels=data.labels[pairs[:, 0]], moving_labels=data.labels[pairs[:, 1]])
    return {key: value.to(device) for key, value in batch.items()}


def image_tensor(image: Image, device: torch.device) -> torch.Tensor:
    """An :class:`Image` as a (1, 1, *spatial) float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image.data, dtype=np.float32))[None, None].to(device)


class LearnedMethod(Method):
    """A method trained over a dataset (``train``) and applied per pair (``register``).

    Subclasses set ``name``, ``params`` (including :func:`common_params`) and implement
    :meth:`build_model`, :meth:`loss` and :meth:`predict`; they may override :meth:`sample_batch`
    (how training batches are made: default, random pairs of distinct training images),
    :meth:`instance_loss` (default: :meth:`loss`) and :meth:`predict_inverse`.
    """

    trainable: ClassVar[bool] = True
    uses_torch: ClassVar[bool] = True
    requires_checkpoint: ClassVar[bool] = True
    """False for methods that can register a pair by instance optimisation alone (no checkpoint)."""

    @abstractmethod
    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> nn.Module:
        """A freshly initialised network for images of ``shape`` (the caller seeds torch)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of ``batch``: (total scalar, named scalar terms)."""

    @abstractmethod
    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """Displacement (B, ndim, *spatial) in fixed-grid voxels for images (B, 1, *spatial)."""

    def predict_inverse(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]
    ) -> torch.Tensor | None:
        """Displacement of the inverse map (B, ndim, *spatial), or None when the method has none."""
        return None

    def sample_batch(self, data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device) -> Batch:
        """A training batch: ``batch_size`` random ordered pairs of distinct training images."""
        return pair_batch(data, random_pairs(len(data), params["batch_size"], rng), device)

    def check_training_set(self, data: TrainingSet, params: Mapping[str, Any], option: str) -> None:
        """Refuse a training or validation set the loss cannot use (before anything is written);
        ``option`` names where it came from (``--images``/``--val-images``). Default: accept."""

    def instance_loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss minimised by instance optimisation on one pair (no labels): :meth:`loss` by default."""
        return self.loss(model, batch, params)

    def instance_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """What instance optimisation updates: every network parameter by default."""
        return model.parameters()

    # -- registration -------------------------------------------------------------------------
    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        """Predict the pair's displacement with the trained network, then ``io_steps`` of
        instance optimisation (the network is a copy; the checkpoint is not changed)."""
        device = resolve_device(params["device"])
        torch.manual_seed(params["seed"])
        model, model_params = self.load_model(params, fixed.shape, device)
        fixed_t, moving_t = image_tensor(fixed, device), image_tensor(moving, device)
        history = self._instance_optimise(model, fixed_t, moving_t, model_params) if params["io_steps"] else []
        model.eval()
        with torch.no_grad():
            disp = self.predict(model, fixed_t, moving_t, model_params)
            inverse = self.predict_inverse(model, fixed_t, moving_t, model_params)
        return RegistrationResult(
            disp_vox=disp[0].cpu().numpy().astype(np.float32),
            loss_history=history,
            best_iteration=len(history) - 1 if history else None,
            best_criterion="last instance-optimisation step" if history else None,
            device=str(device),
            inverse_disp_vox=None if inverse is None else inverse[0].cpu().numpy().astype(np.float32),
            extra={"model_params": model_params, "checkpoint": params["checkpoint"]},
        )

    def load_model(self, params: Mapping[str, Any], shape: tuple[int, ...], device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        """The network of ``params['checkpoint']`` (or a fresh one when the method allows it) and
        the parameters it was built with (the checkpoint's, with the call's :data:`RUNTIME_PARAMS`)."""
        path = params["checkpoint"]
        if path is None:
            if self.requires_checkpoint:
                raise InputError(
                    f"method '{self.name}' needs a trained network: run `python -m registration_core train "
                    f"--method {self.name} ...` and pass --param checkpoint=DIR/model.pt"
                )
            if params["io_steps"] == 0:
                raise InputError(f"method '{self.name}' without a checkpoint needs --param io_steps=N > 0")
            return self.build_model(shape, params).to(device), dict(params)
        saved = read_model_file(Path(path), self.name)
        if tuple(saved["shape"]) != tuple(shape):
            raise InputError(
                f"{path}: network trained on images of shape {tuple(saved['shape'])}, the pair has shape {tuple(shape)} "
                "(preprocess the pair like the training images)"
            )
        model_params = {**saved["params"], **{key: params[key] for key in RUNTIME_PARAMS}}
        model = self.build_model(shape, model_params)
        model.load_state_dict(saved["state_dict"])
        return model.to(device), model_params

    def _instance_optimise(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]
    ) -> list[dict[str, float]]:
        """``io_steps`` Adam steps of :meth:`instance_loss` on the pair; returns the loss history."""
        model.train()
        optimizer = torch.optim.Adam(self.instance_parameters(model), lr=params["io_lr"])
        batch = {"fixed": fixed, "moving": moving}
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        for step in range(params["io_steps"]):
            total, terms = self.instance_loss(model, batch, params)
            _check_finite(total, f"{self.name} instance optimisation", step, "io_lr")
            history.append(_record("iteration", step, start, total, terms))
            report(step + 1, params["io_steps"], **_terms(history[-1]))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        return history


# -- training ----------------------------------------------------------------------------------


def _record(key: str, step: int, start: float, total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    record = {key: step, "elapsed_s": time.perf_counter() - start, "total": float(total.detach())}
    record.update({name: float(value.detach()) for name, value in terms.items()})
    return record


def _terms(record: Mapping[str, float]) -> dict[str, float]:
    """The loss terms of a history record (without its step and time), for a progress line."""
    return {key: value for key, value in record.items() if key not in ("step", "iteration", "elapsed_s")}


def _check_finite(total: torch.Tensor, what: str, step: int, lr_key: str) -> None:
    value = float(total.detach())
    if not math.isfinite(value):
        raise RuntimeError(f"{what}: loss became {value} at step {step}; lower '{lr_key}'")


def read_model_file(path: Path, method: str) -> dict[str, Any]:
    """A ``model.pt`` written by :func:`train_method` for ``method``; InputError names the file."""
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise InputError(f"{path}: not a readable model file ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a model file written by `python -m registration_core train`")
    if saved["method"] != method:
        raise InputError(f"{path}: trained for method '{saved['method']}', not '{method}'")
    return saved


def _model_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key not in RUNTIME_PARAMS}


def _validation_batches(method: LearnedMethod, data: TrainingSet, params: Mapping[str, Any], device: torch.device) -> list[Batch]:
    rng = np.random.default_rng(params["seed"] + 1)
    return [method.sample_batch(data, rng, params, device) for _ in range(_N_VAL_BATCHES)]


def _validate(method: LearnedMethod, model: nn.Module, batches: list[Batch], params: Mapping[str, Any], step: int) -> dict[str, float]:
    """Mean loss terms over the validation batches (gradients enabled for losses that need them)."""
    model.eval()
    sums: dict[str, float] = {}
    for batch in batches:
        total, terms = method.loss(model, batch, params)
        for name, value in {"total": total, **terms}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
    model.train()
    return {"step": step, **{name: value / len(batches) for name, value in sums.items()}}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, method: str, params: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The resume state of ``path`` when it exists; InputError when it belongs to another run."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: unreadable resume checkpoint ({type(exc).__name__}); delete it to start over") from None
    expected = {"method": method, "shape": list(shape), "params": _model_params(params)}
    for key, value in expected.items():
        if state.get(key) != value:
            raise InputError(
                f"{path}: written by a run with another {key} ({state.get(key)!r} vs {value!r}); "
                "delete it to start over or use another --out"
            )
    if state["step"] > params["steps"]:
        raise InputError(f"{path}: already at step {state['step']}, beyond --param steps={params['steps']}")
    return state


def train_method(
    method_name: str | LearnedMethod,
    images: Sequence[Path],
    out_dir: Path,
    raw_params: Mapping[str, Any] | None = None,
    labels: Sequence[Path] | None = None,
    val_images: Sequence[Path] | None = None,
    val_labels: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """Train ``method_name`` (a registered method's name, or a method) on ``images`` and write ``out_dir/model.pt`` and ``out_dir/log.json``.

    Validation batches come from ``val_images`` (or, without them, are drawn from the training
    images with another seed). ``out_dir/checkpoint.pt`` holds the resume state: model, optimiser,
    both random generators, step and curves; a rerun continues from it. Returns the log.
    """
    from registration_core.methods import get_method

    method = get_method(method_name) if isinstance(method_name, str) else method_name
    if not isinstance(method, LearnedMethod):
        raise InputError(f"method '{method.name}' is not trained (it registers each pair on its own)")
    params = method.resolve_params(raw_params or {})
    if params["checkpoint"] is not None:
        raise InputError("train: parameter 'checkpoint' is for register; train writes OUT/model.pt")
    if (val_labels is not None) and val_images is None:
        raise InputError("--val-labels needs --val-images")
    data = load_training_set(images, labels, "--images")
    val_data = load_training_set(val_images, val_labels, "--val-images", data.reference) if val_images else data
    method.check_training_set(data, params, "--images")
    if val_images:
        method.check_training_set(val_data, params, "--val-images")
    device = resolve_device(params["device"])
    torch.manual_seed(params["seed"])
    model = method.build_model(data.shape, params).to(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = train_file(out_dir, "checkpoint")
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    rng = np.random.default_rng(params["seed"])
    history: list[dict[str, float]] = []
    validation: list[dict[str, float]] = []
    start_step, elapsed_before = 0, 0.0
    state = _resume(checkpoint_path, method.name, params, data.shape)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng_numpy"]
        torch.set_rng_state(state["rng_torch"])
        history, validation = state["history"], state["validation"]
        start_step, elapsed_before = state["step"], state["elapsed_s"]
    val_batches = _validation_batches(method, val_data, params, device)

    def snapshot(step: int, elapsed: float) -> dict[str, Any]:
        return {
            "method": method.name, "shape": list(data.shape), "params": _model_params(params), "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng_numpy": rng.bit_generator.state,
            "rng_torch": torch.get_rng_state(), "history": history, "validation": validation, "elapsed_s": elapsed,
        }

    model.train()
    start = time.perf_counter() - elapsed_before
    with progress(f"train {method.name}", params["steps"], unit="step"):
        for step in range(start_step, params["steps"]):
            if step % params["val_every"] == 0 and not (validation and validation[-1]["step"] == step):
                validation.append(_validate(method, model, val_batches, params, step))
            batch = method.sample_batch(data, rng, params, device)
            total, terms = method.loss(model, batch, params)
            _check_finite(total, f"{method.name} training", step, "lr")
            history.append(_record("step", step, start, total, terms))
            report(step + 1, params["steps"], **_terms(history[-1]))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if (step + 1) % params["checkpoint_every"] == 0:
                _save_checkpoint(checkpoint_path, snapshot(step + 1, time.perf_counter() - start))
        if not validation or validation[-1]["step"] != params["steps"]:
            validation.append(_validate(method, model, val_batches, params, params["steps"]))
    train_time = time.perf_counter() - start
    _save_checkpoint(checkpoint_path, snapshot(params["steps"], train_time))

    peak_rss, peak_cuda = peak_memory_mb()
    model_file = {
        "format": MODEL_FORMAT, "method": method.name, "params": _model_params(params),
        "shape": list(data.shape), "spacing_mm": [float(s) for s in data.reference.spacing],
        "steps": params["steps"], "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "versions": software_versions(),
    }
    _save_checkpoint(train_file(out_dir, "model"), model_file)
    log = {
        "method": method.name, "params": params, "seed": params["seed"], "device": str(device),
        "steps": params["steps"], "train_time_s": train_time, "peak_rss_mb": peak_rss, "peak_cuda_mb": peak_cuda,
        "n_train": len(data), "n_val": len(val_data) if val_images else 0,
        "validation_source": "--val-images" if val_images else "training images (other seed)",
        "shape": list(data.shape), "spacing_mm": [float(s) for s in data.reference.spacing],
        "inputs": {"images": list(data.paths), "labels": [str(p) for p in labels] if labels else None,
                   "val_images": [str(p) for p in val_images] if val_images else None},
        "history": history, "validation": validation, "versions": software_versions(),
    }
    write_json(log, train_file(out_dir, "log"))
    return log
