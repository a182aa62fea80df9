"""The app's Faust topics, named by infra's topic plan. Values stay raw bytes: our codec decodes
them once at the edge, and a record that fails keeps its exact bytes for the dead-letter topic."""

from __future__ import annotations

from typing import Any

import faust

from infra.topics import TopicNames


def raw_topic(app: faust.App, *names: str) -> Any:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
        internal=False,
    )


class Topics:
    """Every topic the handlers write to (streams.topology names what each reads)."""

    def __init__(self, app: faust.App, names: TopicNames) -> None:
        self._app = app
        self.responses = raw_topic(app, names.responses)
        self.presence = raw_topic(app, names.presence)
        self.tracking = raw_topic(app, names.tracking)
        self.driver_commands = raw_topic(app, names.driver_commands)
        self.dlq = raw_topic(app, names.dlq)
        self._by_name: dict[str, Any] = {}

    def named(self, name: str) -> Any:
        """A raw topic to write to by name (rerouting a record to its key's partition)."""
        if name not in self._by_name:
            self._by_name[name] = raw_topic(self._app, name)
        return self._by_name[name]


async def send_confirmed(topic: Any, **message: Any) -> Any:
    """Sends now and waits for the broker's acknowledgement, bypassing Faust's attachments (which
    publish only at commit time and are dropped with a revoked partition): an answer or a dead
    letter must be on the broker before the record that caused it can count as done."""
    (acknowledgement,) = await send_all([(topic, message)])
    return await acknowledgement


async def send_all(messages: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
    """Sends now, like send_confirmed, and returns each record's acknowledgement to wait for. Straight
    to the producer: the values are bytes already, and faust's topic would add only its own
    bookkeeping, at a cost per record that answers pay at every request."""
    acknowledgements = []
    for topic, message in messages:
        acknowledgements.append(await topic.app.producer.send(
            topic.get_topic_name(), message.get("key"), message.get("value"), message.get("partition"),
            message.get("timestamp"), message.get("headers")))
    return acknowledgements
