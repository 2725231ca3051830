"""core.outputs: a signal behind a cleanup error is still an interruption."""

from __future__ import annotations

import signal

from registration_core.core.outputs import Interrupted, interruption_of


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
