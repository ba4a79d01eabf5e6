"""Settings: one pydantic-settings model read from ``S3SPOOL_*`` variables and flags (flags win).
``catalog.py`` derives each flag from a field: ``S3SPOOL_KEY_FORMAT`` is ``--key-format``."""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from s3spool.config.catalog import ENV_PREFIX
from s3spool.config.codecs import DEFAULT_SKIP, CodecName, ModeName, resolve_level
from s3spool.config.formats import (
    BandwidthLimit,
    Duration,
    EndpointUrl,
    OptionalPath,
    Pairs,
    PathList,
    Region,
    Size,
    StrList,
)
from s3spool.config.notifiers import Notifiers
from s3spool.config.options import (
    check_header_value,
    check_key_format,
    check_metadata,
    check_option_value,
    check_tags,
)

#: Fields a ``KEY_FORMAT`` may use; ``keys.py`` fills them.
KEY_FIELDS = frozenset(
    {"fname", "relpath", "dirname", "spool_dir", "uuid1", "uuid4", "now", "hostname"}
    | {f"{p}_{u}" for p in ("m", "c") for u in ("YYYY", "MM", "DD", "hh", "mm", "ss")}
)

MIB = 1024 * 1024
MAX_PUT_SIZE = 5 * 1024 * MIB  # S3's largest PutObject, and its largest part
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
]

#: S3's canned ACLs of an object
CannedAcl = Literal[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
]

#: Settings of the whole process; every other setting may differ per route (config.py).
GLOBAL_FIELDS = frozenset(
    {"config", "workers", "queue_size", "buffer_limit", "rescan_interval", "cleanup_interval"}
    | {"probe_interval", "shutdown_grace", "instance_id", "http_addr", "max_lag", "fail_rate"}
    | {"log_level", "log_format", "outbox_max_age", "bandwidth_limit", "max_files", "max_duration"}
    | {"hostname"}
)

#: Every setting in one group, by task: ``--help`` and docs/configuration.md show them so, in
#: this order (config/catalog.py carries it; tests/unit/test_help.py checks that none is missing).
GROUPS: dict[str, tuple[str, ...]] = {
    "config file and run --once": ("config", "max_files", "max_duration"),
    "spools": (
        *("spool_dirs", "incoming_dir", "working_dir", "done_dir", "failed_dir"),
        *("incoming_name", "working_name", "done_name", "failed_name", "recursive"),
        *("rmdir_after", "ignore", "hold_for", "remove_on_success", "remove_on_failure"),
        "delete_after",
    ),
    "destination and store": (
        *("destination", "endpoint_url", "region", "addressing_style", "profile", "ca_bundle"),
        *("verify_ssl", "probe_interval", "checksum", "checksum_compat", "overwrite"),
    ),
    "keys and object options": (
        *("key_format", "hostname", "acl", "storage_class", "sse", "sse_kms_key_id"),
        *("content_type", "metadata", "tags", "cache_control", "content_disposition"),
    ),
    "batching": (
        *("batch", "batch_max_files", "batch_max_bytes", "batch_max_wait", "batch_file_limit"),
        "batch_key_format",
    ),
    "compression": (
        *("compress", "compress_level", "compress_mode", "compress_min_size", "compress_skip"),
    ),
    "limits and tuning": (
        *("bandwidth_limit", "route_bandwidth_limit", "workers", "queue_size"),
        *("rescan_interval", "multipart_threshold", "part_size", "part_concurrency"),
        *("buffer_limit", "retry_attempts", "retry_backoff", "retry_backoff_max", "direct_put"),
        *("connect_timeout", "read_timeout", "cleanup_interval", "abort_multipart_after"),
        "fail_rate",
    ),
    "notifications": ("notify", "outbox_max_age"),
    "service (HTTP, logging)": (
        *("http_addr", "max_lag", "shutdown_grace", "instance_id", "log_level", "log_format"),
    ),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid", validate_default=True
    )

    # --- where files come from --------------------------------------------------------------
    spool_dirs: PathList = Field(
        default_factory=list,
        description="Spool roots (comma-separated or JSON list), which must exist; each holds "
        "incoming/ working/ done/ failed/, created if missing.",
    )
    incoming_dir: OptionalPath = Field(
        None, description="Explicit incoming directory of a single spool (instead of SPOOL_DIRS)."
    )
    working_dir: OptionalPath = Field(
        None, description="Explicit working directory (single spool)."
    )
    done_dir: OptionalPath = Field(None, description="Explicit done directory (single spool).")
    failed_dir: OptionalPath = Field(
        None,
        description="Explicit failed directory (single spool); equal to INCOMING_DIR means "
        "failed files are resubmitted after a backoff.",
    )

    incoming_name: str = Field(
        "incoming", description="Name of incoming/ in each root, e.g. new (an older tool's layout)."
    )
    working_name: str = Field("working", description="Name of working/ inside each root.")
    done_name: str = Field("done", description="Name of done/ inside each root (e.g. completed).")
    failed_name: str = Field("failed", description="Name of failed/ inside each root.")

    # --- where files go -----------------------------------------------------------------------
    destination: str = Field(
        "", description="s3://bucket/prefix (the prefix is a directory) or noop:// (log only)."
    )
    endpoint_url: EndpointUrl = Field(
        None, description="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000."
    )
    region: Region = Field(None, description="Region of the bucket (botocore default chain).")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket addressing style."
    )
    profile: str | None = Field(
        None,
        description="Credentials profile of the shared AWS config files (default: botocore's "
        "chain, AWS_PROFILE included).",
    )
    ca_bundle: OptionalPath = Field(
        None,
        description="PEM file of the CA certificates that sign the store's TLS certificate "
        "(like the aws cli's --ca-bundle; default: botocore's AWS_CA_BUNDLE or the profile's "
        "ca_bundle, else the system's).",
    )
    verify_ssl: bool = Field(
        True,
        description="Verify the store's TLS certificate; --no-verify-ssl as with the aws cli "
        "(only for testing: anyone on the path can then read and change uploads).",
    )
    probe_interval: Duration = Field(
        30.0,
        description="While no request reaches the store, probe it (HeadBucket) this often; "
        "a failed probe pauses intake and makes /readyz unready. 0: off.",
    )
    key_format: str = Field(
        "{fname}",
        description="Object key template under the prefix; fields: "
        + ", ".join(sorted(KEY_FIELDS))
        + ".",
    )
    acl: CannedAcl | None = Field(None, description="Canned ACL, e.g. private or public-read.")
    storage_class: str | None = Field(None, description="Storage class, e.g. STANDARD_IA.")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption.")
    sse_kms_key_id: str | None = Field(None, description="KMS key id when SSE=aws:kms.")
    content_type: str | None = Field(
        None, description="Content-Type of every object (default: guessed from the name)."
    )
    checksum: Literal["crc32c", "crc32", "sha256", "md5", "none"] = Field(
        "crc32c",
        description="Checksum computed while reading, sent so the store rejects corrupted "
        "bodies, and compared with the store's answer.",
    )
    checksum_compat: bool = Field(
        False,
        description="For stores that reject the newer x-amz-checksum-* headers: send only "
        "Content-MD5 (single-PUT objects still record the configured checksum in metadata).",
    )
    overwrite: Literal["always", "never"] = Field(
        "always",
        description="never: conditional write (If-None-Match: *); an existing object with other "
        "content sends the file to failed/.",
    )

    # --- object options --------------------------------------------------------------------
    metadata: Pairs = Field(
        None,
        description="User metadata (x-amz-meta-*) as k=v pairs (comma-separated, JSON list or "
        "object); values may use the key fields, e.g. source={spool_dir}.",
    )
    tags: Pairs = Field(None, description="Object tags as k=v pairs, like METADATA (at most 10).")
    cache_control: str | None = Field(
        None, description="Cache-Control of every object, e.g. max-age=86400."
    )
    content_disposition: str | None = Field(
        None,
        description="Content-Disposition of every object; may use the key fields, e.g. "
        'attachment; filename="{fname}".',
    )

    # --- recursive spools ------------------------------------------------------------------
    recursive: bool = Field(
        False,
        description="Also take files from subdirectories of incoming/ (watched as they appear, "
        "symlinks never followed); each goes to the same relative path under done/ or failed/, "
        "and KEY_FORMAT can use {relpath} and {dirname}. false: subdirectories are left alone.",
    )
    rmdir_after: Duration = Field(
        3600.0,
        description="RECURSIVE: cleanup removes an empty subdirectory of incoming/ (and of "
        "done/, failed/) once nothing changed in it for this long. 0: never.",
    )

    # --- compression ------------------------------------------------------------------------
    compress: CodecName = Field(
        "none",
        description="Compress uploads (docs/compression-and-bandwidth.md); none: files go as they "
        "are.",
    )
    compress_level: int | None = Field(
        None,
        description="Compression level (default: gzip 6, zstd 3); gzip takes 1 to 9 (1-3 run "
        "on ISA-L, several times faster), zstd 1 to 19.",
    )
    compress_mode: ModeName = Field(
        "suffix",
        description="suffix: the key gets .gz or .zst and the Content-Type says gzip or zstd; "
        "content-encoding: the key stays, with Content-Encoding and the file's Content-Type.",
    )
    compress_min_size: Size = Field(1024, description="Smaller files are uploaded as they are.")
    compress_skip: StrList = Field(
        default_factory=lambda: list(DEFAULT_SKIP),
        description="Glob patterns (any case) of names of compressed data: uploaded as they are.",
    )

    # --- batching ---------------------------------------------------------------------------
    batch: Literal["off", "bundle", "extract"] = Field(
        "off",
        description="Send small files together: bundle: one tar object per batch and an index "
        "object beside it; extract: a tar the store unpacks into one object per file "
        "(Snowball auto-extract: MinIO, JuiceFS; docs/batching.md); off: one object per file.",
    )
    batch_max_files: int = Field(1000, ge=1, description="A batch closes at this many files.")
    batch_max_bytes: Size = Field(
        64 * MIB, description="A batch closes once its files hold this many bytes."
    )
    batch_max_wait: Duration = Field(
        1.0,
        gt=0,
        description="The service closes a batch this long after its first file (run --once "
        "sends what waits at the end).",
    )
    batch_file_limit: Size = Field(
        MIB, description="Larger files are uploaded alone, as without BATCH."
    )
    batch_key_format: str = Field(
        "bundles/{batch_seq}.tar",
        description="Key template of a bundle under the prefix: the key fields but fname, "
        "relpath and dirname (times: of its first file), with {batch_seq} or {uuid4}.",
    )

    # --- bandwidth --------------------------------------------------------------------------
    bandwidth_limit: BandwidthLimit = Field(
        None,
        description="Bytes per second for all uploads of the process together, e.g. 20MiB; off; "
        "or a schedule in local time, e.g. 08:00-18:00=10MiB,18:00-08:00=off "
        "(docs/compression-and-bandwidth.md); SIGHUP re-reads it.",
    )
    route_bandwidth_limit: BandwidthLimit = Field(
        None, description="Like BANDWIDTH_LIMIT, for each route's own uploads, on top of it."
    )

    # --- notifications ----------------------------------------------------------------------
    notify: Notifiers = Field(
        default_factory=list,
        description="Notifiers told of each delivered (and/or failed) file: a JSON list of "
        "tables, [[route.notify]] in the config file (docs/notifications.md).",
    )
    outbox_max_age: Duration | None = Field(
        None, description="If set, /readyz is unready while an event older than this waits."
    )

    # --- how ---------------------------------------------------------------------------------
    workers: int = Field(64, ge=1, le=1024, description="Concurrent file uploads.")
    hold_for: Duration = Field(
        0.0, description="A file is eligible once its mtime is at least this old."
    )
    ignore: StrList = Field(
        default_factory=lambda: [".*", "*.tmp", "*.part"],
        description="Glob patterns of names never picked up.",
    )
    rescan_interval: Duration = Field(60.0, description="Full rescan of every incoming/.")
    queue_size: int = Field(
        1024, ge=1, description="Bound of the in-memory queue of discovered files."
    )
    multipart_threshold: Size = Field(
        64 * MIB,
        description="Files of at least this size use multipart upload (smaller ones go in "
        "one streamed PUT: parts cost a request each and the store's assembly).",
    )
    part_size: Size = Field(
        16 * MIB,
        description="Multipart part size (5MiB to 5GiB); larger for a file that would need "
        "more than 10,000 parts.",
    )
    part_concurrency: int = Field(4, ge=1, le=64, description="Parts of one file in flight.")
    buffer_limit: Size = Field(
        128 * MIB, description="Upper bound on file bytes held in memory by all uploads together."
    )
    retry_attempts: int = Field(
        6, ge=1, le=100, description="Attempts per file for transient errors before failed/."
    )
    retry_backoff: Duration = Field(
        0.5,
        description="Backoff of a failed upload: the first retry follows within 25 ms, the "
        "next after this delay, doubling with jitter (SlowDown: from this delay at once).",
    )
    retry_backoff_max: Duration = Field(60.0, description="Longest retry delay.")
    direct_put: bool = Field(
        True,
        description="Send object bodies (PutObject, UploadPart) signed as botocore signs them "
        "over the client's own connection pool, TLS and proxy, without botocore's per-request "
        "pipeline (about half its CPU per small file); false: every request takes botocore's "
        "full pipeline.",
    )
    # 0 would time out every request (and a 0 CLEANUP_INTERVAL spin): more than 0
    connect_timeout: Duration = Field(10.0, gt=0, description="Connection timeout to the store.")
    read_timeout: Duration = Field(60.0, gt=0, description="Read timeout of one request.")

    # --- after the upload ------------------------------------------------------------------
    remove_on_success: bool = Field(False, description="Unlink instead of moving to done/.")
    remove_on_failure: bool = Field(
        False, description="Unlink instead of moving to failed/ (the file is lost!)."
    )
    delete_after: Duration = Field(
        3600.0, description="Cleanup removes done/ files this long after they reached done/."
    )
    cleanup_interval: Duration = Field(
        60.0, gt=0, description="How often cleanup and dead-instance recovery run."
    )
    abort_multipart_after: Duration = Field(
        86400.0, description="Abort s3spool's multipart uploads older than this."
    )

    # --- process -----------------------------------------------------------------------------
    config: OptionalPath = Field(
        None,
        description="TOML file of settings and [[route]] tables (docs/configuration.md); "
        "flags and variables override it.",
    )
    shutdown_grace: Duration = Field(
        30.0, description="On SIGTERM/SIGINT, time for in-flight uploads to finish."
    )
    instance_id: str | None = Field(
        None, description="This instance's working/ subdirectory name (default: host.pid.random)."
    )
    hostname: str | None = Field(
        None,
        description="Value of the {hostname} field (default: this host's name); in a Kubernetes "
        "DaemonSet, the node's name from the downward API (spec.nodeName).",
    )
    max_files: int | None = Field(
        None,
        ge=1,
        description="run --once only: claim at most this many files; the rest waits in "
        "incoming/ for the next run (exit 75).",
    )
    max_duration: Duration | None = Field(
        None,
        gt=0,
        description="run --once only: claim no file after this long; uploads in flight get "
        "SHUTDOWN_GRACE, the rest waits in incoming/ for the next run (exit 75).",
    )
    http_addr: str = Field(
        "127.0.0.1:9108", description="host:port of /metrics, /healthz, /readyz; empty: off."
    )
    max_lag: Duration | None = Field(
        None, description="If set, /readyz is unready while the spool lag exceeds it."
    )
    fail_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Fault injection: fail this fraction of uploads."
    )
    log_level: LogLevel = Field("INFO", description="Log level (any case).")
    log_format: Literal["text", "json"] = Field("text", description="Log format.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self._destination = check_settings(self)
        return self

    _destination: tuple[str, str, str] = PrivateAttr(default=("", "", ""))

    @property
    def scheme(self) -> str:
        """``s3`` or ``noop`` (DESTINATION, parsed once when the settings were read)."""
        return self._destination[0]

    @property
    def bucket(self) -> str:
        return self._destination[1]

    @property
    def prefix(self) -> str:
        """The key prefix, always a "directory" (``a/b/``) or empty."""
        return self._destination[2]

    @property
    def multipart_from(self) -> int:
        """The size from which a file goes multipart: MULTIPART_THRESHOLD, but one PUT takes
        at most 5 GiB, whatever the setting says."""
        return min(self.multipart_threshold, MAX_PUT_SIZE + 1)

    @property
    def hostname_field(self) -> str:
        """The value of ``{hostname}``: HOSTNAME, else this host's name."""
        return self.hostname or socket.gethostname()

    @property
    def resolved_instance_id(self) -> str:
        return self.instance_id or _default_instance_id()


def field_parsers(field: str) -> set[str]:
    """Names of the parsers (``BeforeValidator`` functions) of a setting: ``parse_size``,
    ``parse_duration``, ...; what kind of value it takes."""
    info = Settings.model_fields[field]
    names: set[str] = set()
    stack: list[Any] = [*info.metadata, info.annotation]
    while stack:
        item = stack.pop()
        func = getattr(item, "func", None)
        if func is not None:
            names.add(getattr(func, "__name__", ""))
        stack.extend(getattr(item, "__metadata__", ()))
        stack.extend(get_args(item))
    return names


def check_settings(s: Settings) -> tuple[str, str, str]:
    """The checks across settings; a ``ValueError`` holds one line per problem, each naming
    its setting first (``field: text``, as ``validation_problems`` expects).  Returns the
    parsed destination."""
    problems: list[str] = []
    destination = ("", "", "")
    try:
        if not s.destination:
            raise ValueError("destination: required (s3://bucket/prefix or noop://)")
        destination = parse_destination(s.destination)
    except ValueError as exc:
        problems.append(str(exc))
    checks = (_check_key_format, _check_spools, _check_numbers, _check_store, _check_dir_names)
    for check in (*checks, _check_object_options, _check_compress, _check_batch):
        try:
            check(s)
        except ValueError as exc:
            problems.extend(str(exc).splitlines())
    if problems:
        raise ValueError("\n".join(problems))
    return destination


def _check_key_format(s: Settings) -> None:
    check_key_format(s.key_format, KEY_FIELDS)


#: fields a BATCH_KEY_FORMAT may use: a bundle has no one file name
BATCH_KEY_FIELDS = (KEY_FIELDS - {"fname", "relpath", "dirname"}) | {"batch_seq"}


def _check_batch(s: Settings) -> None:
    fields = check_key_format(s.batch_key_format, BATCH_KEY_FIELDS, "batch_key_format")
    if not fields & {"batch_seq", "uuid4"}:
        raise ValueError(
            "batch_key_format: needs {batch_seq} or {uuid4}, or two bundles could get one key"
        )
    if s.batch == "off":
        return
    if s.batch_file_limit > s.batch_max_bytes:
        raise ValueError("batch_file_limit: must not exceed BATCH_MAX_BYTES")
    # bundle: a member's METADATA, TAGS and CONTENT_DISPOSITION go into its index line
    options = (
        *("metadata", "tags", "content_disposition", "cache_control", "content_type"),
        *("acl", "storage_class", "sse"),
    )
    per_file = [name for name in options if getattr(s, name) not in (None, "none")]
    if s.batch == "extract" and per_file:
        # the store makes the objects from the tar: no request carries a member's headers
        raise ValueError(
            f"batch: {', '.join(n.upper() for n in per_file)} apply to each file's own object, "
            "and the store unpacks the tar, and no request carries a file's own headers; not "
            "supported with BATCH=extract"
        )
    if s.compress != "none" and s.compress_mode == "content-encoding":
        raise ValueError(
            "batch: COMPRESS_MODE=content-encoding needs a Content-Encoding header on each "
            f"file's own object, and with BATCH={s.batch} no request carries one; members are "
            "compressed with COMPRESS_MODE=suffix (their keys end in .gz or .zst)"
        )
    if s.batch == "extract" and s.overwrite == "never":
        raise ValueError(
            "batch: OVERWRITE=never needs a conditional write per object; the store writes "
            "the objects it unpacks unconditionally"
        )


def _check_compress(s: Settings) -> None:
    s.compress_level = resolve_level(s.compress, s.compress_level)


def _check_numbers(s: Settings) -> None:
    if not 5 * MIB <= s.part_size <= MAX_PUT_SIZE:
        raise ValueError("part_size: must be between 5MiB and 5GiB (S3 limits)")
    if s.retry_backoff_max < s.retry_backoff:
        raise ValueError("retry_backoff_max: must be at least RETRY_BACKOFF")


def _check_store(s: Settings) -> None:
    """What goes into requests and connections as it is written."""
    if s.sse_kms_key_id and s.sse != "aws:kms":
        raise ValueError("sse_kms_key_id: only valid with SSE=aws:kms")
    for name in ("storage_class", "sse_kms_key_id", "content_type"):
        value = getattr(s, name)
        if value:
            check_header_value(f"{name}:", value)
        elif value == "":
            setattr(s, name, None)
    if s.http_addr:
        parse_http_addr(s.http_addr)
    if s.ca_bundle is not None:
        check_ca_bundle(s.ca_bundle)
    for name in ("instance_id", "hostname"):
        value = getattr(s, name)
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError(f"{name}: only letters, digits, '_', '.', '-' are allowed")


def _check_object_options(s: Settings) -> None:
    s.metadata = check_metadata(s.metadata, KEY_FIELDS) if s.metadata else None
    s.tags = check_tags(s.tags, KEY_FIELDS) if s.tags else None
    s.cache_control = s.cache_control or None
    if s.cache_control:
        if "{" in s.cache_control:
            raise ValueError("cache_control: key fields are not allowed here")
        check_option_value("cache_control", "", s.cache_control, header=True, known=set())
    s.content_disposition = s.content_disposition or None
    if s.content_disposition:
        check_option_value(
            "content_disposition", "", s.content_disposition, header=True, known=KEY_FIELDS
        )
    # a bad format spec ({now:%Y}) shows when objectopts renders a sample, at startup


def tls_verify(s: Settings) -> bool | str | None:
    """botocore's ``verify=`` for VERIFY_SSL and CA_BUNDLE: False, a CA file, or None, which
    leaves botocore's own chain (AWS_CA_BUNDLE, the profile's ca_bundle) in charge."""
    if not s.verify_ssl:
        return False
    return str(s.ca_bundle) if s.ca_bundle is not None else None


def _check_spools(s: Settings) -> None:
    """SPOOL_DIRS, or a complete set of explicit directories (every problem at once)."""
    explicit = ("incoming_dir", "working_dir", "done_dir", "failed_dir")
    given = [name for name in explicit if getattr(s, name) is not None]
    if s.spool_dirs and given:
        raise ValueError(
            f"{given[0]}: use either SPOOL_DIRS or INCOMING_DIR/WORKING_DIR/DONE_DIR/FAILED_DIR"
        )
    if s.spool_dirs:
        return
    if not given:
        raise ValueError("spool_dirs: required (or INCOMING_DIR with WORKING_DIR)")
    lead = given[0].upper()
    problems = [f"{n}: required with {lead}" for n in explicit[:2] if getattr(s, n) is None]
    if s.done_dir is None and not s.remove_on_success:
        problems.append(f"done_dir: required with {lead} unless REMOVE_ON_SUCCESS")
    if s.failed_dir is None and not s.remove_on_failure:
        problems.append(f"failed_dir: required with {lead} unless REMOVE_ON_FAILURE")
    if problems:
        raise ValueError("\n".join(problems))


def check_ca_bundle(path: str | Path, setting: str = "ca_bundle") -> None:
    """A readable PEM file (botocore would only fail at the first request, with an
    error that names neither the file nor the setting)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ValueError(f"{setting}: {path} holds no PEM certificate")


def _check_dir_names(s: Settings) -> None:
    """INCOMING_NAME and friends: one directory name each, and different."""
    for name in ("incoming_name", "working_name", "done_name", "failed_name"):
        value = getattr(s, name)
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"{name}: {value!r} must be one directory name")
    # failed_name may equal incoming_name: failed files are then resubmitted
    names = {s.incoming_name, s.working_name, s.done_name}
    if len(names) != 3 or s.failed_name in names - {s.incoming_name}:
        raise ValueError(
            "done_name: incoming/, working/, done/ and failed/ need different names "
            "(failed/ may be incoming/: resubmit)"
        )


@functools.cache
def _default_instance_id() -> str:
    import secrets

    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}.{secrets.token_hex(3)}"


def parse_destination(uri: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b`` → ``("s3", "bucket", "a/b/")``, ``noop://`` → ``("noop", "", "")``:
    the prefix is always a "directory" that never starts with ``/``."""
    bad = next((c for c in uri if c < " " or c == "\x7f"), None)
    if bad is not None:
        raise ValueError(f"destination: {uri!r} holds the control character {bad!r}")
    parts = urlsplit(uri)
    if parts.scheme == "noop":
        return "noop", "", ""
    if parts.scheme != "s3":
        raise ValueError(f"destination: {uri!r} must start with s3:// or noop://")
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,253}[a-z0-9]", bucket or ""):
        why = _bucket_problem(bucket)
        raise ValueError(f"destination: {uri!r} has no valid bucket name: {why}")
    if parts.query or parts.fragment:
        raise ValueError(f"destination: {uri!r} must not have a query or fragment")
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise ValueError(f"destination: {uri!r} must not contain '.' or '..' segments")
    prefix = "/".join(segments)
    return "s3", bucket, f"{prefix}/" if prefix else ""


def _bucket_problem(bucket: str) -> str:
    rule = "bucket names are 3 to 63 lower-case letters, digits, '.' and '-'"
    if not bucket:
        return f"none given (s3://BUCKET/prefix); {rule}"
    if bucket != bucket.lower():
        return f"{bucket!r} has upper-case letters; {rule}"
    bad = next((c for c in bucket if not re.fullmatch(r"[a-z0-9.\-_]", c)), None)
    if bad is not None:
        return f"{bucket!r} holds {bad!r}; {rule}"
    if len(bucket) < 3:
        return f"{bucket!r} is shorter than 3 characters; {rule}"
    if len(bucket) > 255:
        return f"{bucket!r} is longer than 255 characters; {rule}"
    return f"{bucket!r} must start and end with a letter or digit; {rule}"


def parse_http_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http_addr: {addr!r} is not host:port")
    if not re.fullmatch(r"[A-Za-z0-9.\-_:%\[\]]*", host):
        raise ValueError(f"http_addr: {addr!r}: {host!r} is not a host name or IP address")
    return host.strip("[]") or "0.0.0.0", int(port)


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) per error; field is "" when no single setting is at fault."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        text = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        # model-level checks give one line per problem, the field name first: "field: text"
        for msg in text.splitlines() if not loc else [text]:
            field = loc[0] if loc else ""
            if not field and ":" in msg:
                head, _, rest = msg.partition(":")
                if head in Settings.model_fields:
                    field, msg = head, rest.strip()
            if field and field not in Settings.model_fields:
                field, msg = "", f"{'.'.join(loc)}: {msg}"
            out.append((field, msg))
    return out
