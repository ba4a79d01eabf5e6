"""Every setting as the command line shows it, and the names it goes by.

``SETTINGS`` (field, switch, default, help, group), group by group, is written by ``python
scripts/settings_doc.py --write`` from ``settings.Settings`` and ``settings.GROUPS``;
tests/test_docs.py fails when it is stale.  Plain data, so that ``--help`` and parsing flags
import no pydantic (start-up time).
"""

from collections.abc import Iterable

ENV_PREFIX = "S3SPOOL_"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def suggest(name: str, known: Iterable[str]) -> str:
    """``; did you mean X?`` for the known name closest to a mistyped one, else ``""``."""
    import difflib  # only on this error path: --help starts without it

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# generated lines are as long as the help texts they hold
# ruff: noqa: E501
# fmt: off
# --- generated: settings_doc.py ---
SETTINGS: tuple[tuple[str, bool, str, str, str], ...] = (
    ('config', False, 'none', 'TOML file of settings and [[route]] tables (docs/configuration.md); flags and variables override it.', 'config file and run --once'),
    ('max_files', False, 'none', 'run --once only: claim at most this many files; the rest waits in incoming/ for the next run (exit 75).', 'config file and run --once'),
    ('max_duration', False, 'none', 'run --once only: claim no file after this long; uploads in flight get SHUTDOWN_GRACE, the rest waits in incoming/ for the next run (exit 75).', 'config file and run --once'),
    ('spool_dirs', False, 'none', 'Spool roots (comma-separated or JSON list), which must exist; each holds incoming/ working/ done/ failed/, created if missing.', 'spools'),
    ('incoming_dir', False, 'none', 'Explicit incoming directory of a single spool (instead of SPOOL_DIRS).', 'spools'),
    ('working_dir', False, 'none', 'Explicit working directory (single spool).', 'spools'),
    ('done_dir', False, 'none', 'Explicit done directory (single spool).', 'spools'),
    ('failed_dir', False, 'none', 'Explicit failed directory (single spool); equal to INCOMING_DIR means failed files are resubmitted after a backoff.', 'spools'),
    ('incoming_name', False, 'incoming', "Name of incoming/ in each root, e.g. new (an older tool's layout).", 'spools'),
    ('working_name', False, 'working', 'Name of working/ inside each root.', 'spools'),
    ('done_name', False, 'done', 'Name of done/ inside each root (e.g. completed).', 'spools'),
    ('failed_name', False, 'failed', 'Name of failed/ inside each root.', 'spools'),
    ('recursive', True, 'false', 'Also take files from subdirectories of incoming/ (watched as they appear, symlinks never followed); each goes to the same relative path under done/ or failed/, and KEY_FORMAT can use {relpath} and {dirname}. false: subdirectories are left alone.', 'spools'),
    ('rmdir_after', False, '1h', 'RECURSIVE: cleanup removes an empty subdirectory of incoming/ (and of done/, failed/) once nothing changed in it for this long. 0: never.', 'spools'),
    ('ignore', False, '.*,*.tmp,*.part', 'Glob patterns of names never picked up.', 'spools'),
    ('hold_for', False, '0s', 'A file is eligible once its mtime is at least this old.', 'spools'),
    ('remove_on_success', True, 'false', 'Unlink instead of moving to done/.', 'spools'),
    ('remove_on_failure', True, 'false', 'Unlink instead of moving to failed/ (the file is lost!).', 'spools'),
    ('delete_after', False, '1h', 'Cleanup removes done/ files this long after they reached done/.', 'spools'),
    ('destination', False, 'none', 's3://bucket/prefix (the prefix is a directory) or noop:// (log only).', 'destination and store'),
    ('endpoint_url', False, 'none', 'S3-compatible endpoint URL, e.g. http://127.0.0.1:9000.', 'destination and store'),
    ('region', False, 'none', 'Region of the bucket (botocore default chain).', 'destination and store'),
    ('addressing_style', False, 'auto', 'Bucket addressing style.', 'destination and store'),
    ('profile', False, 'none', "Credentials profile of the shared AWS config files (default: botocore's chain, AWS_PROFILE included).", 'destination and store'),
    ('ca_bundle', False, 'none', "PEM file of the CA certificates that sign the store's TLS certificate (like the aws cli's --ca-bundle; default: botocore's AWS_CA_BUNDLE or the profile's ca_bundle, else the system's).", 'destination and store'),
    ('verify_ssl', True, 'true', "Verify the store's TLS certificate; --no-verify-ssl as with the aws cli (only for testing: anyone on the path can then read and change uploads).", 'destination and store'),
    ('probe_interval', False, '30s', 'While no request reaches the store, probe it (HeadBucket) this often; a failed probe pauses intake and makes /readyz unready. 0: off.', 'destination and store'),
    ('checksum', False, 'crc32c', "Checksum computed while reading, sent so the store rejects corrupted bodies, and compared with the store's answer.", 'destination and store'),
    ('checksum_compat', True, 'false', 'For stores that reject the newer x-amz-checksum-* headers: send only Content-MD5 (single-PUT objects still record the configured checksum in metadata).', 'destination and store'),
    ('overwrite', False, 'always', 'never: conditional write (If-None-Match: *); an existing object with other content sends the file to failed/.', 'destination and store'),
    ('key_format', False, '{fname}', 'Object key template under the prefix; fields: c_DD, c_MM, c_YYYY, c_hh, c_mm, c_ss, dirname, fname, hostname, m_DD, m_MM, m_YYYY, m_hh, m_mm, m_ss, now, relpath, spool_dir, uuid1, uuid4.', 'keys and object options'),
    ('hostname', False, 'none', "Value of the {hostname} field (default: this host's name); in a Kubernetes DaemonSet, the node's name from the downward API (spec.nodeName).", 'keys and object options'),
    ('acl', False, 'none', 'Canned ACL, e.g. private or public-read.', 'keys and object options'),
    ('storage_class', False, 'none', 'Storage class, e.g. STANDARD_IA.', 'keys and object options'),
    ('sse', False, 'none', 'Server-side encryption.', 'keys and object options'),
    ('sse_kms_key_id', False, 'none', 'KMS key id when SSE=aws:kms.', 'keys and object options'),
    ('content_type', False, 'none', 'Content-Type of every object (default: guessed from the name).', 'keys and object options'),
    ('metadata', False, 'none', 'User metadata (x-amz-meta-*) as k=v pairs (comma-separated, JSON list or object); values may use the key fields, e.g. source={spool_dir}.', 'keys and object options'),
    ('tags', False, 'none', 'Object tags as k=v pairs, like METADATA (at most 10).', 'keys and object options'),
    ('cache_control', False, 'none', 'Cache-Control of every object, e.g. max-age=86400.', 'keys and object options'),
    ('content_disposition', False, 'none', 'Content-Disposition of every object; may use the key fields, e.g. attachment; filename="{fname}".', 'keys and object options'),
    ('batch', False, 'off', 'Send small files together: bundle: one tar object per batch and an index object beside it; extract: a tar the store unpacks into one object per file (Snowball auto-extract: MinIO, JuiceFS; docs/batching.md); off: one object per file.', 'batching'),
    ('batch_max_files', False, '1000', 'A batch closes at this many files.', 'batching'),
    ('batch_max_bytes', False, '64MiB', 'A batch closes once its files hold this many bytes.', 'batching'),
    ('batch_max_wait', False, '1s', 'The service closes a batch this long after its first file (run --once sends what waits at the end).', 'batching'),
    ('batch_file_limit', False, '1MiB', 'Larger files are uploaded alone, as without BATCH.', 'batching'),
    ('batch_key_format', False, 'bundles/{batch_seq}.tar', 'Key template of a bundle under the prefix: the key fields but fname, relpath and dirname (times: of its first file), with {batch_seq} or {uuid4}.', 'batching'),
    ('compress', False, 'none', 'Compress uploads (docs/compression-and-bandwidth.md); none: files go as they are.', 'compression'),
    ('compress_level', False, 'none', 'Compression level (default: gzip 6, zstd 3); gzip takes 1 to 9 (1-3 run on ISA-L, several times faster), zstd 1 to 19.', 'compression'),
    ('compress_mode', False, 'suffix', "suffix: the key gets .gz or .zst and the Content-Type says gzip or zstd; content-encoding: the key stays, with Content-Encoding and the file's Content-Type.", 'compression'),
    ('compress_min_size', False, '1KiB', 'Smaller files are uploaded as they are.', 'compression'),
    ('compress_skip', False, '*.gz,*.tgz,*.zst,*.zip,*.bz2,*.xz,*.7z,*.br,*.lz4,*.jpg,*.jpeg,*.png,*.gif,*.webp,*.avif,*.heic,*.mp4,*.mkv,*.mp3', 'Glob patterns (any case) of names of compressed data: uploaded as they are.', 'compression'),
    ('bandwidth_limit', False, 'none', 'Bytes per second for all uploads of the process together, e.g. 20MiB; off; or a schedule in local time, e.g. 08:00-18:00=10MiB,18:00-08:00=off (docs/compression-and-bandwidth.md); SIGHUP re-reads it.', 'limits and tuning'),
    ('route_bandwidth_limit', False, 'none', "Like BANDWIDTH_LIMIT, for each route's own uploads, on top of it.", 'limits and tuning'),
    ('workers', False, '64', 'Concurrent file uploads.', 'limits and tuning'),
    ('queue_size', False, '1024', 'Bound of the in-memory queue of discovered files.', 'limits and tuning'),
    ('rescan_interval', False, '1m', 'Full rescan of every incoming/.', 'limits and tuning'),
    ('multipart_threshold', False, '64MiB', "Files of at least this size use multipart upload (smaller ones go in one streamed PUT: parts cost a request each and the store's assembly).", 'limits and tuning'),
    ('part_size', False, '16MiB', 'Multipart part size (5MiB to 5GiB); larger for a file that would need more than 10,000 parts.', 'limits and tuning'),
    ('part_concurrency', False, '4', 'Parts of one file in flight.', 'limits and tuning'),
    ('buffer_limit', False, '128MiB', 'Upper bound on file bytes held in memory by all uploads together.', 'limits and tuning'),
    ('retry_attempts', False, '6', 'Attempts per file for transient errors before failed/.', 'limits and tuning'),
    ('retry_backoff', False, '0.5s', 'Backoff of a failed upload: the first retry follows within 25 ms, the next after this delay, doubling with jitter (SlowDown: from this delay at once).', 'limits and tuning'),
    ('retry_backoff_max', False, '1m', 'Longest retry delay.', 'limits and tuning'),
    ('direct_put', True, 'true', "Send object bodies (PutObject, UploadPart) signed as botocore signs them over the client's own connection pool, TLS and proxy, without botocore's per-request pipeline (about half its CPU per small file); false: every request takes botocore's full pipeline.", 'limits and tuning'),
    ('connect_timeout', False, '10s', 'Connection timeout to the store.', 'limits and tuning'),
    ('read_timeout', False, '1m', 'Read timeout of one request.', 'limits and tuning'),
    ('cleanup_interval', False, '1m', 'How often cleanup and dead-instance recovery run.', 'limits and tuning'),
    ('abort_multipart_after', False, '24h', "Abort s3spool's multipart uploads older than this.", 'limits and tuning'),
    ('fail_rate', False, '0', 'Fault injection: fail this fraction of uploads.', 'limits and tuning'),
    ('notify', False, 'none', 'Notifiers told of each delivered (and/or failed) file: a JSON list of tables, [[route.notify]] in the config file (docs/notifications.md).', 'notifications'),
    ('outbox_max_age', False, 'none', 'If set, /readyz is unready while an event older than this waits.', 'notifications'),
    ('http_addr', False, '127.0.0.1:9108', 'host:port of /metrics, /healthz, /readyz; empty: off.', 'service (HTTP, logging)'),
    ('max_lag', False, 'none', 'If set, /readyz is unready while the spool lag exceeds it.', 'service (HTTP, logging)'),
    ('shutdown_grace', False, '30s', 'On SIGTERM/SIGINT, time for in-flight uploads to finish.', 'service (HTTP, logging)'),
    ('instance_id', False, 'none', "This instance's working/ subdirectory name (default: host.pid.random).", 'service (HTTP, logging)'),
    ('log_level', False, 'INFO', 'Log level (any case).', 'service (HTTP, logging)'),
    ('log_format', False, 'text', 'Log format.', 'service (HTTP, logging)'),
)
# --- end generated ---
