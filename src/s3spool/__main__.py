"""Entry point.  Signal handlers go in before the heavy imports, so a SIGTERM (or SIGHUP)
that arrives during start-up is remembered and handled, not fatal."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys

_early_signals: list[int] = []


def _remember(sig: int, _frame: object) -> None:
    _early_signals.append(sig)


def main() -> int:
    # No cyclic collection while modules, the settings model and the botocore client are
    # built: about 150,000 long-lived objects and little garbage. The service freezes them
    # and turns collection back on once its stores are open (service.py), every other
    # command as soon as it is chosen (cli.py). Measured in bench/RESULTS.md.
    gc.disable()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _remember)
    from s3spool.cli import main as cli_main

    code = cli_main(early_signals=_early_signals)
    # Leave without the interpreter's teardown: after a large `run --once` it spends
    # ~0.2 s freeing objects one by one (bench/RESULTS.md). Every file is written and
    # closed by now; what is buffered in logging and stdio is flushed here.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or stdio closed
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
