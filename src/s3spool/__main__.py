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
    # No cyclic collection while the long-lived start-up objects are built: the service turns it
    # back on once its stores are open, other commands once chosen (bench/RESULTS.md).
    gc.disable()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _remember)
    from s3spool.cli import main as cli_main

    code = cli_main(early_signals=_early_signals)
    # Skip the interpreter's slow teardown (bench/RESULTS.md): every file is closed by now.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or stdio closed
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
