"""The FIFO rule SQS and SNS notifiers share: a .fifo target gets the event id as its
deduplication id (a resent event is one message) and the route as its group."""

from __future__ import annotations

from typing import Any

import pytest

from s3spool.notify.notifiers import _fifo_ids

EVENT = {"id": "ev-1", "route": "logs"}


@pytest.mark.parametrize(
    ("target", "added"),
    [
        (
            "https://sqs.eu-west-1.amazonaws.com/1/q.fifo",
            {"MessageDeduplicationId": "ev-1", "MessageGroupId": "logs"},
        ),
        (
            "arn:aws:sns:eu-west-1:1:t.fifo",
            {"MessageDeduplicationId": "ev-1", "MessageGroupId": "logs"},
        ),
        ("https://sqs.eu-west-1.amazonaws.com/1/q", {}),
        ("arn:aws:sns:eu-west-1:1:fifo-topic", {}),
    ],
)
def test_fifo_ids(target: str, added: dict[str, str]) -> None:
    params: dict[str, Any] = {"MessageBody": "{}"}
    _fifo_ids(params, target, EVENT)
    assert params == {"MessageBody": "{}", **added}
