"""Wall-clock readings that a clock step cannot turn into early action.

Intervals (backoffs, timers, probe periods) use the monotonic clock.  File ages
cannot: a file's mtime and ctime are wall-clock times.  ``cautious_now`` is the
wall clock, but never ahead of where it would be had it only run forward with
the monotonic clock since this process started.  A forward step (NTP after a
suspend, an operator's ``date -s``) then makes no file look older than it is:
``HOLD_FOR`` does not release a file early and ``DELETE_AFTER`` removes nothing
early from done/; both are only delayed, by at most the size of the step.  A
backward step makes files look younger (delayed too); a file dated in the
future has ``HOLD_FOR`` counted from when it was first seen (service.py).  A step
while s3spool was not running cannot be seen.
"""

from __future__ import annotations

import time

_WALL0 = time.time()
_MONO0 = time.monotonic()


def cautious_now() -> float:
    """``time.time()``, capped at the start time plus the monotonic time elapsed since."""
    return min(time.time(), _WALL0 + (time.monotonic() - _MONO0))
