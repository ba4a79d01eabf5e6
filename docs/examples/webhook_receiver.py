"""A minimal receiver of s3spool's webhook events (standard library only).

    WEBHOOK_SECRET=... python webhook_receiver.py 8080 events.jsonl

Checks each request's HMAC-SHA256 signature, drops events it has already seen (by id:
s3spool delivers at least once; the ids already in the file count as seen after a restart),
appends new ones to a JSON-lines file, logs a line per event, and answers 204.
Any other answer makes s3spool try again later; the event waits in its outbox meanwhile.
The variable has no S3SPOOL_ prefix: s3spool refuses to start beside an S3SPOOL_ variable
it does not know.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

SECRET = os.environ["WEBHOOK_SECRET"].encode()
lock = Lock()
seen: set[str] = set()


def load_seen(path: str) -> set[str]:
    try:
        with open(path, encoding="utf-8") as lines:
            return {json.loads(line)["id"] for line in lines if line.strip()}
    except FileNotFoundError:
        return set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get("X-S3spool-Signature", ""), expected):
            print("refused a request: bad signature (check WEBHOOK_SECRET)", file=sys.stderr)
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        with lock:
            new = event["id"] not in seen  # a repeat of an event already handled: accept it
            if new:
                seen.add(event["id"])
                with open(sys.argv[2], "a", encoding="utf-8") as out:
                    out.write(json.dumps(event) + "\n")
        what = "new" if new else "repeat"
        print(f"{what} event {event['id']}: {event['outcome']} {event['relpath']}", file=sys.stderr)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    seen.update(load_seen(sys.argv[2]))
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
