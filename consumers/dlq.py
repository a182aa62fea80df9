"""The operators' DLQ tools: read dead letters, select them by origin, error and time, and replay them to
where they came from (or elsewhere) once, remembering each replay in a compacted topic so a second run
does nothing."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import structlog
from aiokafka.structs import ConsumerRecord

from infra.redis_keys import RedisKeys
from schemas import dead_letter as dl

log = structlog.get_logger(__name__)

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- pure: what a dead letter says, and which ones an operator asked for -----------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, with the contract's headers read out."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    info: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: ConsumerRecord) -> DeadLetter:
        headers = tuple((name, value or b"") for name, value in (record.headers or ()))
        return cls(record.topic, record.partition, record.offset, record.timestamp, record.key, record.value,
                   headers, dl.header_dict(headers))

    @property
    def id(self) -> str:
        """Names this dead letter for good: the replay header and the ledger use it."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def fingerprint(self) -> str:
        """Same origin, key and value: a replayed record that failed again is a new dead letter with the same
        fingerprint, and is not replayed again by accident."""
        digest = hashlib.sha256()
        for part in ((self.original_topic or "").encode(), self.key or b"", self.value or b""):
            digest.update(len(part).to_bytes(8, "big") + part)
        return digest.hexdigest()

    @property
    def original_topic(self) -> str | None:
        return self.info.get(dl.ORIGINAL_TOPIC) or None

    @property
    def origin(self) -> str:
        return (f"{self.info.get(dl.ORIGINAL_TOPIC, '?')}[{self.info.get(dl.ORIGINAL_PARTITION, '?')}]"
                f"@{self.info.get(dl.ORIGINAL_OFFSET, '?')}")

    @property
    def stage(self) -> str:
        return self.info.get(dl.STAGE, "")

    @property
    def error_class(self) -> str:
        return self.info.get(dl.ERROR_CLASS, "")

    @property
    def error_message(self) -> str:
        return self.info.get(dl.ERROR_MESSAGE, "")

    @property
    def failed_at(self) -> datetime:
        """When it failed (the header), else when it was written to the DLQ."""
        text = self.info.get(dl.FAILED_AT)
        if text:
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                pass
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id, "offset": self.offset, "failed_at": dl.iso_utc(self.failed_at),
            "original_topic": self.original_topic, "original_partition": self.info.get(dl.ORIGINAL_PARTITION),
            "original_offset": self.info.get(dl.ORIGINAL_OFFSET), "stage": self.stage,
            "error_class": self.error_class, "error_message": self.error_message,
            "attempts": self.info.get(dl.ATTEMPTS), "key": (self.key or b"").decode("utf-8", "replace"),
        }


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """ISO-8601 (a missing offset means UTC) or an age: '30s', '15m', '2h', '1d' ago."""
    now = now or datetime.now(UTC)
    relative = RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * UNIT_SECONDS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO-8601 nor an age like 15m, 2h, 1d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operator means. Topics are names or globs, with or without the deployment's
    prefix ('driver_locations.*'); error classes match exactly; since is inclusive, until exclusive."""

    topics: tuple[str, ...] = ()
    error_classes: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    prefix: str = ""

    def matches(self, letter: DeadLetter) -> bool:
        if self.topics and not self._topic_matches(letter.original_topic or ""):
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.stages and letter.stage not in self.stages:
            return False
        failed_at = letter.failed_at
        if self.since is not None and failed_at < self.since:
            return False
        return not (self.until is not None and failed_at >= self.until)

    def _topic_matches(self, topic: str) -> bool:
        bare = topic[len(self.prefix):] if self.prefix and topic.startswith(self.prefix) else topic
        return any(fnmatch.fnmatchcase(topic, wanted) or fnmatch.fnmatchcase(bare, wanted) for wanted in self.topics)


@dataclass
class ReplayPlan:
    """What a replay will do with the selected dead letters, decided before anything is sent."""

    to_send: list[DeadLetter] = field(default_factory=list)
    already_replayed: list[DeadLetter] = field(default_factory=list)
    no_origin: list[DeadLetter] = field(default_factory=list)
    over_limit: int = 0


SEND, ALREADY_REPLAYED, NO_ORIGIN, OVER_LIMIT = "send", "already_replayed", "no_origin", "over_limit"


class ReplayRules:
    """Pure, one dead letter at a time (a replay streams them): each is to send, or was replayed before
    (its id is in the ledger, or it is a copy of one that is: same fingerprint), unless `again`; or has
    nowhere to go; or is over the limit. `ledger` is id -> {fingerprint, ...} (ReplayLedger.load())."""

    def __init__(self, ledger: dict[str, dict], again: bool, limit: int | None, target: str | None) -> None:
        self.ledger, self.again, self.limit, self.target = ledger, again, limit, target
        self.fingerprints = {entry.get("fingerprint") for entry in ledger.values()}
        self.counts = dict.fromkeys((SEND, ALREADY_REPLAYED, NO_ORIGIN, OVER_LIMIT), 0)

    def verdict(self, letter: DeadLetter) -> str:
        if not self.again and (letter.id in self.ledger or letter.fingerprint in self.fingerprints):
            verdict = ALREADY_REPLAYED
        elif self.target is None and letter.original_topic is None:
            verdict = NO_ORIGIN
        elif self.limit is not None and self.counts[SEND] >= self.limit:
            verdict = OVER_LIMIT
        else:
            verdict = SEND
        self.counts[verdict] += 1
        return verdict

    @property
    def selected(self) -> int:
        return sum(self.counts.values())


def plan_replay(
    letters: Iterable[DeadLetter], ledger: dict[str, dict], again: bool, limit: int | None, target: str | None
) -> ReplayPlan:
    """ReplayRules applied to a list at once: drops what was replayed before, or is a copy of something
    replayed before (unless again), what has nowhere to go, and what is over the limit."""
    rules, result = ReplayRules(ledger, again, limit, target), ReplayPlan()
    for letter in letters:
        verdict = rules.verdict(letter)
        if verdict == OVER_LIMIT:
            result.over_limit += 1
        else:
            getattr(result, {SEND: "to_send", ALREADY_REPLAYED: "already_replayed", NO_ORIGIN: "no_origin"}[verdict]
                    ).append(letter)
    return result


# -- the replay ledger --------------------------------------------------------------------------------------


def ledger_record(letter_id: str, entry: dict) -> tuple[bytes, bytes]:
    """A ledger entry as the compacted topic keeps it: keyed by the dead letter's coordinates."""
    return letter_id.encode(), orjson.dumps(entry)


def ledger_entries(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, dict]:
    """The ledger from its topic's records, oldest first: the last value of a key wins, a tombstone
    (no value) forgets it, and an unreadable value counts as replayed all the same (never twice by
    accident)."""
    entries: dict[str, dict] = {}
    for key, value in records:
        if key is None:
            continue
        name = key.decode("utf-8", "replace")
        if value is None:
            entries.pop(name, None)
            continue
        try:
            entry = orjson.loads(value)
        except orjson.JSONDecodeError:
            entry = {}
        entries[name] = entry if isinstance(entry, dict) else {}
    return entries


class ReplayLedger:
    """What was replayed, in the compacted topic dispatch.dlq_replays: dead-letter id -> where, when and its
    fingerprint. A topic outlives a Redis restart (the shipped setups run Redis without persistence);
    compaction keeps one record per dead letter. Written only after the broker acknowledged the replayed
    record, so a crash in between can replay one record twice (the pipeline is idempotent per the
    contract) but never loses one. Read whole: it grows with what was replayed, not with the DLQ."""

    def __init__(self, settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic

    async def load(self, missing_ok: bool = False) -> dict[str, dict]:
        """The entries; with `missing_ok`, none when the topic is missing (before `geodispatch topics apply`
        created it: nothing was replayed into it yet). A replay does not take it as empty: it would write to
        a topic the broker may create uncompacted, so it stops (Unreachable, exit 3, naming the topic)."""
        from consumers.reading import read_to_end

        records = []
        async for record in read_to_end(self.settings, self.topic, missing_ok=missing_ok):
            records.append((record.key, record.value))
        return ledger_entries(records)

    async def mark(self, publisher, entries: dict[str, dict]) -> int:
        """Writes the entries and waits for the broker; returns how many it took."""
        futures = [await publisher.send_raw(self.topic, *ledger_record(name, entry)) for name, entry in entries.items()]
        await publisher.flush()
        return sum(1 for future in futures if not future.cancelled() and future.exception() is None)


class RedisLedger:
    """The ledger before 0.2: a Redis hash per dead-letter topic. Read beside the topic's until a replay moves
    its entries there (and deletes the hash)."""

    def __init__(self, redis, prefix: str, dlq_topic: str) -> None:
        self.redis = redis
        self.key = RedisKeys(prefix).dlq_replayed(dlq_topic)

    @classmethod
    def from_settings(cls, settings, dlq_topic: str) -> RedisLedger:
        from infra.clients import redis_client

        return cls(redis_client(settings, decode_responses=False), settings.redis_prefix, dlq_topic)

    async def replayed(self) -> dict[str, dict]:
        raw = await self.redis.hgetall(self.key)
        return {_text(name): orjson.loads(value) for name, value in raw.items()}

    async def forget(self) -> None:
        await self.redis.delete(self.key)

    async def close(self) -> None:
        await self.redis.aclose()


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
