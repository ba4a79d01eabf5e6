"""Container HEALTHCHECK for s3spool: GET /healthz on S3SPOOL_HTTP_ADDR.

Stdlib only, because slim base images ship neither curl nor wget.  Exit 0 when
the endpoint answers 2xx, 1 otherwise (the Docker HEALTHCHECK contract).
"""

import os
import sys
import urllib.request


def probe_url(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    # A wildcard bind is not a connectable address; probe loopback instead.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = probe_url(os.environ.get("S3SPOOL_HTTP_ADDR", "127.0.0.1:9108"))
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 - fixed http URL
            return 0 if 200 <= resp.status < 300 else 1
    except Exception as exc:  # any failure means unhealthy
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
