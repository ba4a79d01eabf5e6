"""Start a tool from a small process, reap it with wait4, report the rusage.

Run as ``python -I -S _spawn.py RESULT_FD TOOL ARGS...`` (stdlib only, no site,
to stay small). Why not spawn the tool from the harness directly: Linux keeps
the pre-exec address space's RSS high-water mark in the process's ru_maxrss,
so every tool spawned by the harness (which holds a 128 MiB data pool) would
report at least the harness's RSS. Spawned from here, the floor is this
process's ~8 MiB.

SIGTERM/SIGINT are forwarded to the tool, so the harness can stop a service
through us; so is SIGHUP (case b: the service re-reads its configuration). The
result (JSON) goes to RESULT_FD once the tool has exited.
"""

import contextlib
import json
import os
import signal
import sys
import time

_pid = 0
_pending: list[int] = []


def _forward(signum: int, _frame: object) -> None:
    if not _pid:
        # Arrived before the tool exists: deliver as soon as it does.
        _pending.append(signum)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(_pid, signum)


def main() -> int:
    global _pid
    result_fd = int(sys.argv[1])
    argv = sys.argv[2:]
    os.set_inheritable(result_fd, False)  # the tool must not hold it open
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGHUP, _forward)
    start = time.monotonic()
    # Python ignores SIGPIPE/SIGXFSZ; ignored dispositions survive exec, so
    # restore the defaults the tool would get from a shell.
    _pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    for signum in _pending:
        os.kill(_pid, signum)
    _, status, ru = os.wait4(_pid, 0)  # Python retries this on EINTR
    end = time.monotonic()
    result = {
        "start": start,
        "end": end,
        "returncode": os.waitstatus_to_exitcode(status),
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
    }
    with os.fdopen(result_fd, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
