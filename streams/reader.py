"""A consumer of the worker's own for topics whose records cost less read in blocks than one faust
event each (pings, requests): it reads the partitions faust assigned this worker, from when the
worker's tables are restored (`restored`) until the partitions are revoked (`revoked`), and stops the
worker if its loop breaks, since a worker that silently stopped reading would look healthy."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from infra.clients import new_consumer
from streams.runtime import PartitionService

if TYPE_CHECKING:
    from streams.app import DispatchApp

log = structlog.get_logger(__name__)
FETCH_WAIT_MS = 100
RETRY_AFTER_S = 1.0

Batch = dict[TopicPartition, list[Any]]


class PartitionReader(PartitionService):
    """The loop and the lifecycle; a reader says what a fetched batch comes to (`_take`), and how
    what it finished is committed (`_commit`), which the loop does at faust's commit interval and
    once more when the partitions are revoked."""

    # Names the reader's log lines and retry counts: `<kind>_fetch_failed`, `<kind>_batches_crashed`.
    kind = "record"

    def __init__(self, app: DispatchApp, topics: tuple[str, ...], max_partition_fetch_bytes: int) -> None:
        self._app = app
        self._topics = topics
        self._fetch_bytes = max_partition_fetch_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Future | None = None
        self._stopping = False
        # Reading the partitions assigned: what this worker owns is acted on.
        self.ready = False
        # Bumped by every revocation: work under way for partitions since taken away stops.
        self._assignment = 0

    async def _take(self, batch: Batch) -> None:
        raise NotImplementedError

    async def _commit(self) -> None:
        raise NotImplementedError

    async def _fetch(self, consumer: AIOKafkaConsumer, max_records: int) -> Batch:
        return await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=max_records)

    async def _finish(self) -> None:
        """The partitions are being revoked and the loop has stopped: what is under way ends here."""

    async def revoked(self) -> None:
        """Finishes the batch in hand, commits it, and stops reading."""
        self._assignment += 1
        self.ready = False
        if self._task is None:
            return
        self._stopping = True
        try:
            await self._task
        except Exception:  # logged by _run, which also crashed the app
            pass
        finally:
            self._task, self._stopping = None, False
        await self._finish()
        await self._commit()
        if self._consumer is not None:
            # Paused, not given up: aiokafka 0.14's stop() waits forever after unsubscribe() (a consumer
            # of a group) or after assign([]) (a consumer of none, once it has fetched). The next
            # assignment ends the pause.
            self._consumer.pause(*self._consumer.assignment())

    async def close(self) -> None:
        await self.revoked()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _started_consumer(self, **options: Any) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = new_consumer(self._app.runtime.settings, max_partition_fetch_bytes=self._fetch_bytes,
                                          **options)
            await self._consumer.start()
        return self._consumer

    async def _assign(self, consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int | None]) -> None:
        """Reads each partition from its start, or from the beginning of its log when it has none."""
        consumer.assign(list(starts))
        for tp, start in starts.items():
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)

    def _start(self, consumer: AIOKafkaConsumer, max_records: int) -> None:
        self.ready = True
        self._task = asyncio.ensure_future(self._run(consumer, max_records))

    async def _run(self, consumer: AIOKafkaConsumer, max_records: int) -> None:
        metrics = self._app.runtime.metrics
        commit_every = self._app.conf.broker_commit_interval
        committed_at = time.monotonic()
        try:
            while not self._stopping:
                try:
                    batch = await self._fetch(consumer, max_records)
                except KafkaError as exc:
                    log.error(f"{self.kind}_fetch_failed", error=repr(exc))
                    metrics.retries.labels(stage=f"{self.kind}_fetch").inc()
                    await asyncio.sleep(RETRY_AFTER_S)
                    continue
                await self._take(batch)
                if time.monotonic() - committed_at >= commit_every:
                    await self._commit()
                    committed_at = time.monotonic()
        except Exception as exc:
            # Not a record's failure (those are dead-lettered): the loop itself broke.
            log.exception(f"{self.kind}_batches_crashed")
            await self._app.crash(exc)
            raise
