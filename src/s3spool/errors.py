"""Every exception s3spool raises on purpose.  OSError and botocore's errors are translated
at the boundary that meets them (spool/, store/); callers catch by class, and ``reason`` is only
the label in logs, metrics and reason files.  The pipeline tells apart: ConfigError (cannot
start), TransientError (retry after a backoff; LocalFault pauses one spool until its directory
works again), PermanentError (to failed/ at once), Refused (a probe decides whether the file or
the store is at fault) and StoreUnavailable (intake pauses, no file is blamed).
"""

from __future__ import annotations

# Exit codes of every command, in one table; docs/operations.md "Exit codes" is generated from
# EXIT_MEANINGS by scripts/settings_doc.py.
EXIT_OK = 0
EXIT_NOT_OK = 1  # run --once: a file failed; check: a check failed; status: a dir unreadable
EXIT_USAGE = 2  # argparse's own
EXIT_STORE_UNAVAILABLE = 3  # run --once
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: run --once left work: files (a local fault, a bound), events
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h

EXIT_MEANINGS: dict[int, str] = {
    EXIT_OK: "success: `run` stopped by SIGTERM/SIGINT after draining; `run --once` with no "
    "failed file; `check`, `status`, `enqueue`, `requeue` and `config` without problems",
    EXIT_NOT_OK: "`run --once`: at least one file failed (moved to `failed/`, removed, or "
    "resubmitted); `check`: a check failed; `status`: a directory could not be read; "
    "`enqueue`: a file was not enqueued; `requeue`: a file stayed in `failed/`",
    EXIT_USAGE: "usage error: unknown flag or command, or no command; `requeue` without "
    "PATTERN, `--reason` or `--all`",
    EXIT_STORE_UNAVAILABLE: "`run --once`: the store is unavailable (at start or during the "
    "run); the message names the cause and ends with `run s3spool check`",
    EXIT_TEMPFAIL: "`run --once` (EX_TEMPFAIL): work was left for the next run: files left "
    "behind by a local fault (a full, read-only, unwritable or missing spool directory) or by "
    "`MAX_FILES` or `MAX_DURATION`, or notification events not accepted yet. Nothing is lost; "
    "the summary says how many and why. A store fault (3) wins over it, and it wins over "
    "failed files (1)",
    EXIT_CONFIG: "configuration error (EX_CONFIG): an invalid or unknown setting (every "
    "problem listed at once), a spool root that does not exist, an unusable directory, "
    "directories on two filesystems, an `INSTANCE_ID` in use by a live process, an "
    "`HTTP_ADDR` that cannot be bound, `MAX_FILES` or `MAX_DURATION` without `--once`. One "
    "block on stderr, `s3spool: what: why`",
}


class S3SpoolError(Exception):
    """Base class of every error s3spool raises on purpose."""


class ConfigError(S3SpoolError):
    """Settings, directories or templates that keep the service from starting."""


class UploadError(S3SpoolError):
    """An upload of one file did not complete; ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(UploadError):
    """Retry this file later with backoff."""


class SlowDown(TransientError):
    """The store asked us to send fewer requests (503 SlowDown and kin)."""


class FileChanged(TransientError):
    """The file's size or mtime changed while it was being uploaded."""


class Busy(TransientError):
    """A file of that name is still in flight: claim it later."""


class NoSuchUpload(TransientError):
    """The multipart upload is gone (aborted or expired): the file starts again."""


class PermanentError(UploadError):
    """This file cannot be delivered as it is; it belongs in failed/."""


class NotAFile(PermanentError):
    """A symlink or not a regular file (swapped in after the check): left as it is."""


class NotFound(PermanentError):
    """No such key (404)."""


class PreconditionFailed(PermanentError):
    """A conditional write found the key taken (412; OVERWRITE=never)."""


class Unsupported(PermanentError):
    """The store lacks this API (501, NotImplemented)."""


class BadRequest(PermanentError):
    """The store rejected the request as malformed (400), e.g. a header it does not take."""


class LocalFault(TransientError):
    """A spool directory is full, read-only, not writable or gone; that spool pauses."""

    def __init__(self, message: str, *, reason: str, path: str) -> None:
        super().__init__(message, reason=reason)
        self.path = path

    @property
    def no_space(self) -> bool:
        """Only space is missing: renames and unlinks still work."""
        return self.reason in ("ENOSPC", "EDQUOT")


class Refused(UploadError):
    """The store refused this request; a probe decides whether the file or the store is at fault."""


class ClockSkewed(TransientError):
    """The store refused a request dated too far from its own clock (``store.clock`` corrects
    the clock, so a retry goes through); ``skew``: the store's time minus this host's, in s."""

    def __init__(self, message: str, *, skew: float) -> None:
        super().__init__(message, reason="clock_skew")
        self.skew = skew


class StoreUnavailable(UploadError):
    """The whole store is unusable; pause intake until a probe succeeds.  Its subclasses name
    the cause (``store.s3errors`` maps them and words the message)."""


class NoBucket(StoreUnavailable):
    """The bucket does not exist."""


class AccessRefused(StoreUnavailable):
    """The store refused the credentials, or a policy denies access to the bucket."""


class NoCredentials(StoreUnavailable):
    """No credentials were found to sign with."""


class Unreachable(StoreUnavailable):
    """No connection to the endpoint, or no answer in time."""


class FileVanished(S3SpoolError):
    """A claimed file disappeared (someone else removed it); nothing to deliver."""
