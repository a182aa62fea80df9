"""A TCP proxy on an event loop of its own that can reset every connection through it and refuse new ones:
a link going down, as the client on one side sees it, while both ends stay up."""

from __future__ import annotations

import asyncio
import threading

from tests.integration.harness import free_port


class CuttingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cutting-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.restore()

    def _run(self, work) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._open |= {client_writer, target_writer}
        await asyncio.gather(self._pump(client_reader, target_writer), self._pump(target_reader, client_writer),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self._open.discard(writer)
            writer.close()

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()

    def cut(self) -> None:
        """Resets every connection through the proxy and refuses new ones until `restore`."""
        self._run(self._cut())

    def cut_for(self, refuse_s: float) -> None:
        """Resets every connection now and refuses new ones for `refuse_s`, without waiting for the end."""

        async def cut_and_refuse() -> None:
            await self._cut()
            await asyncio.sleep(refuse_s)
            await self._listen()

        asyncio.run_coroutine_threadsafe(cut_and_refuse(), self._loop)

    def restore(self) -> None:
        self._run(self._listen())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
