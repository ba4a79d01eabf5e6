"""Entry point (``s3spool`` and ``python -m s3spool``).

Signal handlers are installed before the heavy imports: a SIGTERM that arrives
while the process is still starting is remembered and handled as a drain
request, instead of killing the process with the default action.
"""

from __future__ import annotations

import signal

_early_signals: list[int] = []


def _remember(sig: int, _frame: object) -> None:
    _early_signals.append(sig)


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember)
    from .cli import main as cli_main

    return cli_main(early_signals=_early_signals)


if __name__ == "__main__":
    raise SystemExit(main())
