"""One codec for every message: JSON or Confluent-framed Avro in, a validated model or InvalidMessage out.

Avro schema ids are either the fixed ids of `schemas/avro/ids.json` (the default: a producer without a
registry writes those) or, with a schema registry (GEODISPATCH_SCHEMA_REGISTRY_URL), the registry's own:
an id is then looked up once, checked against our reader schema, and kept for good (docs/SCHEMAS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import avro.errors
import avro.schema
import fastavro
import orjson
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from pydantic import ValidationError

from infra.topics import TopicNames
from schemas.models import ALL_MESSAGES, Message
from schemas.registry import NotAvro, RegistryClient, RegistryError, SchemaNotFound, subjects

AVRO_DIR = Path(__file__).parent / "avro"
MAGIC_BYTE = 0
# Larger values are refused before parsing; matches the broker's default message.max.bytes.
MAX_VALUE_BYTES = 1_048_576

Format = Literal["json", "avro"]
M = TypeVar("M", bound=Message)


class InvalidMessage(ValueError):
    """A record that can never be processed as it is: the field at fault and why."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class AvroSchema:
    schema_id: int
    name: str
    parsed: Any
    raw: dict[str, Any] | None = None


def resolution_problem(writer: dict[str, Any], reader: dict[str, Any]) -> str | None:
    """None when data written with `writer` can always be read with `reader` under Avro's schema
    resolution rules (checked on the schemas, by the `avro` library's reader/writer checker, for every
    value the writer can produce), else what breaks and where."""
    try:
        result = ReaderWriterCompatibilityChecker().get_compatibility(
            avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer)))
    except (avro.errors.AvroException, ValueError, TypeError) as exc:  # not a schema the checker can read
        return f"not a valid Avro schema ({type(exc).__name__}: {exc})"
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    where = ", ".join(sorted(location for location in result.locations if location != "/")) or "/"
    rules = ", ".join(sorted({rule.value.replace("_", " ") for rule in result.incompatibilities}))
    return f"{rules}: {'; '.join(sorted(result.messages))} (at {where})"


def _latest(schemas: list[AvroSchema]) -> dict[str, AvroSchema]:
    latest: dict[str, AvroSchema] = {}
    for schema in sorted(schemas, key=lambda s: s.schema_id):
        latest[schema.name] = schema
    return latest


class Codec:
    """Parses every schema version once; decodes any of them into the current model.

    With a `registry`, Avro ids are the registry's: the fixed ids are not consulted (the same number
    names another schema there), and an id is fetched the first time a record carries it. The answer
    is kept for good, a failure (unknown id, a schema our reader cannot resolve) for good too, except
    an unavailable registry (unreachable, or an HTTP error), which is asked again after
    `retry_after_s`: so a record never costs a network call once its id has been seen, and an outage
    costs one call per id per `retry_after_s`.
    """

    def __init__(self, schemas: list[AvroSchema], registry: RegistryClient | None = None,
                 retry_after_s: float = 30.0, output_format: Format = "json",
                 output_subjects: dict[str, str] | None = None) -> None:
        self._latest = _latest(schemas)
        self._registry = registry
        # What `encode` writes when the caller names no format (the worker's outputs), and, with a
        # registry, the subject whose id an Avro output of each record name carries.
        self.output_format: Format = output_format
        self._output_subjects = output_subjects or {}
        self._output_ids: dict[str, int] = {}
        self._retry_after_s = retry_after_s
        self._by_id = {} if registry else {schema.schema_id: schema for schema in schemas}
        # schema id -> (why it cannot be decoded, monotonic time to ask again or None for never)
        self._refused: dict[int, tuple[str, float | None]] = {}
        self._fetch_lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path = AVRO_DIR, registry: RegistryClient | None = None,
             output_format: Format = "json", output_subjects: dict[str, str] | None = None) -> Codec:
        ids = json.loads((directory / "ids.json").read_text())
        schemas = []
        for schema_id, filename in ids.items():
            if schema_id.startswith("_"):
                continue
            raw = json.loads((directory / filename).read_text())
            parsed = fastavro.parse_schema(raw, named_schemas={})
            schemas.append(AvroSchema(int(schema_id), raw["name"], parsed, raw))
        return cls(schemas, registry, output_format=output_format, output_subjects=output_subjects)

    @property
    def registry(self) -> RegistryClient | None:
        return self._registry

    # -- registry ids ---------------------------------------------------------------------------

    def _writer(self, schema_id: int) -> AvroSchema:
        """The writer schema of an id: known, or fetched from the registry now (once per id)."""
        writer = self._by_id.get(schema_id)
        if writer is not None:
            return writer
        if self._registry is None:
            raise InvalidMessage(f"unknown Avro schema id {schema_id}", "value")
        with self._fetch_lock:  # one fetch per id, even from prefetch threads and the loop at once
            writer = self._by_id.get(schema_id)
            if writer is not None:
                return writer
            refused = self._refused.get(schema_id)
            if refused is not None and (refused[1] is None or time.monotonic() < refused[1]):
                raise InvalidMessage(refused[0], "value")
            try:
                writer = self._fetch(schema_id)
            except InvalidMessage as exc:
                self._refused[schema_id] = (exc.reason, None)
                raise
            except RegistryError as exc:
                reason = f"Avro schema id {schema_id}: schema registry unavailable ({exc})"
                self._refused[schema_id] = (reason, time.monotonic() + self._retry_after_s)
                raise InvalidMessage(reason, "value") from None
            self._refused.pop(schema_id, None)
            self._by_id[schema_id] = writer
            return writer

    def _fetch(self, schema_id: int) -> AvroSchema:
        assert self._registry is not None
        try:
            raw = self._registry.schema_by_id(schema_id)
        except SchemaNotFound:
            raise InvalidMessage(f"Avro schema id {schema_id} is not in the schema registry", "value") from None
        except NotAvro as exc:
            raise InvalidMessage(f"registry {exc}", "value") from None
        name = str(raw.get("name", "")).rpartition(".")[2] if isinstance(raw, dict) else ""
        reader = self._latest.get(name)
        if reader is None or reader.raw is None:
            raise InvalidMessage(f"registry schema id {schema_id} is {name or 'not a record'}, "
                                 "not a message of the contract", "value")
        problem = resolution_problem(raw, reader.raw)
        if problem:
            raise InvalidMessage(f"registry schema id {schema_id} cannot be read as {name}: {problem}", "value")
        try:
            parsed = fastavro.parse_schema(raw, named_schemas={})
        except Exception as exc:  # fastavro raises several types on a bad schema
            raise InvalidMessage(f"registry schema id {schema_id}: {type(exc).__name__}: {exc}", "value") from None
        return AvroSchema(schema_id, name, parsed, raw)

    def _output_id(self, schema: AvroSchema) -> int:
        """The registry's id of our current schema of a record name, under its output topic's subject:
        registered there (idempotent, as Confluent's serializers do by default) on the first record of
        that name written by this process, then kept. A blocking call, once per record name."""
        known = self._output_ids.get(schema.name)
        if known is not None:
            return known
        subject = self._output_subjects.get(schema.name)
        if subject is None or self._registry is None or schema.raw is None:
            raise ValueError(f"no registry subject for {schema.name}: Avro output in registry mode needs one")
        with self._fetch_lock:
            schema_id = self._output_ids.get(schema.name)
            if schema_id is None:
                schema_id = self._registry.register(subject, schema.raw)
                self._output_ids[schema.name] = schema_id
                # Our own schema under that id: decoding what we wrote needs no fetch.
                self._by_id.setdefault(schema_id, AvroSchema(schema_id, schema.name, schema.parsed, schema.raw))
        return schema_id

    @staticmethod
    def _framed_ids(values: Iterable[bytes | None]) -> set[int]:
        return {struct.unpack(">I", value[1:5])[0] for value in values
                if value and len(value) >= 5 and value[0] == MAGIC_BYTE}

    async def prefetch(self, values: Iterable[bytes | None]) -> None:
        """Resolves, off the event loop, the registry ids of a batch that this codec has not seen, so
        that decoding the batch then makes no network call. Without a registry, or when every id is
        known, it returns at once. Failures are kept and raised per record by `decode`."""
        if self._registry is None:
            return
        unseen = [i for i in self._framed_ids(values) if i not in self._by_id]
        for schema_id in unseen:
            refused = self._refused.get(schema_id)
            if refused is not None and (refused[1] is None or time.monotonic() < refused[1]):
                continue
            await asyncio.to_thread(self._resolve_quietly, schema_id)

    def _resolve_quietly(self, schema_id: int) -> None:
        # A failure is kept in _refused: every record carrying the id is dead-lettered with the reason.
        with contextlib.suppress(InvalidMessage):
            self._writer(schema_id)

    def schema_for(self, model: type[Message]) -> AvroSchema:
        return self._latest[model.avro_name]

    def schema_by_id(self, schema_id: int) -> AvroSchema | None:
        return self._by_id.get(schema_id)

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, model: type[M], data: bytes | None) -> M:
        return self.validate(model, self.decode_raw(model, data))

    def decode_raw(self, model: type[Message], data: bytes | None) -> dict[str, Any]:
        """The value as a plain dict, before validation: lets a caller read an id out of a record
        that will then fail validation (an order to answer, say)."""
        if not data:
            raise InvalidMessage("empty value", "value")
        if len(data) > MAX_VALUE_BYTES:
            raise InvalidMessage(f"{len(data)} bytes is over the {MAX_VALUE_BYTES}-byte limit", "value")
        if data[0] == MAGIC_BYTE:
            return self._decode_avro(model, data)
        return self._decode_json(data)

    def validate(self, model: type[M], raw: dict[str, Any]) -> M:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in first["loc"]) or "value"
            raise InvalidMessage(first["msg"], field) from None
        except ValueError as exc:  # a free-form JSON field that does not parse
            raise InvalidMessage(str(exc), "value") from None

    @staticmethod
    def _decode_json(data: bytes) -> dict[str, Any]:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidMessage(f"neither Confluent-framed Avro nor JSON ({exc})", "value") from None
        if not isinstance(raw, dict):
            raise InvalidMessage(f"JSON value is a {type(raw).__name__}, not an object", "value")
        return raw

    def _decode_avro(self, model: type[Message], data: bytes) -> dict[str, Any]:
        if len(data) < 5:
            raise InvalidMessage("Avro frame shorter than its 5-byte header", "value")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer = self._writer(schema_id)
        if writer.name != model.avro_name:
            raise InvalidMessage(f"schema id {schema_id} is {writer.name}, expected {model.avro_name}", "value")
        body = io.BytesIO(data)
        body.seek(5)
        try:
            raw = fastavro.schemaless_reader(body, writer.parsed, self._latest[writer.name].parsed)
        except Exception as exc:  # fastavro raises many types on corrupt bytes; all mean the same
            raise InvalidMessage(f"corrupt Avro body ({type(exc).__name__}: {exc})", "value") from None
        if body.tell() != len(data):
            raise InvalidMessage(f"{len(data) - body.tell()} bytes after the Avro record", "value")
        return raw

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, message: Message, fmt: Format | None = None) -> bytes:
        """The message as JSON or Confluent-framed Avro; without `fmt`, in this codec's output format."""
        fmt = fmt or self.output_format
        if fmt == "json":
            return orjson.dumps(message.model_dump(mode="json", exclude_none=message.json_drops_nulls))
        schema = self.schema_for(type(message))
        schema_id = schema.schema_id if self._registry is None else self._output_id(schema)
        record = message.model_dump(mode="json")
        for name in message.avro_json_fields:
            if record.get(name) is not None:
                record[name] = orjson.dumps(record[name]).decode()
        out = io.BytesIO()
        out.write(struct.pack(">bI", MAGIC_BYTE, schema_id))
        fastavro.schemaless_writer(out, schema.parsed, record)
        return out.getvalue()


@functools.cache
def default_codec(registry_url: str | None = None, output_format: Format = "json", topic_prefix: str = "") -> Codec:
    """The codec over the schemas shipped in this package, parsed once per process (and per arguments):
    with `registry_url` (settings.schema_registry_url), Avro ids are resolved in that registry;
    `output_format` (settings.output_format) is what `encode` writes when not told, and with a
    registry an Avro output carries the id of its subject `<topic_prefix><topic>-value`."""
    output_subjects = {name: subject for subject, name in subjects(TopicNames(topic_prefix), ()).items()}
    codec = Codec.load(registry=RegistryClient(registry_url) if registry_url else None,
                       output_format=output_format, output_subjects=output_subjects)
    missing = {m.avro_name for m in ALL_MESSAGES} - set(codec._latest)
    if missing:
        raise RuntimeError(f"no Avro schema for {sorted(missing)}")
    return codec
