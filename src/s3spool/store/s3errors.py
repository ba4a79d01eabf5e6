"""The one translation of S3 answers and botocore/aiohttp errors into ``errors.py``'s classes,
for the store and the sender alike (so they cannot classify one answer two ways), and the words
that name a store-wide cause, for ``check`` and the service alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from s3spool import errors
from s3spool.store import clock

#: The store refused the request as such (credentials, policy, bucket): one object's
#: problem if the bucket still answers a probe, the whole store's if it does not.
REFUSED_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "InvalidBucketName",
    }
)
SLOWDOWN_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "BadDigest",
        "InvalidDigest",
        "XAmzContentSHA256Mismatch",
        "IncompleteBody",
        "OperationAborted",
    }
)
PERMANENT_CODES = frozenset(
    {"EntityTooLarge", "EntityTooSmall", "KeyTooLongError", "InvalidStorageClass", "InvalidPart"}
)
#: A store without an API answers one of these (or 501) instead of an S3 error.
UNSUPPORTED_CODES = frozenset({"NotImplemented", "MethodNotAllowed", "NotSupported"})

#: The causes a store-wide fault is named by (``store_down`` words the rest).
NO_CREDENTIALS = (
    "no credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, S3SPOOL_PROFILE, "
    "or the host's role)"
)
UNREACHABLE = "the endpoint is unreachable (S3SPOOL_ENDPOINT_URL, network, proxy?)"
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,40})</Region>")


def classify_error(
    code: str, status: int, msg: str, date: str | None = None, signed_with: float | None = None
) -> errors.UploadError:
    """The pipeline's error class for an S3 error code and HTTP status.  ``date``: the answer's
    ``Date`` header (a refusal from a store whose clock is far off ours corrects ours);
    ``signed_with``: ``clock.offset`` when the request was signed."""
    if status in (400, 403):  # RequestTimeTooSkewed, AccessDenied, a HEAD's bare 400 or 403
        skew = clock.skew(date)
        if skew is not None:
            clock.correct(skew)
            return errors.ClockSkewed(f"{clock.words(skew)}: {msg}", skew=skew)
        if signed_with is not None and signed_with != clock.offset:
            # signed before another answer corrected the clock: try again
            return errors.ClockSkewed(msg, skew=0.0)
    if code in SLOWDOWN_CODES or status == 503:
        return errors.SlowDown(msg, reason="slowdown")
    if code == "NoSuchUpload":
        return errors.NoSuchUpload(msg, reason=code)
    if code in TRANSIENT_CODES:  # before the 403 rule: RequestTimeTooSkewed is a 403
        return errors.TransientError(msg, reason=code)
    if code in REFUSED_CODES or status == 403:
        # a HEAD's error has no body: botocore names it "403"
        return errors.Refused(msg, reason=code if code in REFUSED_CODES else "AccessDenied")
    if code in UNSUPPORTED_CODES or status == 501:
        return errors.Unsupported(msg, reason="not_implemented")
    if code in PERMANENT_CODES:
        return errors.PermanentError(msg, reason=code)
    if status >= 500 or status in (408, 429):
        return errors.TransientError(msg, reason=code or f"http_{status}")
    if code == "PreconditionFailed" or status == 412:
        return errors.PreconditionFailed(msg, reason="precondition_failed")
    if code in ("NoSuchKey", "NotFound") or status == 404:
        return errors.NotFound(msg, reason=code or "http_404")
    if status == 400:
        return errors.BadRequest(msg, reason=code or "http_400")
    return errors.PermanentError(msg, reason=code or f"http_{status}")


def parse_error_body(body: bytes) -> tuple[str, str, str | None]:
    """(code, message, region) of an S3 XML error body; empty strings where absent."""
    code_m, msg_m, region_m = _CODE.search(body), _MESSAGE.search(body), _REGION.search(body)
    return (
        code_m.group(1).decode(errors="replace") if code_m else "",
        msg_m.group(1).decode(errors="replace") if msg_m else "",
        region_m.group(1).decode() if region_m else None,
    )


@cache
def _aiohttp_as_botocore() -> tuple[tuple[type[BaseException], str], ...]:
    import aiohttp

    return (
        (aiohttp.ClientProxyConnectionError, "ProxyConnectionError"),
        (aiohttp.ClientHttpProxyError, "ProxyConnectionError"),
        (aiohttp.ConnectionTimeoutError, "ConnectTimeoutError"),
        (aiohttp.ClientConnectorError, "EndpointConnectionError"),
    )


def translate(
    exc: BaseException, what: str, signed_with: float | None = None
) -> errors.UploadError:
    """Map a botocore / aiohttp / OS error to the pipeline's classes (``signed_with``: see
    ``classify_error``)."""
    from botocore import exceptions as bex

    if isinstance(exc, errors.UploadError):
        return exc
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        msg = f"{what}: {code or status} {err.get('Message') or ''}".strip()
        date = (meta.get("HTTPHeaders") or {}).get("date")
        return classify_error(code, status, msg, date, signed_with)
    import aiohttp

    if isinstance(exc, bex.SSLError | aiohttp.ClientSSLError):
        # a certificate the CA bundle does not trust will not become trusted by retrying
        return errors.StoreUnavailable(f"{what}: TLS: {exc}", reason="tls")
    # the signed sender's own requests raise aiohttp's errors: named as botocore names them
    for aio, named in _aiohttp_as_botocore():
        if isinstance(exc, aio):
            return errors.Unreachable(f"{UNREACHABLE}: {what}: {exc}", reason=named)
    reason = type(exc).__name__
    if isinstance(
        exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError
    ):
        return errors.NoCredentials(f"{NO_CREDENTIALS}: {what}: {exc}", reason=reason)
    if isinstance(
        exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ProxyConnectionError
    ):
        return errors.Unreachable(f"{UNREACHABLE}: {what}: {exc}", reason=reason)
    if isinstance(exc, bex.InvalidRegionError):
        return errors.StoreUnavailable(f"{what}: {exc}", reason=reason)
    if isinstance(exc, bex.BotoCoreError | ConnectionError | TimeoutError | OSError):
        return errors.TransientError(
            f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__
        )
    if isinstance(exc, aiohttp.ClientError):
        return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}", reason="connection")
    return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__)


def no_answer(what: str, seconds: float) -> errors.Unreachable:
    """A request that got no answer within ``seconds`` (a probe's or check's own bound)."""
    return errors.Unreachable(
        f"{UNREACHABLE}: {what}: no answer within {seconds:.0f}s", reason="timeout"
    )


def store_down(err: errors.UploadError, bucket: str) -> errors.StoreUnavailable:
    """The whole store is unusable because of ``err`` (what HeadBucket got): the class that
    names the cause and the message an operator reads, in ``check`` and the service alike."""
    if isinstance(err, errors.StoreUnavailable):
        return err  # no connection, no credentials, TLS: named where it was translated
    if isinstance(err, errors.NotFound):
        msg = f"bucket {bucket!r} does not exist (S3SPOOL_DESTINATION): {err}"
        return errors.NoBucket(msg, reason=err.reason)
    if isinstance(err, errors.Refused):
        msg = (
            f"access to bucket {bucket!r} denied: {err} (the credentials were refused, or the "
            "bucket policy denies s3:ListBucket, which HeadBucket needs)"
        )
        return errors.AccessRefused(msg, reason=err.reason)
    return errors.StoreUnavailable(str(err), reason=err.reason)


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Raise what a request to the store raises as ``errors.py``'s classes, ``what`` named."""
    signed_with = clock.offset
    try:
        yield
    except Exception as exc:
        raise translate(exc, what, signed_with) from None
