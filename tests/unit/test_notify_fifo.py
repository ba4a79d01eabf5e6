"""The FIFO rule SQS and SNS notifiers share: a .fifo target gets the event id as its
deduplication id (a resent event is one message) and the route as its group."""

from __future__ import annotations

from typing import Any

import pytest

from s3spool.config.notifiers import SnsSpec, SqsSpec
from s3spool.notify.notifiers import Aws

EVENT = {"id": "ev-1", "route": "logs", "outcome": "delivered"}
ATTRIBUTES = {
    "s3spool-event-id": {"DataType": "String", "StringValue": "ev-1"},
    "s3spool-outcome": {"DataType": "String", "StringValue": "delivered"},
}


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
    sns = target.startswith("arn:")
    spec = SnsSpec(kind="sns", topic_arn=target) if sns else SqsSpec(kind="sqs", queue_url=target)
    params: dict[str, Any] = Aws(spec, None).message(EVENT, "{}")  # type: ignore[arg-type]
    assert params == {
        "TopicArn" if sns else "QueueUrl": target,
        "Message" if sns else "MessageBody": "{}",
        "MessageAttributes": ATTRIBUTES,
        **added,
    }
