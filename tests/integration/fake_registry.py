"""A stand-in schema registry, not a real one: the few endpoints of the Confluent Schema Registry API that
geodispatch uses, served by aiohttp in a thread of the test process.

It exists because no real registry server can be run on this machine (docs/SCHEMAS.md, "Why a
stand-in in the tests"): Apicurio Registry's Confluent-compatible API was the first choice, but its
application jar on Maven Central (io.apicurio:apicurio-registry-app 3.3.3, and 2.6.13.Final) is not a
runnable build (no quarkus-app or runner artifact is published) and cannot be built here, because a
compile dependency of it, io.apicurio:apicurio-registry-schema-util-provider (with the rest of the
schema-util family), is not on Maven Central for those versions; Confluent's own registry is not on
the registries this machine reaches (io.confluent is not served).

What it does as Confluent's does: a schema registered under a subject gets a global id, the same id for
the same schema (canonical JSON) under any subject; registering a schema a subject already has answers
its id and adds no version; a new version must pass the subject's BACKWARD rule (the new schema reads
the latest one's data, decided by the same Avro resolution check as schemas/compat.py), else 409.
Ids start at 1, as Confluent's do, so they collide with our fixed ids 1-10 on purpose.

Endpoints: POST /subjects/{subject}/versions, GET /subjects/{subject}/versions, GET /subjects,
GET /schemas/ids/{id}, and GET/PUT /config/{subject} (a subject's compatibility, which serializers such as
@kafkajs/confluent-schema-registry read and set; only BACKWARD is accepted, the one rule enforced here).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

from aiohttp import web

from schemas.codec import resolution_problem

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class FakeRegistry:
    """Start with `with FakeRegistry() as registry:`; `registry.url` is its base URL."""

    def __init__(self, first_id: int = 1) -> None:
        self._next_id = first_id
        self.ids: dict[str, int] = {}  # canonical schema -> id
        self.schemas: dict[int, str] = {}  # id -> schema text as registered
        self.subjects: dict[str, list[int]] = {}  # subject -> ids of its versions, oldest first
        self.compatibility: dict[str, str] = {}  # subject -> its own level, where one was set
        self.calls: Counter[str] = Counter()  # "GET /schemas/ids/{id}" and the like, per route and id
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- the API ----------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"error_code": code, "message": message}, status=status, content_type=CONTENT_TYPE)

    async def _register(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        self.calls[f"POST /subjects/{subject}/versions"] += 1
        try:
            body = await request.json(loads=json.loads)
            text = body["schema"]
            schema = json.loads(text)
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(422, 42201, f"Invalid schema: {exc}")
        if body.get("schemaType", "AVRO") != "AVRO":
            return self._error(422, 42201, "only AVRO here")
        canonical = _canonical(schema)
        versions = self.subjects.setdefault(subject, [])
        known = self.ids.get(canonical)
        if known is not None and known in versions:
            return web.json_response({"id": known}, content_type=CONTENT_TYPE)
        if versions:
            problem = resolution_problem(json.loads(self.schemas[versions[-1]]), schema)
            if problem:
                return self._error(409, 409, f"Schema being registered is incompatible with an earlier "
                                             f"schema for subject \"{subject}\": {problem}")
        if known is None:
            known, self._next_id = self._next_id, self._next_id + 1
            self.ids[canonical] = known
            self.schemas[known] = text
        versions.append(known)
        return web.json_response({"id": known}, content_type=CONTENT_TYPE)

    async def _versions(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        if subject not in self.subjects:
            return self._error(404, 40401, f"Subject '{subject}' not found.")
        return web.json_response(list(range(1, len(self.subjects[subject]) + 1)), content_type=CONTENT_TYPE)

    async def _subjects(self, _request: web.Request) -> web.Response:
        return web.json_response(sorted(self.subjects), content_type=CONTENT_TYPE)

    async def _by_id(self, request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        self.calls[f"GET /schemas/ids/{schema_id}"] += 1
        if schema_id not in self.schemas:
            return self._error(404, 40403, "Schema not found")
        return web.json_response({"schema": self.schemas[schema_id]}, content_type=CONTENT_TYPE)

    async def _config(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        if subject not in self.compatibility:
            return self._error(404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured")
        return web.json_response({"compatibilityLevel": self.compatibility[subject]}, content_type=CONTENT_TYPE)

    async def _set_config(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        try:
            level = (await request.json(loads=json.loads))["compatibility"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(422, 42203, f"Invalid compatibility level: {exc}")
        if level != "BACKWARD":
            return self._error(422, 42203, f"only BACKWARD here, not {level!r}")
        self.compatibility[subject] = level
        return web.json_response({"compatibility": level}, content_type=CONTENT_TYPE)

    def add(self, schema: dict[str, Any]) -> int:
        """Registers a schema under no subject, as another team's producer would have (a test's shortcut)."""
        canonical = _canonical(schema)
        if canonical not in self.ids:
            self.ids[canonical], self._next_id = self._next_id, self._next_id + 1
            self.schemas[self.ids[canonical]] = json.dumps(schema)
        return self.ids[canonical]

    # -- running ----------------------------------------------------------------------------------

    def __enter__(self) -> FakeRegistry:
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_get("/subjects/{subject}/versions", self._versions)
        app.router.add_get("/subjects", self._subjects)
        app.router.add_get("/schemas/ids/{id:\\d+}", self._by_id)
        app.router.add_get("/config/{subject}", self._config)
        app.router.add_put("/config/{subject}", self._set_config)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 (aiohttp names no bound port)
            self.url = f"http://127.0.0.1:{port}"
            ready.set()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-registry", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stand-in registry did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._thread is not None
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
