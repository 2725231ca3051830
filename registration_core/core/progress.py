"""Progress of long computations (a registration, a training): a line on stderr at least every
:data:`INTERVAL_S` seconds, so that a job's log shows where it is while it runs.

A line reads (times in h:mm:ss, memory in MB)::

    [14:39:07] register nodeo: iteration 120/300 (40%) | total 0.4123, sim 0.3812, J 0 | 12.3 it/s | ETA 0:00:15 | elapsed 0:00:10 | rss 512 MB (peak 600 MB)

The caller that owns the job opens :func:`progress` around it (``run_registration``,
``train_method``); the loops inside (a method's optimiser, the training steps) call :func:`report`
with the iteration done, the total when known and the loss terms, without knowing whether anyone
listens (no-op outside :func:`progress`). A heartbeat thread writes the last state again when no
iteration ended for :data:`INTERVAL_S` (one slow iteration, an external optimiser such as ANTs or
elastix that reports nothing), so the log never stays silent longer than that.

When the stream is a terminal and ``tqdm`` is installed, a tqdm bar replaces the lines (tqdm is
the well-kept standard for bars; without it, or in a log file, plain lines are what a log wants).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

INTERVAL_S = float(os.environ.get("REGISTRATION_CORE_PROGRESS_S", "10"))
"""Longest silence between two lines, seconds (environment variable ``REGISTRATION_CORE_PROGRESS_S``;
0 writes a line at every iteration)."""
HEARTBEAT_MIN_S = 1.0
"""Shortest silence after which the heartbeat repeats the last state, seconds."""

_ACTIVE: list[Progress] = []
_ACTIVE_LOCK = threading.Lock()


def _clock(seconds: float) -> str:
    """``h:mm:ss`` of a duration."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}"


def memory_text() -> str:
    """Current and peak resident memory of this process (and CUDA allocation when torch uses CUDA), MB."""
    import resource

    import psutil

    rss = psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    text = f"rss {rss:.0f} MB (peak {max(peak, rss):.0f} MB)"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", cuda {torch.cuda.memory_allocated() / 2**20:.0f} MB (peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MB)"
    return text


class Progress:
    """The state of one computation and its progress lines.

    ``label`` names it (``register nodeo``); ``unit`` is what is counted (``iteration``, ``step``);
    ``total`` the count when known. :meth:`update` records ``done`` units (and the loss terms) and
    writes a line when :data:`INTERVAL_S` passed since the last one; :meth:`heartbeat` writes the last
    state again after a silence. Thread-safe.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "iteration", stream: TextIO | None = None,
                 interval_s: float = INTERVAL_S) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval_s = interval_s
        self.done: int | None = None
        self.terms: dict[str, float] = {}
        self.start = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, done) of the first update, for the rate
        self._last_line = self.start
        self._lock = threading.Lock()
        self._bar = self._make_bar()

    def _make_bar(self) -> Any:
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total, desc=self.label, unit=self.unit[:4], file=self.stream, dynamic_ncols=True)

    def rate(self, now: float) -> float | None:
        """Units per second since the first update (None before two updates)."""
        if self._first is None or self.done is None or now <= self._first[0] or self.done <= self._first[1]:
            return None
        return (self.done - self._first[1]) / (now - self._first[0])

    def line(self, now: float | None = None, status: str | None = None) -> str:
        """The progress line of the current state (``status`` replaces the count, e.g. ``started``)."""
        now = time.monotonic() if now is None else now
        parts = [f"[{time.strftime('%H:%M:%S')}] {self.label}:"]
        if status is not None:
            parts[0] += f" {status}"
        elif self.done is None:
            parts[0] += " running"
        else:
            count = f" {self.unit} {self.done}"
            if self.total:
                count += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
            parts[0] += count
        fields = [", ".join(f"{key} {_number(value)}" for key, value in self.terms.items())] if self.terms else []
        rate = self.rate(now)
        if rate is not None:
            fields.append(f"{rate:.3g} {self.unit[:2]}/s")
            if self.total and self.done is not None and status is None:
                fields.append(f"ETA {_clock((self.total - self.done) / rate)}")
        fields.append(f"elapsed {_clock(now - self.start)}")
        fields.append(memory_text())
        return " | ".join([parts[0], *fields])

    def _write(self, text: str, now: float) -> None:
        self._last_line = now
        if self._bar is None:
            print(text, file=self.stream, flush=True)

    def update(self, done: int, of: int | None = None, **terms: float) -> None:
        """``done`` units are finished (``of``: the total count, when it became known); ``terms``:
        loss values (``total`` among them)."""
        now = time.monotonic()
        with self._lock:
            if of is not None:
                self.total = of
            if self._first is None:
                self._first = (now, done)
            previous = self.done or 0
            self.done = done
            self.terms = {key: float(value) for key, value in terms.items()}
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.update(max(done - previous, 0))
                self._bar.set_postfix(self.terms, refresh=False)
            if now - self._last_line >= self.interval_s:
                self._write(self.line(now), now)

    def heartbeat(self) -> None:
        """Write the last state again when nothing was written for ``interval_s`` (at least
        :data:`HEARTBEAT_MIN_S`: with a short interval the iterations' own lines suffice)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_line >= max(self.interval_s, HEARTBEAT_MIN_S):
                self._write(self.line(now), now)

    def say(self, status: str) -> None:
        """Write one line with ``status`` in place of the count (``done``)."""
        now = time.monotonic()
        with self._lock:
            self.close()
            self._write(self.line(now, status), now)

    def close(self) -> None:
        """Close the tqdm bar, if any (plain lines follow)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def progress(label: str, total: int | None = None, unit: str = "iteration", stream: TextIO | None = None,
             interval_s: float = INTERVAL_S) -> Iterator[Progress]:
    """Report the progress of the block: lines from :func:`report` and the heartbeat at least every
    ``interval_s``, and a ``done`` line when it ends normally. An exception ends it without a line
    of its own: the command's one ``error:`` line (or the traceback of a crash) says what happened."""
    state = Progress(label, total, unit, stream, interval_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(1.0, max(interval_s, 0.05))):
            state.heartbeat()

    thread = threading.Thread(target=beat, name=f"progress {label}", daemon=True)
    with _ACTIVE_LOCK:
        _ACTIVE.append(state)
    thread.start()
    try:
        yield state
    except BaseException:
        stop.set()
        thread.join()
        state.close()
        raise
    else:
        stop.set()
        thread.join()
        state.say("done")
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(state)


def report(done: int, of: int | None = None, **terms: float) -> None:
    """Tell the innermost :func:`progress` that ``done`` units of ``of`` are finished, with the
    current loss ``terms``; nothing happens outside :func:`progress`."""
    with _ACTIVE_LOCK:
        state = _ACTIVE[-1] if _ACTIVE else None
    if state is not None:
        state.update(done, of, **terms)
