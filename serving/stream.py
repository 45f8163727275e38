"""``indicators stream``: events consumed from a RabbitMQ queue, acknowledged once durable.

Each message holds a batch as ``POST /events`` takes it (``{"events": [...]}``), a list of
events, or one event. It goes through the same ``EventSink``, and is acknowledged only after
``accept`` returns, so its events are in the journal and online: a consumer killed before that
leaves the message to be delivered again, and the journal accepts its events once.

A message that can never be accepted (not JSON, not events, a bad event) is a poison message:
it is published to ``<queue>.dead-letter`` with its reason in the ``x-death-reason`` header
(persistent, confirmed by the broker), then acknowledged. A message that fails for a reason of
ours (the data directory busy, the online store down) is returned to the queue and retried.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
from pydantic import ValidationError

from serving.events import DataBusy, EventSink, EventsRejected, OnlineWriteFailed
from serving.schemas import EventsRequest
from training.config import Config

log = logging.getLogger(__name__)
PREFETCH = 8  # messages the broker sends ahead: enough to keep the sink busy, few to redeliver
RETRY_PAUSE_SECONDS = 1.0


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead-letter"


@dataclass
class StreamStats:
    messages: int = 0
    events_accepted: int = 0
    duplicates: int = 0
    suppressed: int = 0
    dead_lettered: int = 0
    retried: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def parse_message(body: bytes) -> list[dict[str, Any]]:
    """The events of a message, validated as the endpoint validates a request (``ValueError``
    with the reason otherwise)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if isinstance(payload, dict) and "events" not in payload:
        payload = {"events": [payload]}
    elif isinstance(payload, list):
        payload = {"events": payload}
    try:
        request = EventsRequest.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"not a batch of events: {where}: {first['msg']}") from None
    return [event.model_dump() for event in request.events]


def consume(
    config: Config,
    amqp_url: str,
    queue: str,
    idle_seconds: float | None = None,
    on_message: Callable[[StreamStats], None] | None = None,
) -> StreamStats:
    """Consume ``queue`` until SIGINT/SIGTERM, or until it has been empty for ``idle_seconds``."""
    sink = EventSink(config)
    stats = StreamStats()
    stopping = []
    previous = {s: signal.signal(s, lambda *_: stopping.append(True)) for s in (signal.SIGINT, signal.SIGTERM)}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # a dead letter is acknowledged by the broker before its original is
        channel.queue_declare(queue, durable=True)
        channel.queue_declare(dead_letter_queue(queue), durable=True)
        channel.basic_qos(prefetch_count=PREFETCH)
        idle_since = time.monotonic()
        for method, properties, body in channel.consume(queue, inactivity_timeout=0.5):
            if stopping:
                break
            if method is None:
                if idle_seconds is not None and time.monotonic() - idle_since > idle_seconds:
                    break
                continue
            _handle(channel, queue, sink, stats, method, properties, body)
            idle_since = time.monotonic()
            if on_message is not None:
                on_message(stats)
        channel.cancel()  # unacknowledged messages go back to the queue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if connection.is_open:
            connection.close()
        sink.close()
    return stats


def _handle(channel, queue: str, sink: EventSink, stats: StreamStats, method, properties, body: bytes) -> None:
    stats.messages += 1
    try:
        result = sink.accept(parse_message(body))
    except (ValueError, EventsRejected) as error:  # poison: it will never be accepted
        reason = str(error)[:1000]
        headers = {**(properties.headers or {}), "x-death-reason": reason, "x-original-queue": queue}
        channel.basic_publish("", dead_letter_queue(queue), body,
                              pika.BasicProperties(headers=headers, delivery_mode=pika.DeliveryMode.Persistent,
                                                   content_type=properties.content_type))
        channel.basic_ack(method.delivery_tag)
        stats.dead_lettered += 1
        kind = reason.split(":")[0]
        stats.reasons[kind] = stats.reasons.get(kind, 0) + 1
        log.warning("message %s dead-lettered: %s", method.delivery_tag, reason)
        return
    except (DataBusy, OnlineWriteFailed) as error:  # ours: the message is fine, retry it later
        channel.basic_nack(method.delivery_tag, requeue=True)
        stats.retried += 1
        log.warning("message %s returned to the queue: %s", method.delivery_tag, error)
        time.sleep(RETRY_PAUSE_SECONDS)
        return
    channel.basic_ack(method.delivery_tag)
    stats.events_accepted += result.accepted
    stats.duplicates += result.duplicates
    stats.suppressed += result.suppressed
