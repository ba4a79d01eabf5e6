"""This host's clock against the store's: a refused request is measured against the store's
``Date`` header, and from then on requests are signed with the store's time (as AWS's SDKs for
Java and JavaScript correct a skew), so uploads go on until the host's clock is fixed."""

from __future__ import annotations

import datetime
import email.utils
import logging
import time

log = logging.getLogger("s3spool.store")

#: seconds added to this host's clock when signing: the store's time minus the host's
offset = 0.0
#: a refused request from a clock further off than this is put down to the clock (S3 allows
#: 15 min; a refusal for another cause is told after the correction, by the retry)
TOLERANCE = 60.0


def skew(date: str | None) -> float | None:
    """The store's time minus this host's (as it signs) from an answer's ``Date`` header;
    None within ``TOLERANCE`` or without a readable header."""
    if not date:
        return None
    try:
        store = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    off = store - (time.time() + offset)
    return off if abs(off) > TOLERANCE else None


def correct(by: float) -> None:
    """Sign with the store's time from now on: our signer (``sigv4``) and botocore's."""
    global offset
    offset += by
    import botocore.auth

    botocore.auth.get_current_datetime = _store_now  # botocore has no setting for it
    if abs(offset) > TOLERANCE:
        log.warning(
            "%s: signing requests with the store's time; set this host's clock right (NTP)",
            words(offset),
        )
    else:
        log.warning("this host's clock agrees with the store's again: signing with its time")


def words(store_minus_host: float) -> str:
    """``this host's clock is 30 min ahead of the store's``."""
    amount = abs(store_minus_host)
    if amount < 90:
        size = f"{amount:.0f} s"
    elif amount < 7200:
        size = f"{amount / 60:.0f} min"
    else:
        size = f"{amount / 3600:.1f} h"
    side = "ahead of" if store_minus_host < 0 else "behind"
    return f"this host's clock is {size} {side} the store's"


def _store_now(remove_tzinfo: bool = True) -> datetime.datetime:
    """botocore's ``get_current_datetime`` with the offset."""
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return now.replace(tzinfo=None) if remove_tzinfo else now
