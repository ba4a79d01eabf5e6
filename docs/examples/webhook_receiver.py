"""A minimal receiver of s3spool's webhook events (standard library only).

    S3SPOOL_WEBHOOK_SECRET=... python webhook_receiver.py 8080 events.jsonl

Checks each request's HMAC-SHA256 signature, drops events it has already seen (by id:
s3spool delivers at least once), appends new ones to a JSON-lines file, and answers 204.
Any other answer makes s3spool try again later; the event waits in its outbox meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

SECRET = os.environ["S3SPOOL_WEBHOOK_SECRET"].encode()
seen: set[str] = set()
lock = Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get("X-S3spool-Signature", ""), expected):
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        with lock:
            if event["id"] not in seen:  # a repeat of an event already handled: accept it
                seen.add(event["id"])
                with open(sys.argv[2], "a", encoding="utf-8") as out:
                    out.write(json.dumps(event) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
