"""Output folders written all or nothing, and signals turned into exceptions so that cleanup runs.

A command that writes several files into one folder (``register --out DIR``, ``synth-pair
--out-dir DIR``) writes them into a hidden staging folder inside ``DIR`` and moves them into
place only when all are written, the marker file (``log.json``) last. Before that, the files the
layout names in ``DIR`` -- a previous run's outputs -- and hidden leftovers of a killed run are
removed, so no stale file survives next to new ones.

What each kind of interruption leaves:

* an exception, SIGTERM or SIGINT (:func:`signals_as_exceptions`): nothing of this run, and the
  previous run's files are gone;
* SIGTERM or SIGINT inside a long native call (ANTs, elastix: :func:`signals_end_the_process`):
  the process ends at once, as under SIGKILL (a Python handler would only run once the tool
  returns, minutes later);
* SIGKILL: at worst a hidden ``.staging-*.tmp`` folder (removed by the next run into ``DIR``)
  or, inside the final moves (a few renames), some outputs without the marker file: without
  ``log.json`` a folder is not finished (Snakemake also deletes the outputs of a job it did not
  see finish).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

STAGING_PREFIX = ".staging-"
STAGING_SUFFIX = ".tmp"


class Interrupted(BaseException):
    """A termination signal (SIGTERM, SIGINT, SIGHUP) received by a command.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` clauses (readers turning
    library errors into InputError) let it through and only ``finally`` / cleanup code runs.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def interruption_of(exc: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` behind ``exc``, if any: ``exc`` itself or one in its chain of causes
    and contexts. A signal landing inside a library's write can surface as an ``OSError`` raised
    while that library cleans up (a file closed under its feet: "Bad file descriptor"); the run was
    still interrupted, not failed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


TERMINATING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals a scheduler, Snakemake or a user sends to stop a command."""

Handler = Callable[[int, FrameType | None], Any] | int | None


def _install(handlers: Mapping[int, Handler]) -> dict[int, Handler]:
    """Install ``handlers`` (signal -> handler) with those signals blocked, and return the ones they
    replace. While blocked, a signal is neither lost (CPython drops one that lands between its
    pending-signal check and the swap) nor met by a half-installed set; it is delivered, to the new
    handler, once they are unblocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
    try:
        return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextmanager
def _handling(signums: Iterable[int], handler: Handler) -> Iterator[None]:
    """``handler`` for ``signums`` within the block, the previous handlers restored afterwards (both
    swaps with the signals blocked, :func:`_install`). Only the main thread can install handlers:
    elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _install({signum: handler for signum in signums})
    try:
        yield
    finally:
        _install(previous)


def signals_as_exceptions(signums: Iterable[int] = TERMINATING) -> AbstractContextManager[None]:
    """Within the block, the given signals raise :class:`Interrupted` in the main thread (cleanup and
    ``finally`` clauses run); the previous handlers are restored afterwards."""
    return _handling(signums, _raise_interrupted)


def signals_end_the_process(signums: Iterable[int] = TERMINATING) -> AbstractContextManager[None]:
    """Within the block, the given signals take their default action: the process ends at once.

    For a long call into native code that does not return to Python until it is done (an ANTs or
    elastix registration): Python runs its handlers between bytecodes, so under
    :func:`signals_as_exceptions` a SIGTERM from Snakemake or the scheduler would wait for the tool
    to finish. What the process leaves is what SIGKILL leaves (module docstring); the tool's own
    temporary folder may stay in the system's temporary directory. The previous handlers are
    restored afterwards.
    """
    return _handling(signums, signal.SIG_DFL)


def remove_stale_outputs(out_dir: Path, names: Iterable[str], marker: str) -> None:
    """Remove ``marker`` first (the folder stops looking finished), then every file of ``names``, then
    hidden leftovers of killed runs: staging folders and :func:`registration_core.core.io.atomic_path`'s
    ``.<name>.*.tmp`` folders of those names."""
    names = list(names)
    for name in [marker, *(name for name in names if name != marker)]:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(21, "a folder stands where an output file goes", str(target))
        target.unlink(missing_ok=True)
    for leftover in out_dir.glob(f"{STAGING_PREFIX}*{STAGING_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    for name in names:
        for leftover in out_dir.glob(f".{name}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staged_folder(out_dir: str | os.PathLike[str], names: Iterable[str], marker: str) -> Iterator[Path]:
    """Yield a hidden staging folder inside ``out_dir`` to write the files ``names`` into; on success
    move them into ``out_dir`` (``marker`` last), on any exception remove what was moved.

    Args:
        out_dir: the output folder (created).
        names: every file name the layout gives this folder; a previous run's files of these names
            are removed before the block runs, even those this run will not write.
        marker: the name written last, whose presence means the folder is finished (``log.json``).

    Raises:
        OSError when the block did not write ``marker``, or a file outside ``names``.
    """
    out_dir = Path(out_dir)
    names = list(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_outputs(out_dir, names, marker)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX, dir=out_dir))
    moved: list[Path] = []
    try:
        yield staging
        written = sorted(entry.name for entry in staging.iterdir())
        unexpected = sorted(set(written) - set(names))
        if unexpected:
            raise OSError(f"{out_dir}: wrote {', '.join(unexpected)}, which the layout does not name")
        if marker not in written:
            raise OSError(f"{out_dir}: {marker} was not written")
        for name in [*(name for name in written if name != marker), marker]:
            os.replace(staging / name, out_dir / name)
            moved.append(out_dir / name)
    except BaseException:
        for path in reversed(moved):
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
