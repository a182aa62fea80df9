"""One codec for every message: JSON or Confluent-framed Avro in, a validated model or InvalidMessage out."""

from __future__ import annotations

import functools
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import fastavro
import orjson
from pydantic import ValidationError

from schemas.models import ALL_MESSAGES, Message

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


def _latest(schemas: list[AvroSchema]) -> dict[str, AvroSchema]:
    latest: dict[str, AvroSchema] = {}
    for schema in sorted(schemas, key=lambda s: s.schema_id):
        latest[schema.name] = schema
    return latest


class Codec:
    """Parses every schema version once; decodes any of them into the current model."""

    def __init__(self, schemas: list[AvroSchema]) -> None:
        self._by_id = {schema.schema_id: schema for schema in schemas}
        self._latest = _latest(schemas)

    @classmethod
    def load(cls, directory: Path = AVRO_DIR) -> Codec:
        ids = json.loads((directory / "ids.json").read_text())
        schemas = []
        for schema_id, filename in ids.items():
            if schema_id.startswith("_"):
                continue
            raw = json.loads((directory / filename).read_text())
            parsed = fastavro.parse_schema(raw, named_schemas={})
            schemas.append(AvroSchema(int(schema_id), raw["name"], parsed))
        return cls(schemas)

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
        writer = self._by_id.get(schema_id)
        if writer is None:
            raise InvalidMessage(f"unknown Avro schema id {schema_id}", "value")
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

    def encode(self, message: Message, fmt: Format = "json") -> bytes:
        if fmt == "json":
            return orjson.dumps(message.model_dump(mode="json", exclude_none=message.json_drops_nulls))
        schema = self.schema_for(type(message))
        record = message.model_dump(mode="json")
        for name in message.avro_json_fields:
            if record.get(name) is not None:
                record[name] = orjson.dumps(record[name]).decode()
        out = io.BytesIO()
        out.write(struct.pack(">bI", MAGIC_BYTE, schema.schema_id))
        fastavro.schemaless_writer(out, schema.parsed, record)
        return out.getvalue()


@functools.cache
def default_codec() -> Codec:
    """The codec over the schemas shipped in this package, parsed once per process."""
    codec = Codec.load()
    missing = {m.avro_name for m in ALL_MESSAGES} - set(codec._latest)
    if missing:
        raise RuntimeError(f"no Avro schema for {sorted(missing)}")
    return codec
