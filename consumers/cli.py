"""`geodispatch dlq list|show|replay`, `geodispatch consume <topic>` and `geodispatch orders follow|show`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
import structlog
from aiokafka import TopicPartition
from redis.exceptions import RedisError

from consumers import dlq as deadletters
from consumers.reading import Span, assigned_partitions, bounds, partitions_of, read_one, read_span, start
from consumers.text import table, value_preview
from consumers.topics import matches_pattern, model_for, resolve
from infra.clients import new_consumer
from infra.topics import TopicNames
from producers import commandline
from schemas import dead_letter as dl
from schemas.codec import InvalidMessage, default_codec

log = structlog.get_logger(__name__)


# -- dlq -----------------------------------------------------------------------------------------------------

# `--since`/`--until` seek by the dead letters' record timestamps (the broker's time index), then select by
# dlq.failed_at: the worker stamps both within milliseconds, this much slack covers a skewed clock between
# the one that failed and the broker's.
SEEK_SLACK_MS = 60_000
# A replay sends this many records, waits for the broker, then writes their ledger entries: what is in
# memory at once, and what a crash may replay a second time.
REPLAY_CHUNK = 500
# `dlq list --limit N` with no start reads the newest records first, in windows of this many (doubling).
NEWEST_WINDOW = 1000


def _moment(_ctx, param, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return deadletters.parse_moment(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def selection_options(command):
    """The filters `dlq list` and `dlq replay` share."""
    for option in reversed([
        click.option("--topic", "topics", multiple=True,
                     help="Original topic, name or glob, with or without the prefix (repeatable): driver_locations.*"),
        click.option("--error-class", "error_classes", multiple=True,
                     help="Error class, exactly (repeatable): InvalidMessage, InvalidEvent, ..."),
        click.option("--stage", "stages", multiple=True, help="Failing stage (repeatable): sessions, assignment, ..."),
        click.option("--since", callback=_moment,
                     help="Failed at or after: ISO-8601 or an age (15m, 2h, 1d). Seeks there (offsets_for_times).")
        ,
        click.option("--until", callback=_moment, help="Failed before: ISO-8601 or an age (15m, 2h, 1d)."),
        click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
                     help="Only this DLQ partition (repeatable; default: all)."),
        click.option("--offset", "start_offset", type=click.IntRange(min=0), default=None,
                     help="Start at this DLQ offset (in each partition read)."),
    ]):
        command = option(command)
    return command


def _selection(settings, topics, error_classes, stages, since, until) -> deadletters.Selection:
    return deadletters.Selection(tuple(topics), tuple(error_classes), tuple(stages), since, until,
                                 settings.topic_prefix)


def _span(partitions, start_offset, since: datetime | None, until: datetime | None) -> Span:
    """Where in the DLQ the selection can be: nothing before `since` (less the slack) is fetched."""
    return Span(tuple(partitions), start_offset,
                None if since is None else int(since.timestamp() * 1000) - SEEK_SLACK_MS,
                None if until is None else int(until.timestamp() * 1000) + SEEK_SLACK_MS)


async def _selected(settings, selection: deadletters.Selection, span: Span) -> AsyncIterator[deadletters.DeadLetter]:
    """The selected dead letters in the span, streamed."""
    async for record in read_span(settings, TopicNames(settings.topic_prefix).dlq, span):
        letter = deadletters.DeadLetter.from_record(record)
        if selection.matches(letter):
            yield letter


async def _newest(settings, selection: deadletters.Selection, span: Span, limit: int) -> list[deadletters.DeadLetter]:
    """The newest `limit` selected dead letters, reading back from the end in doubling windows until enough
    are found or the span's start is reached: a short list of a long DLQ reads its tail only."""
    topic = TopicNames(settings.topic_prefix).dlq
    consumer = new_consumer(settings)
    await start(consumer, settings)
    try:
        tps = await assigned_partitions(consumer, topic, span.partitions)
        limits = await bounds(consumer, tps, span)
    finally:
        await consumer.stop()
    found: list[deadletters.DeadLetter] = []
    window, reached = NEWEST_WINDOW, {tp: end for tp, (_, end) in limits.items()}
    while len(found) < limit and any(reached[tp] > first for tp, (first, _) in limits.items()):
        window = max(window, limit)
        for tp, (first, _) in limits.items():
            if reached[tp] <= first:
                continue
            low = max(first, reached[tp] - window)
            async for record in read_span(settings, topic, Span((tp.partition,), low, end_offset=reached[tp])):
                letter = deadletters.DeadLetter.from_record(record)
                if selection.matches(letter):
                    found.append(letter)
            reached[tp] = low
        window *= 2
    found.sort(key=lambda letter: (letter.timestamp_ms, letter.partition, letter.offset))
    return found[-limit:]


async def _ledger_entries(settings) -> dict[str, dict]:
    """The replay ledger: the compacted topic's entries, and those a Redis of before 0.2 still holds."""
    names = TopicNames(settings.topic_prefix)
    entries = await _legacy_entries(settings)
    entries.update(await _topic_ledger(settings, names).load(missing_ok=True))
    return entries


def _topic_ledger(settings, names: TopicNames) -> deadletters.ReplayLedger:
    return deadletters.ReplayLedger(settings, names.dlq_replays)


async def _legacy_entries(settings, forget: bool = False) -> dict[str, dict]:
    """The Redis ledger of before 0.2 (empty when Redis cannot be reached: the tools no longer need it);
    with `forget`, the hash is deleted once read (its entries are then in the topic)."""
    ledger = deadletters.RedisLedger.from_settings(settings, TopicNames(settings.topic_prefix).dlq)
    try:
        entries = await asyncio.wait_for(ledger.replayed(), timeout=3)
        if forget and entries:
            await ledger.forget()
        return entries
    except (OSError, TimeoutError, RedisError) as exc:
        log.debug("legacy_ledger_unreachable", error=str(exc))
        return {}
    finally:
        await ledger.close()


@click.group()
def dlq() -> None:
    """List, inspect and replay dead letters (dispatch.dlq). Exit codes: 0 done, 1 some replay failed,
    2 bad usage, 3 Kafka unreachable."""


@dlq.command("list")
@selection_options
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most this many (the newest).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def dlq_list(topics, error_classes, stages, since, until, partitions, start_offset, limit, as_json):
    """A table of dead letters: when, where from, which stage, which error, and whether it was replayed.
    Only what the options name is read: --since seeks to its moment, --partition/--offset to theirs, and
    --limit alone reads back from the end."""
    settings = commandline.settings()
    selection = _selection(settings, topics, error_classes, stages, since, until)
    span = _span(partitions, start_offset, since, until)

    async def chosen() -> list[deadletters.DeadLetter]:
        if limit is not None and since is None and start_offset is None:
            return await _newest(settings, selection, span, limit)
        kept: deque[deadletters.DeadLetter] = deque(maxlen=limit)
        async for letter in _selected(settings, selection, span):
            kept.append(letter)
        return list(kept)

    async def run():
        # the ledger is read meanwhile: an operator waits for the longer of the two, not for both
        return await asyncio.gather(chosen(), _ledger_entries(settings))

    letters, replayed = commandline.run(run())
    rows = []
    for letter in letters:
        row = letter.summary()
        row["origin"] = letter.origin
        row["error"] = f"{letter.error_class}: {letter.error_message}"
        row["replayed"] = "yes" if letter.id in replayed else ""
        rows.append(row)
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: v for k, v in row.items() if k not in ("origin", "error")} |
                                  {"replayed": bool(row["replayed"])}))
        return
    columns = [("OFFSET", "offset", 8), ("FAILED AT", "failed_at", 24), ("ORIGINAL", "origin", 48),
               ("STAGE", "stage", 12), ("ERROR", "error", 70), ("REPLAYED", "replayed", 8)]
    for line in table(rows, columns):
        click.echo(line)
    click.echo(f"{len(rows)} dead letter(s)")


@dlq.command("show")
@click.argument("offset", type=click.IntRange(min=0))
@click.option("--partition", type=click.IntRange(min=0), default=0, show_default=True, help="DLQ partition.")
def dlq_show(offset, partition):
    """One dead letter, read alone at its partition and offset: its headers, its stack trace, its key, and
    its value decoded as its original topic's message (or raw). Exit 1 when there is no such offset."""
    settings = commandline.settings()
    names = TopicNames(settings.topic_prefix)

    async def run():
        record = await read_one(settings, names.dlq, partition, offset)
        return None if record is None else deadletters.DeadLetter.from_record(record)

    letter = commandline.run(run())
    if letter is None:
        click.echo(f"error: no dead letter at {names.dlq}[{partition}]@{offset}", err=True)
        sys.exit(commandline.EXIT_FAILED)
    click.echo(f"dead letter {letter.id}  (written {datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC)})")
    click.echo("headers:")
    for name, value in letter.headers:
        if name != dl.ERROR_STACKTRACE:
            click.echo(f"  {name}: {value_preview(value, 500)}")
    trace = letter.info.get(dl.ERROR_STACKTRACE)
    if trace:
        click.echo(f"{dl.ERROR_STACKTRACE}:")
        for line in trace.splitlines():
            click.echo(f"  {line}")
    click.echo(f"key: {value_preview(letter.key, 200)}")
    model = model_for(names, letter.original_topic or "")
    if model is not None:
        try:
            decoded = default_codec().decode(model, letter.value)
            click.echo(f"value ({model.__name__}, decodes now):")
            click.echo(json.dumps(decoded.model_dump(mode="json", exclude_none=True), indent=2))
            return
        except InvalidMessage as exc:
            click.echo(f"value (raw; not a valid {model.__name__}: {exc}):")
    else:
        click.echo("value (raw):")
    click.echo(value_preview(letter.value))


@dlq.command("replay")
@selection_options
@click.option("--to", "target", default=None,
              help="Write to this topic (exact name, prefix included) instead of each record's original topic.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; send nothing, remember nothing.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay at most this many.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="At most this many records per second (default: unlimited).")
@click.option("--again", is_flag=True, help="Also replay dead letters that were replayed before.")
def dlq_replay(topics, error_classes, stages, since, until, partitions, start_offset, target, dry_run, limit,
               rate, again):
    """Write the selected dead letters back, key and value byte for byte, with a dlq.replayed_from header;
    each is remembered (the compacted topic dispatch.dlq_replays), so running the same replay twice sends
    nothing the second time (unless --again). The selection is streamed, REPLAY_CHUNK records at a time."""
    settings = commandline.settings()
    selection = _selection(settings, topics, error_classes, stages, since, until)
    span = _span(partitions, start_offset, since, until)

    async def run() -> int:
        names = TopicNames(settings.topic_prefix)
        if dry_run:
            rules = deadletters.ReplayRules(await _ledger_entries(settings), again, limit, target)
            async for letter in _selected(settings, selection, span):
                if rules.verdict(letter) == deadletters.SEND:
                    click.echo(f"would replay {letter.id} -> {target or letter.original_topic}  "
                               f"({letter.error_class}: {letter.error_message[:80]})")
            _summary(rules)
            return 0
        return await _replay(settings, names, selection, span, target, limit, rate, again)

    if commandline.run(run()):
        sys.exit(commandline.EXIT_FAILED)


async def _replay(settings, names: TopicNames, selection, span: Span, target, limit, rate, again) -> int:
    """Streams the selection: each chunk sent, acknowledged, then remembered in the ledger; returns how many
    failed. A Redis ledger of before 0.2 is moved into the topic first."""
    from producers.pacing import RateLimiter
    from producers.publisher import Publisher

    ledger = _topic_ledger(settings, names)
    limiter = RateLimiter(rate)
    started = time.monotonic()
    failed: list[tuple[deadletters.DeadLetter, str, asyncio.Future]] = []
    async with Publisher(settings, client_id="geodispatch-dlq-replay") as publisher, \
            Publisher(settings, client_id="geodispatch-dlq-ledger") as ledger_writer:
        legacy = await _legacy_entries(settings)
        entries = await ledger.load()
        moved = {name: entry for name, entry in legacy.items() if name not in entries}
        if moved:
            await ledger.mark(ledger_writer, moved)
            log.warning("replay_ledger_moved", entries=len(moved), to=names.dlq_replays)
        if legacy:
            await _legacy_entries(settings, forget=True)
        rules = deadletters.ReplayRules(legacy | entries, again, limit, target)
        chunk: list[tuple[deadletters.DeadLetter, str, asyncio.Future]] = []

        async def settle() -> None:
            await publisher.flush()
            now = dl.iso_utc(datetime.now(UTC))
            delivered = {letter.id: {"to": destination, "at": now, "fingerprint": letter.fingerprint}
                         for letter, destination, future in chunk if _delivered(future)}
            await ledger.mark(ledger_writer, delivered)
            failed.extend(sent for sent in chunk if not _delivered(sent[2]))
            chunk.clear()

        async for letter in _selected(settings, selection, span):
            verdict = rules.verdict(letter)
            if verdict == deadletters.OVER_LIMIT:
                break  # the rest is not read: a limited replay of a long DLQ reads what it sends
            if verdict != deadletters.SEND:
                continue
            await limiter.acquire()
            destination = target or letter.original_topic
            future = await publisher.send_raw(
                destination, letter.key, letter.value, dl.replay_headers(letter.headers, letter.id))
            chunk.append((letter, destination, future))
            if len(chunk) >= REPLAY_CHUNK:
                await settle()
                click.echo(f"replayed {rules.counts[deadletters.SEND] - len(failed)} so far", err=True)
        await settle()
    _summary(rules, stopped=True)
    sent = rules.counts[deadletters.SEND]
    click.echo(f"replayed {sent - len(failed)} of {sent} in {time.monotonic() - started:.1f}s"
               + (f"; {len(failed)} failed ({failed[0][2].exception()})" if failed else ""))
    for letter, destination, future in failed:
        log.error("replay_failed", dead_letter=letter.id, topic=destination,
                  error="cancelled" if future.cancelled() else str(future.exception()))
    return len(failed)


def _summary(rules: deadletters.ReplayRules, stopped: bool = False) -> None:
    """What the rules decided; `stopped`: the replay stopped reading at the first dead letter over --limit."""
    counts = rules.counts
    over = counts[deadletters.OVER_LIMIT]
    again_hint = " (use --again)" if counts[deadletters.ALREADY_REPLAYED] else ""
    click.echo(f"selected {rules.selected - (over if stopped else 0)} dead letter(s): {counts[deadletters.SEND]} "
               f"to replay, {counts[deadletters.ALREADY_REPLAYED]} replayed before (or copies of one){again_hint}, "
               f"{counts[deadletters.NO_ORIGIN]} without an original topic, "
               + ("--limit reached (the rest not read)" if stopped and over else f"{over} over --limit"))


def _delivered(future: asyncio.Future) -> bool:
    return not future.cancelled() and future.exception() is None


# -- consume -------------------------------------------------------------------------------------------------


@click.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the first record (default: only new ones).")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Only this partition (repeatable; default: all).")
@click.option("--offset", "start_offset", type=click.IntRange(min=0), default=None,
              help="Start at this offset in each partition read (the first kept, when it is older).")
@click.option("--from-time", callback=_moment, default=None,
              help="Start at the first record written at or after: ISO-8601 or an age (10m, 2h, 1d).")
@click.option("--group", default=None,
              help="Commit what was printed as this consumer group (and start where it left off, when no "
                   "other start is given); default: no group, nothing committed.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Exit after this many records.")
@click.option("--idle-exit", "idle_exit_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this many seconds without a record.")
@click.option("--raw", is_flag=True, help="Print values as text/hex, do not decode.")
def consume(topic, from_beginning, partitions, start_offset, from_time, group, count, idle_exit_s, raw):
    """Tail a contract topic, one JSON line per record, decoded (JSON or Avro) as the topic's message.
    TOPIC is a contract name (driver_assignment.responses, driver_locations.4_-7, or a whole family:
    driver_locations); the deployment's prefix is added. --partition, --offset and --from-time seek
    there (--from-time by the broker's time index); otherwise new records only, or --from-beginning.
    Exit 3 when Kafka or the topic is missing."""
    settings = commandline.settings()
    names = TopicNames(settings.topic_prefix)
    exact, pattern = resolve(names, topic)
    codec = default_codec()
    # placed by hand (assigned, then sought) rather than subscribed; a group's committed offsets would win
    # over auto_offset_reset, so --from-beginning with --group is placed too
    seeking = (bool(partitions) or start_offset is not None or from_time is not None
               or (from_beginning and group is not None))
    if [from_beginning, start_offset is not None, from_time is not None].count(True) > 1:
        raise click.UsageError("give one start: --from-beginning, --offset or --from-time")

    def line(record) -> str:
        document = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                    "timestamp": record.timestamp, "key": (record.key or b"").decode("utf-8", "replace")}
        # a dead letter decodes as the message of the topic it came from
        origin = dl.header_dict(record.headers or ()).get(dl.ORIGINAL_TOPIC, record.topic)
        model = None if raw else model_for(names, origin)
        if model is not None:
            try:
                document["value"] = codec.decode(model, record.value).model_dump(mode="json", exclude_none=True)
            except InvalidMessage as exc:
                document["error"] = str(exc)
                document["raw"] = value_preview(record.value, 500)
        else:
            document["raw"] = value_preview(record.value, 2000)
        if record.headers:
            document["headers"] = dl.header_dict(record.headers)
        return orjson.dumps(document).decode()

    async def place(consumer) -> None:
        """Assigns the partitions asked for (of the topic, or of every topic of the family) and seeks."""
        if exact is not None:
            topics = [exact]
        else:
            cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 (no public call in aiokafka)
            topics = sorted(t for t in cluster.topics() if matches_pattern(pattern, t))
            if not topics:
                raise commandline.Unreachable(f"no topic matches {pattern}")
        tps = []
        for name in topics:
            available = await partitions_of(consumer, name)
            tps += [TopicPartition(name, p) for p in sorted(available)
                    if not partitions or p in partitions]
        if not tps:
            raise commandline.Unreachable(f"{topic} has no partition {sorted(partitions)}")
        consumer.assign(tps)
        span = Span(offset=start_offset,
                    since_ms=None if from_time is None else int(from_time.timestamp() * 1000))
        if start_offset is not None or from_time is not None:
            for tp, (first, _) in (await bounds(consumer, tps, span)).items():
                consumer.seek(tp, first)
        elif from_beginning:
            await consumer.seek_to_beginning(*tps)
        elif group is None:
            await consumer.seek_to_end(*tps)
        # else: where the group left off (its committed offsets), or auto_offset_reset

    async def run() -> int:
        consumer = new_consumer(settings, group_id=group,
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                metadata_max_age_ms=5000)
        await start(consumer, settings)
        seen = 0
        try:
            if seeking:
                await place(consumer)
            elif exact is not None:
                if not await partitions_of(consumer, exact):
                    raise commandline.Unreachable(f"topic {exact} does not exist")
                consumer.subscribe([exact])
            else:
                consumer.subscribe(pattern=pattern)
            last = time.monotonic()
            while count is None or seen < count:
                if idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                    break
                batches = await consumer.getmany(timeout_ms=200)
                printed: dict[TopicPartition, int] = {}
                for tp, records in batches.items():
                    for record in records:
                        if count is not None and seen >= count:
                            break
                        if pattern is not None and not matches_pattern(pattern, record.topic):
                            continue
                        click.echo(line(record))
                        printed[tp] = record.offset + 1
                        seen += 1
                        last = time.monotonic()
                if group is not None and printed:
                    # what was printed, not the fetch position: records fetched past --count stay unread
                    await consumer.commit(printed)
        finally:
            await consumer.stop()
        return seen

    seen = commandline.run(run())
    click.echo(f"{seen} record(s)", err=True)


# -- orders (the reference downstream consumer) ----------------------------------------------------------------


@click.group()
def orders() -> None:
    """The reference order-service consumer of driver_assignment.responses: each order's state in SQLite."""


DB = click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
                  default=Path(".cache/orders.sqlite"), show_default=True, help="The SQLite file of order states.")


@orders.command("follow")
@DB
@click.option("--group", "group_id", default=None, help="Consumer group (default: <prefix>geodispatch-orders).")
@click.option("--idle-exit", "idle_exit_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this many seconds without a record (default: run until stopped).")
@click.option("--max-per-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Apply at most this many records per second (to watch it work, or to spare a database).")
@click.option("--batch-size", type=click.IntRange(min=1, max=10_000), default=100, show_default=True,
              help="Records per transaction.")
def orders_follow(db_path, group_id, idle_exit_s, max_per_s, batch_size):
    """Keep every order's state from the answers, idempotently: state, notifications and offsets in one
    transaction, the Kafka commit after it; safe to kill and restart at any moment."""
    from consumers.orders import follow

    settings = commandline.settings()
    group = group_id or f"{settings.topic_prefix}geodispatch-orders"
    result = commandline.run(follow(settings, db_path, group, idle_exit_s, max_per_s, batch_size))
    click.echo(f"applied {result.applied} record(s), {result.undecodable} undecodable; state in {db_path}")


@orders.command("show")
@DB
@click.option("--order-id", default=None, help="Only this order (exit 1 when unknown).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def orders_show(db_path, order_id, as_json):
    """Print the order states the follower has kept."""
    from dataclasses import asdict

    from consumers.orders import OrderBook

    if not db_path.exists():
        click.echo(f"error: {db_path} does not exist; run `geodispatch orders follow` first", err=True)
        sys.exit(commandline.EXIT_FAILED)
    book = OrderBook(db_path)
    try:
        states = [book.get(order_id)] if order_id else book.orders()
        notified = book.notification_counts()
    finally:
        book.close()
    if order_id and states[0] is None:
        click.echo(f"error: no order {order_id!r}", err=True)
        sys.exit(commandline.EXIT_FAILED)
    rows = [asdict(state) | {"notifications": notified.get(state.order_id, 0)} for state in states]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    columns = [("ORDER", "order_id", 40), ("STATUS", "status", 8), ("DRIVER", "driver_id", 24), ("ETA", "eta_min", 4),
               ("ERROR", "error", 30), ("ANSWERS", "answers", 7), ("NOTIFIED", "notifications", 8)]
    for text in table(rows, columns):
        click.echo(text)
    click.echo(f"{len(rows)} order(s)")


# -- supply-demand ---------------------------------------------------------------------------------------------


@click.group("supply-demand")
def supply_demand() -> None:
    """The supply/demand feed (dispatch.supply_demand): available drivers, requests, assignments and
    refusals per H3 cell, each cell's shares (by kind and source partition) added up."""


@supply_demand.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cell instead of a table.")
def supply_demand_show(as_json):
    """Each cell of the feed with its shares added up, busiest first, and the totals."""
    from dataclasses import asdict

    from consumers.supply_demand import add_up, grand_total, read_feed

    settings = commandline.settings()
    shares = commandline.run(read_feed(settings))
    per_cell = add_up(shares.latest.values())
    rows = [{"h3": cell, **asdict(totals)} for cell, totals in per_cell.items()]
    rows.sort(key=lambda row: (-row["requests"], -row["available_drivers"], row["h3"]))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    columns = [("H3", "h3", 15), ("AVAILABLE", "available_drivers", 9), ("REQUESTS", "requests", 8),
               ("ASSIGNED", "assigned", 8), ("REFUSED", "refused", 7)]
    for line in table(rows, columns):
        click.echo(line)
    totals = grand_total(per_cell)
    click.echo(f"{len(rows)} cell(s), {len(shares.latest)} share(s): {totals.available_drivers} available, "
               f"{totals.requests} requests ({totals.assigned} assigned, {totals.refused} refused) in the last "
               f"{settings.supply_demand_window_s} s" + (f"; {shares.invalid} unreadable record(s)" if shares.invalid
                                                          else ""))


@supply_demand.command("check")
@click.option("--settle-s", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Compare again for this long while the feed and the replay differ (the feed is written "
                   "once a second).")
def supply_demand_check(settle_s):
    """Replay the run's own topics (presence, statuses, pings, answers, trip events, requests) and check
    that every share of the feed has the counts the replay gives: exit 0 when they are equal, 1 with each
    difference when not. Meant for a quiet pipeline: records in flight, or answers at the window's edge,
    differ for a moment."""
    from consumers.supply_demand import counts_by_share, differences, read_feed, replay

    settings = commandline.settings()
    window_ms = settings.supply_demand_window_s * 1000

    async def compare() -> tuple[list[str], int, int]:
        deadline = time.monotonic() + settle_s
        while True:
            replayed = await replay(settings)
            shares = await read_feed(settings)
            expected = replayed.counts(since_ms=time.time() * 1000 - window_ms)
            found = differences(counts_by_share(shares.latest.values()), expected)
            if not found or time.monotonic() >= deadline:
                return found, len(expected), shares.invalid
            await asyncio.sleep(1.0)

    found, shares, invalid = commandline.run(compare())
    for line in found:
        click.echo(line)
    if found or invalid:
        click.echo(f"supply/demand: {len(found)} share(s) differ from the replay, {invalid} unreadable record(s)",
                   err=True)
        sys.exit(commandline.EXIT_FAILED)
    click.echo(f"supply/demand: the feed's {shares} share(s) equal the replay of the run's topics")
