"""The one translation of S3 answers and botocore/aiohttp errors into ``errors.py``'s classes,
for the store and the sender alike (so they cannot classify one answer two ways)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from s3spool import errors

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

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,40})</Region>")


def classify_error(code: str, status: int, msg: str) -> errors.UploadError:
    """The pipeline's error class for an S3 error code and HTTP status."""
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


def translate(exc: BaseException, what: str) -> errors.UploadError:
    """Map a botocore / aiohttp / OS error to the pipeline's classes."""
    from botocore import exceptions as bex

    if isinstance(exc, errors.UploadError):
        return exc
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        msg = f"{what}: {code or status} {err.get('Message') or ''}".strip()
        return classify_error(code, status, msg)
    import aiohttp

    if isinstance(exc, bex.SSLError | aiohttp.ClientSSLError):
        # a certificate the CA bundle does not trust will not become trusted by retrying
        return errors.StoreUnavailable(f"{what}: TLS: {exc}", reason="tls")
    # the signed sender's own requests raise aiohttp's errors: named as botocore names them
    for aio, named in _aiohttp_as_botocore():
        if isinstance(exc, aio):
            return errors.StoreUnavailable(f"{what}: {exc}", reason=named)
    if isinstance(
        exc,
        bex.NoCredentialsError
        | bex.PartialCredentialsError
        | bex.CredentialRetrievalError
        | bex.EndpointConnectionError
        | bex.ConnectTimeoutError
        | bex.ProxyConnectionError
        | bex.InvalidRegionError,
    ):
        return errors.StoreUnavailable(f"{what}: {exc}", reason=type(exc).__name__)
    if isinstance(exc, bex.BotoCoreError | ConnectionError | TimeoutError | OSError):
        return errors.TransientError(
            f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__
        )
    if isinstance(exc, aiohttp.ClientError):
        return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}", reason="connection")
    return errors.TransientError(f"{what}: {type(exc).__name__}: {exc}", reason=type(exc).__name__)


@contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Raise what a request to the store raises as ``errors.py``'s classes, ``what`` named."""
    try:
        yield
    except Exception as exc:
        raise translate(exc, what) from None
