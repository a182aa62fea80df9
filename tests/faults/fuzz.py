"""Bad input for the fuzz run: records of every input family built from the Avro schemas, mutated the
ways a broken upstream service or a bad deploy would (truncated, bit-flipped, wrong types, huge, wrong
schema id, wrong shape, future timestamps, NaN coordinates, empty values, null or wrong keys), each
with the outcome the contract requires of it. Pure: no Kafka; the fuzz test sends what this builds.

The expected outcome of a structured mutation is stated by the mutation itself; that of a random
byte mutation (whose result may still decode) comes from `expect`, which applies the contract's
rules with the codec. Both are checked against each other when a case is built."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import orjson

from infra.topics import TopicNames
from schemas.codec import AVRO_DIR, MAGIC_BYTE, InvalidMessage, default_codec
from schemas.models import AssignmentRequested, DriverStatus, LocationPing, Message, TripEvent
from streams.logic.assignment import INVALID_COORDINATES, coordinates_problem

# Outcomes a record may legitimately have.
DEAD_LETTERED = "dead-lettered"
ANSWERED = "answered"  # a request: an answer on driver_assignment.responses
APPLIED = "applied"  # a driver record: the driver's session shows it
IGNORED = "ignored"  # a stale or duplicate ping: counted, neither applied nor dead-lettered

LOCATIONS, STATUS, TRIPS, REQUESTS = "locations", "status", "trips", "requests"
MODELS: dict[str, type[Message]] = {
    LOCATIONS: LocationPing, STATUS: DriverStatus, TRIPS: TripEvent, REQUESTS: AssignmentRequested,
}
INVALID_REQUEST = "Invalid request"  # the prefix of a failed answer for any other validation error
ORDER_ID_MAX = 256  # streams.agents.assignment: a longer orderId cannot be answered
CENTRE = (40.7128, -74.006)
REGION = "4_-7"  # the region key of CENTRE
# The broker's message.max.bytes (infra/kafka/server.properties.in) less room for the batch header.
NEAR_BROKER_LIMIT = 1_048_588 - 200


@dataclass
class Case:
    """One record to send and what must become of it."""

    kind: str  # the mutation that made it
    family: str
    key: bytes | None
    value: bytes | None
    expect: str
    subject: str | None = None  # the driver or order the outcome is about
    error: str | None = None  # ANSWERED: the failed answer's error (a prefix), or None for a decision
    position: tuple[float, float] | None = None  # APPLIED ping: where the driver must be
    fields: dict[str, Any] = field(default_factory=dict)  # APPLIED status or trip: what the session shows
    ts_ms: int | None = None  # a ping's or status's time (staleness in sequence, heartbeat timeouts)
    headers: tuple[tuple[str, bytes], ...] = ()
    good: bool = False  # one of the interleaved good records
    misrouted: bool = False  # sent to another partition than its key's
    # Filled in when sent.
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = 0


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def topic_of(names: TopicNames, family: str, region: str = REGION) -> str:
    return {
        LOCATIONS: names.locations(region), STATUS: names.status, TRIPS: names.trip_events,
        REQUESTS: names.requests(region),
    }[family]


# -- valid records, derived from the Avro schemas -------------------------------------------------


@functools.cache
def _avsc(family: str) -> bytes:
    """The family's current schema as written in its .avsc (ids.json names the file)."""
    ids = orjson.loads((AVRO_DIR / "ids.json").read_bytes())
    return (AVRO_DIR / ids[str(default_codec().schema_for(MODELS[family]).schema_id)]).read_bytes()


def _schema(family: str) -> dict[str, Any]:
    return orjson.loads(_avsc(family))


def _near(rng: random.Random, spread: float = 0.02) -> tuple[float, float]:
    return CENTRE[0] + rng.uniform(-spread, spread), CENTRE[1] + rng.uniform(-spread, spread)


def _domain(family: str, ident: str, rng: random.Random, now: datetime) -> dict[str, Callable[[], Any]]:
    """Plausible values for the fields whose meaning the schema's types do not carry."""
    lat, lng = _near(rng)
    restaurant, customer = _near(rng), _near(rng)
    return {
        "driver_id": lambda: ident,
        "driverId": lambda: ident,
        "orderId": lambda: ident if family == REQUESTS else f"{ident}_o",
        "lat": lambda: lat,
        "lng": lambda: lng,
        "ts": lambda: iso(now - timedelta(seconds=rng.uniform(1, 20))),
        "occurredAt": lambda: iso(now),
        "eligibility": lambda: rng.choice(["ACTIVE", "SUSPENDED", "INACTIVE", None]),
        "online": lambda: rng.choice([True, False, None]),
        "status": lambda: rng.choice(["picked_up", "delivered", "cancelled"]),
        "restaurantLatitude": lambda: restaurant[0],
        "restaurantLongitude": lambda: restaurant[1],
        "customerLatitude": lambda: customer[0],
        "customerLongitude": lambda: customer[1],
        "geoKey": lambda: REGION,
        "preparationTime": lambda: float(rng.randint(0, 30)),
        "radius": lambda: float(rng.choice([3, 5, 8])),
        "items": lambda: orjson.dumps([{"name": "pizza", "qty": rng.randint(1, 3)}]).decode(),
        "heading_deg": lambda: rng.uniform(0, 360),
        "speed_mps": lambda: rng.uniform(0, 20),
        "accuracy_m": lambda: rng.uniform(1, 30),
        "totalAmount": lambda: round(rng.uniform(5, 80), 2),
    }


def _any_of(avro_type: Any, rng: random.Random) -> Any:
    if isinstance(avro_type, list):
        return _any_of(rng.choice(avro_type), rng)
    return {
        "null": None, "double": rng.uniform(-1e3, 1e3), "float": rng.uniform(-1e3, 1e3),
        "long": rng.randint(-(2**40), 2**40), "int": rng.randint(-1000, 1000), "boolean": rng.random() < 0.5,
        "string": "".join(rng.choice("abcxyz_- é€") for _ in range(rng.randint(0, 12))),
    }[avro_type]


def valid_record(family: str, ident: str, rng: random.Random, now: datetime) -> dict[str, Any]:
    """A record every field of which the family's Avro schema accepts and the contract allows;
    an optional field is left out (None) now and then."""
    domain = _domain(family, ident, rng, now)
    record: dict[str, Any] = {}
    for spec in _schema(family)["fields"]:
        name, avro_type = spec["name"], spec["type"]
        optional = isinstance(avro_type, list) and "null" in avro_type
        if optional and rng.random() < 0.2:
            record[name] = None
        elif name in domain:
            record[name] = domain[name]()
        else:
            record[name] = _any_of(avro_type, rng)
    return record


def encode_avro(family: str, record: dict[str, Any], schema: Any = None, schema_id: int | None = None) -> bytes:
    writer = default_codec().schema_for(MODELS[family])
    out = io.BytesIO()
    out.write(struct.pack(">bI", MAGIC_BYTE, writer.schema_id if schema_id is None else schema_id))
    fastavro.schemaless_writer(out, schema or writer.parsed, record)
    return out.getvalue()


def encode_json(record: dict[str, Any]) -> bytes:
    plain = dict(record)
    if isinstance(plain.get("items"), str):
        # JSON carries the list itself; text that is no JSON stays text, which the model then refuses.
        with contextlib.suppress(orjson.JSONDecodeError):
            plain["items"] = orjson.loads(plain["items"])
    return orjson.dumps({k: v for k, v in plain.items() if v is not None})


def encode(family: str, record: dict[str, Any], fmt: str) -> bytes:
    return encode_avro(family, record) if fmt == "avro" else encode_json(record)


# -- the oracle -----------------------------------------------------------------------------------


def driver_of(record: Message) -> str:
    return record.driverId if isinstance(record, TripEvent) else record.driver_id  # type: ignore[attr-defined]


def expect(family: str, key: bytes | None, value: bytes | None, now_ms: int, skew_ms: int) -> Case:
    """What the contract requires of this record (before staleness, which needs the driver's history)."""
    codec = default_codec()
    model = MODELS[family]
    dead = Case("", family, key, value, DEAD_LETTERED)
    if family == REQUESTS:
        try:
            raw = codec.decode_raw(model, value)
        except InvalidMessage:
            return dead
        order = raw.get("orderId")
        if not isinstance(order, str) or not order.strip() or len(order) > ORDER_ID_MAX:
            return dead
        if key is not None and key != order.encode():
            return dead
        answered = Case("", family, key, value, ANSWERED, subject=order)
        if coordinates_problem(raw) is not None:
            answered.error = INVALID_COORDINATES
            return answered
        try:
            codec.validate(model, raw)
        except InvalidMessage:
            answered.error = INVALID_REQUEST
        return answered
    try:
        record = codec.decode(model, value)
    except InvalidMessage:
        return dead
    driver = driver_of(record)
    if key is not None and key != driver.encode():
        return dead
    if family in (LOCATIONS, STATUS):
        ahead = int(record.ts.timestamp() * 1000) - now_ms  # type: ignore[attr-defined]
        if ahead > skew_ms:
            return dead
    applied = Case("", family, key, value, APPLIED, subject=driver)
    if isinstance(record, LocationPing):
        applied.position = (record.lat, record.lng)
        applied.ts_ms = int(record.ts.timestamp() * 1000)
    elif isinstance(record, DriverStatus):
        applied.ts_ms = int(record.ts.timestamp() * 1000)
        if record.online is not None:
            applied.fields["online"] = record.online
        if record.eligibility is not None:
            applied.fields["eligibility"] = record.eligibility
    elif isinstance(record, TripEvent):
        applied.fields["trip_id"] = record.orderId if record.status == "picked_up" else None
    return applied


def ambiguous(family: str, value: bytes | None, now_ms: int, skew_ms: int) -> bool:
    """A time just past the future-skew limit: it is refused if the worker reads it at once but
    accepted a little later (the worker's clock moves on), so the generator does not use such
    records. The band allows the worker two minutes to read what was generated."""
    if family not in (LOCATIONS, STATUS):
        return False
    try:
        record = default_codec().decode(MODELS[family], value)
    except InvalidMessage:
        return False
    ahead = int(record.ts.timestamp() * 1000) - now_ms  # type: ignore[attr-defined]
    return -2_000 < ahead - skew_ms < 120_000


# -- mutations ------------------------------------------------------------------------------------
# Each takes (family, record, rng, now) and returns (kind, value) or (kind, value, outcome) when the
# mutation itself decides the outcome (then the oracle must agree).

Mutation = Callable[[str, dict[str, Any], random.Random, datetime], tuple]


def _fmt(rng: random.Random) -> str:
    return rng.choice(["json", "avro"])


def truncated(family, record, rng, now):
    fmt = _fmt(rng)
    data = encode(family, record, fmt)
    return f"truncated-{fmt}", data[: rng.randint(1, len(data) - 1)]


def bit_flipped(family, record, rng, now):
    fmt = _fmt(rng)
    data = bytearray(encode(family, record, fmt))
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    return f"bit-flipped-{fmt}", bytes(data)


def byte_edit(family, record, rng, now):
    fmt = _fmt(rng)
    data = bytearray(encode(family, record, fmt))
    position = rng.randrange(len(data))
    if rng.random() < 0.5:
        del data[position]
        return f"byte-deleted-{fmt}", bytes(data)
    data.insert(position, rng.randrange(256))
    return f"byte-inserted-{fmt}", bytes(data)


def trailing_garbage(family, record, rng, now):
    fmt = _fmt(rng)
    return f"trailing-garbage-{fmt}", encode(family, record, fmt) + bytes(rng.randrange(256) for _ in range(3))


WRONG_TYPES: list[Any] = ["40.7", True, None, [1, 2], {"a": 1}, 12345, -1e308, ""]


def wrong_type(family, record, rng, now):
    """A JSON record with one field of the wrong type (a string for a number, a list, a null...)."""
    plain = orjson.loads(encode_json(record))
    name = rng.choice(list(plain))
    plain[name] = rng.choice([v for v in WRONG_TYPES if type(v) is not type(plain[name])])
    return f"wrong-type:{name}", orjson.dumps(plain)


def missing_field(family, record, rng, now):
    plain = orjson.loads(encode_json(record))
    required = [s["name"] for s in _schema(family)["fields"] if not isinstance(s["type"], list) and "default" not in s]
    name = rng.choice(required)
    plain.pop(name, None)
    return f"missing:{name}", orjson.dumps(plain)


SHAPES = [b"[]", b"[1,2,3]", b"null", b"42", b'"text"', b"true", b"{}", b'{"driver_id": {"nested": []}}',
          b"[" * 2000 + b"]" * 2000, b'{"a": ' * 600 + b"1" + b"}" * 600, b"\xef\xbb\xbf{}", b"{'single': 'quotes'}",
          b'{"orderId": "x", "orderId": "y"}', "{\"driver_id\": \"caf\u00e9\"}".encode("latin-1"),
          b'{"orderId": "\\ud800"}']


def wrong_shape(family, record, rng, now):
    """Valid JSON (or nearly) of the wrong shape: not an object, another message, deep nesting."""
    if rng.random() < 0.3:
        other = rng.choice([f for f in MODELS if f != family])
        ident = record.get("driver_id") or record.get("driverId") or record["orderId"]
        return f"other-message:{other}", encode_json(valid_record(other, ident, rng, now))
    return "wrong-shape", rng.choice(SHAPES)


def unknown_schema_id(family, record, rng, now):
    return "schema-id-unknown", encode_avro(family, record, schema_id=rng.choice([0, 9, 999, 2**32 - 1])), DEAD_LETTERED


def other_schema_id(family, record, rng, now):
    """Framed with the id of another message's schema (the body is this family's)."""
    other = rng.choice([m for f, m in MODELS.items() if f != family])
    schema_id = default_codec().schema_for(other).schema_id
    return "schema-id-of-another-message", encode_avro(family, record, schema_id=schema_id), DEAD_LETTERED


def schema_confusion(family, record, rng, now):
    """Written with a variant of the schema (one field's type changed) under the real schema id: the
    reader misreads the bytes. Generated from the .avsc itself."""
    schema = _schema(family)
    fields = schema["fields"]
    index = rng.randrange(len(fields))
    current = fields[index]["type"]
    replacement = rng.choice([t for t in ("string", "double", "long", "boolean") if t != current])
    fields[index] = {"name": fields[index]["name"], "type": replacement}
    schema["name"] = schema["name"] + "Confused"
    confused = dict(record)
    confused[fields[index]["name"]] = _any_of(replacement, rng)
    parsed = fastavro.parse_schema(schema, named_schemas={})
    return f"schema-confusion:{fields[index]['name']}", encode_avro(family, confused, schema=parsed)


def _coordinates(family: str) -> list[str]:
    if family == LOCATIONS:
        return ["lat", "lng"]
    if family == REQUESTS:
        return ["restaurantLatitude", "restaurantLongitude", "customerLatitude", "customerLongitude"]
    return []


def _invalid_coordinate_outcome(family: str) -> str:
    return ANSWERED if family == REQUESTS else DEAD_LETTERED


def nan_avro(family, record, rng, now):
    """Avro can carry NaN and infinity; no coordinate may be either."""
    name = rng.choice(_coordinates(family))
    bad = dict(record, **{name: rng.choice([math.nan, math.inf, -math.inf])})
    return f"nan-avro:{name}", encode_avro(family, bad), _invalid_coordinate_outcome(family)


def nan_json(family, record, rng, now):
    """JSON has no NaN: a producer that writes one anyway sends text that is not JSON."""
    name = rng.choice(_coordinates(family))
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"])
    plain = orjson.loads(encode_json(record))
    plain[name] = "__BAD__"
    return f"nan-json:{name}", orjson.dumps(plain).replace(b'"__BAD__"', token), DEAD_LETTERED


def out_of_range(family, record, rng, now):
    name = rng.choice(_coordinates(family))
    value = rng.choice([90.0001, -90.5, 180.5, -181.0, 1e6])
    if "ng" in name.lower() and abs(value) <= 180:
        value = 180.5
    return f"out-of-range:{name}", encode(family, dict(record, **{name: value}), _fmt(rng)), \
        _invalid_coordinate_outcome(family)


def coordinate_as_text(family, record, rng, now):
    name = rng.choice(_coordinates(family))
    plain = orjson.loads(encode_json(record))
    plain[name] = str(plain[name])
    return f"coordinate-as-text:{name}", orjson.dumps(plain), _invalid_coordinate_outcome(family)


def future_ts(family, record, rng, now):
    """An hour or a year ahead: a ping or a status from the future is refused; a trip event's time is
    not used by the pipeline, and a request's occurredAt is the order service's."""
    ahead = now + timedelta(seconds=rng.choice([3600, 86400 * 365]))
    name = "occurredAt" if family == REQUESTS else "ts"
    outcome = DEAD_LETTERED if family in (LOCATIONS, STATUS) else (ANSWERED if family == REQUESTS else APPLIED)
    return f"future-ts-{_fmt(rng)}", encode(family, dict(record, **{name: iso(ahead)}), _fmt(rng)), outcome


def bad_ts(family, record, rng, now):
    name = "occurredAt" if family == REQUESTS else "ts"
    bad = rng.choice(["yesterday", "2026-13-45T99:00:00Z", "2026-01-15T10:30:00", ""])
    outcome = ANSWERED if family == REQUESTS else DEAD_LETTERED  # occurredAt is free text to us
    return f"bad-ts:{bad or 'empty'}", encode(family, dict(record, **{name: bad}), _fmt(rng)), outcome


def bad_enum(family, record, rng, now):
    if family == STATUS:
        return "bad-eligibility", encode(family, dict(record, eligibility="active"), _fmt(rng)), DEAD_LETTERED
    if family == TRIPS:
        return "bad-trip-status", encode(family, dict(record, status="DELIVERED"), _fmt(rng)), DEAD_LETTERED
    if family == REQUESTS:
        bad = rng.choice([{"radius": 0.0}, {"radius": -5.0}, {"preparationTime": -1.0}, {"radius": 1e9},
                          {"items": "not json"}, {"items": '{"not": "a list"}'}])
        return f"bad-field:{next(iter(bad))}", encode(family, dict(record, **bad), _fmt(rng)), ANSWERED
    return "bad-speed", encode(family, dict(record, speed_mps=math.nan), "avro"), DEAD_LETTERED


def bad_id(family, record, rng, now):
    """An id the contract cannot use: empty, blank, or longer than any answer may carry."""
    name = {LOCATIONS: "driver_id", STATUS: "driver_id", TRIPS: "driverId", REQUESTS: "orderId"}[family]
    bad = rng.choice(["", "   ", "x" * 300])
    return f"bad-id:{name}={bad[:5]!r}x{len(bad)}", encode(family, dict(record, **{name: bad}), _fmt(rng)), \
        DEAD_LETTERED


def empty_value(family, record, rng, now):
    return "empty-value", b"", DEAD_LETTERED


def null_value(family, record, rng, now):
    return "null-value", None, DEAD_LETTERED


def header_only_avro(family, record, rng, now):
    schema_id = default_codec().schema_for(MODELS[family]).schema_id
    return "avro-header-only", rng.choice([b"\x00", b"\x00\x00\x00", struct.pack(">bI", 0, schema_id)]), DEAD_LETTERED


def random_bytes(family, record, rng, now):
    return "random-bytes", bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))


def huge_garbage(family, record, rng, now):
    """Bytes that are not a record, as large as the broker takes: a dead letter must still carry them."""
    return "huge-garbage", b"{" + b"x" * (NEAR_BROKER_LIMIT - 1), DEAD_LETTERED


def huge_valid(family, record, rng, now):
    """A valid record padded with an unknown field to most of a megabyte: unknown fields are ignored."""
    plain = orjson.loads(encode_json(record))
    plain["padding"] = "p" * rng.randint(200_000, 900_000)
    return "huge-valid", orjson.dumps(plain)


MUTATIONS: list[Mutation] = [
    truncated, bit_flipped, byte_edit, trailing_garbage, wrong_type, missing_field, wrong_shape,
    unknown_schema_id, other_schema_id, schema_confusion, future_ts, bad_ts, bad_enum, bad_id, empty_value,
    null_value, header_only_avro, random_bytes,
]
COORDINATE_MUTATIONS: list[Mutation] = [nan_avro, nan_json, out_of_range, coordinate_as_text]
HUGE: list[Mutation] = [huge_garbage, huge_valid]


@dataclass
class Generator:
    """Builds cases for one run, deterministic for a seed."""

    seed: int
    skew_ms: int = 60_000
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def ident(self, family: str) -> str:
        self.counter += 1
        return f"fz{self.seed}_{family[0]}{self.counter}"

    def bad(self, family: str, mutation: Mutation | None = None) -> Case:
        """One bad (or oddly made) record; a case whose time sits at the future-skew limit is redrawn."""
        now_ms = int(self.now.timestamp() * 1000)
        while True:
            ident = self.ident(family)
            record = valid_record(family, ident, self.rng, self.now)
            chosen = mutation or self.rng.choice(
                MUTATIONS + (COORDINATE_MUTATIONS if _coordinates(family) else []))
            made = chosen(family, record, self.rng, self.now)
            kind, value = made[0], made[1]
            if ambiguous(family, value, now_ms, self.skew_ms):
                continue
            key = self._key(ident)
            if key is None and value is None:
                key = ident.encode()  # Kafka takes no record without both (aiokafka refuses it)
            case = expect(family, key, value, now_ms, self.skew_ms)
            if len(made) > 2 and key == ident.encode() and case.expect != made[2]:
                raise AssertionError(f"{kind} on {family}: the oracle says {case.expect}, the mutation {made[2]}")
            case.kind = kind
            if case.subject is None:
                case.subject = ident
            return case

    def _key(self, ident: str) -> bytes | None:
        """Mostly the right key; sometimes none, another record's, or bytes that are not UTF-8."""
        roll = self.rng.random()
        if roll < 0.8:
            return ident.encode()
        if roll < 0.9:
            return None
        if roll < 0.95:
            return (ident + "_other").encode()
        return b"\xff\xfe" + ident.encode()

    def good_record(self, family: str, ident: str, fmt: str, **changes: Any) -> Case:
        record = valid_record(family, ident, self.rng, self.now)
        if family == STATUS:
            record.update(online=True, eligibility="ACTIVE")
        record.update(changes)
        value = encode(family, record, fmt)
        case = expect(family, ident.encode(), value, int(self.now.timestamp() * 1000), self.skew_ms)
        case.kind, case.good = f"good-{fmt}", True
        return case


def sequence_pings(cases: list[Case]) -> None:
    """Marks pings that arrive after a newer (or the same) one of their driver as ignored: the
    order of one driver's pings is the order they were sent, as they share a partition."""
    latest: dict[str, int] = {}
    for case in cases:
        if case.family != LOCATIONS or case.expect != APPLIED:
            continue
        assert case.subject is not None and case.ts_ms is not None
        if case.subject in latest and case.ts_ms <= latest[case.subject]:
            case.expect, case.kind = IGNORED, case.kind + "+stale"
        else:
            latest[case.subject] = case.ts_ms


def final_positions(cases: list[Case]) -> dict[str, tuple[float, float]]:
    """Each driver's last applied ping."""
    positions: dict[str, tuple[float, float]] = {}
    for case in cases:
        if case.family == LOCATIONS and case.expect == APPLIED and case.position is not None:
            positions[case.subject] = case.position  # type: ignore[index]
    return positions
