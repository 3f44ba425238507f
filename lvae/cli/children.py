"""Commands that run other commands (lvae.paper runs lvae.reproduce, which runs the sweeps): a signal to the
parent reaches its child, and the parent ends only once the child has stopped.

Without this, SIGTERM to `python -m lvae.paper` (or `make paper`) ended the parent alone: its children
trained on, holding their run folders, and an immediate rerun was refused ("in use by process ...").
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from typing import Iterator

from lvae.run.outcomes import signal_name

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):  # not an Exception: no `except Exception` on the way may swallow it
    """SIGTERM or SIGINT reached the command (outside `run_child`, which passes it on and waits)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Stopped for the duration (SIGINT would raise KeyboardInterrupt, SIGTERM end the
    process without its clean-up): the command says what it left and exits 128 + N."""
    def stop(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_child(command: list[str]) -> int:
    """Run `command` to its end and return its exit code. SIGTERM or SIGINT meanwhile is passed on to it (a
    SIGINT from a terminal reaches it anyway, which its runs take as one signal) and, once it has stopped
    (its runs checkpointed and unlocked), raises Stopped."""
    child = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Stopped(received[0])
    return code


def exit_stopped(stopped: Stopped, left: str) -> None:
    """One message for a command stopped by a signal, saying what it `left`; exit 128 + N."""
    print(f"{stopped}; {left}. Run the same command again to go on.", file=sys.stderr)
    sys.exit(128 + stopped.signum)
