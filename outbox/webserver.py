"""Starting the project's small aiohttp servers (the dashboard, /metrics, the local receiver)."""

from __future__ import annotations

from aiohttp import web

from outbox.errors import OutboxError


async def start(
    app: web.Application, host: str, port: int, *, what: str, shutdown_timeout: float = 60.0
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the bound port.
    A port that cannot be bound is one line: `cannot {what} on host:port: reason`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OutboxError(f"cannot {what} on {host}:{port}: {exc.strerror or exc}") from None
    return runner, int(runner.addresses[0][1])
