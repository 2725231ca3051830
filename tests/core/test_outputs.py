"""core.outputs: a signal behind a cleanup error is still an interruption; signal handlers are
swapped and restored, and inside a native call block a signal ends the process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from registration_core.core.outputs import Interrupted, interruption_of, signals_as_exceptions, signals_end_the_process


def _oserror_while_handling(first: BaseException) -> OSError:
    """The OSError raised by cleanup code that runs while ``first`` propagates (its ``__context__``)."""
    try:
        try:
            raise first
        finally:
            raise OSError(9, "Bad file descriptor")
    except OSError as exc:
        return exc


def test_an_oserror_raised_during_the_interruptions_cleanup_is_the_interruption() -> None:
    exc = _oserror_while_handling(Interrupted(signal.SIGINT))
    found = interruption_of(exc)
    assert isinstance(found, Interrupted) and found.signum == signal.SIGINT


def test_an_oserror_of_its_own_is_not_an_interruption() -> None:
    assert interruption_of(_oserror_while_handling(ValueError("no signal"))) is None
    assert interruption_of(OSError(28, "No space left on device")) is None


def test_a_cycle_of_contexts_ends() -> None:
    first, second = OSError("a"), OSError("b")
    first.__context__, second.__context__ = second, first
    assert interruption_of(first) is None


def test_handlers_are_swapped_and_restored_when_nested() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with signals_as_exceptions():
        outer = signal.getsignal(signal.SIGTERM)
        with signals_end_the_process():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) == outer != before
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize(("inner", "returncode"), [("signals_end_the_process", -signal.SIGTERM), ("nullcontext", 3)])
def test_a_signal_inside_a_native_call_block_ends_the_process(inner: str, returncode: int) -> None:
    """Inside signals_end_the_process the signal kills at once; outside it, it is an Interrupted
    the code can clean up after (here: exit 3)."""
    code = (
        "import os, signal, sys, time\n"
        "from contextlib import nullcontext\n"
        "from registration_core.core.outputs import Interrupted, signals_as_exceptions, signals_end_the_process\n"
        "try:\n"
        "    with signals_as_exceptions():\n"
        f"        with {inner}():\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "            time.sleep(0.5)\n"
        "        print('after the block')\n"
        "except Interrupted:\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == returncode, result.stderr
    assert result.stdout == ""
