"""The run's log file, held back until the run is accepted."""

from __future__ import annotations

import logging
import sys


class RunLogFile(logging.FileHandler):
    """The run's log file (Hydra's job log, configs/hydra/job_logging/run_log.yaml), written only once
    the run is accepted (`open_run_logs`): until then its records wait in memory, so that a launch that
    is refused (another process holds the run, its config does not fit the record there, bad input)
    writes nothing into the run folder; the console shows them either way. A write that fails (a full
    disk) is reported once, in one line, instead of a traceback per record."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []  # None once the run is accepted
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        elif not self.failed:
            try:
                super().emit(record)
            except Exception:  # opening the file is not covered by the handler's own error handling
                self.handleError(record)

    def open_for_the_run(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"could not write the run's log {self.baseFilename} ({reason}): the rest of the log goes to the "
                  "console only.", file=sys.stderr)


def open_run_logs() -> None:
    """The run is accepted: its log file (if the process logs to one) receives what was held and all after."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLogFile):
            handler.open_for_the_run()


