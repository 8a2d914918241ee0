"""A receiver in a process of its own: answers 200 to every request and prints the time each one
arrived (Unix seconds, one a line) on stdout, after first printing the port it listens on. Its
clock readings are not delayed by whatever else the test process is busy with."""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import web


async def main() -> None:
    async def arrived(request: web.Request) -> web.Response:
        print(repr(time.time()), flush=True)
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", arrived)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
