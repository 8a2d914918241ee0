"""`outbox listen`: a local receiver that verifies deliveries and prints one line per request."""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import sys
from typing import Any

from outbox import receiver, render
from outbox.commands import shown
from outbox.config import Settings

TYPE_WIDTH = 19  # attribution.tracked, the longest seed type
ID_WIDTH = 30  # evt_ and 26 characters


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= value <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 3600 seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def _secret(text: str) -> str:
    problem = receiver.check_secret(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _host(text: str) -> str:
    """An address or name to listen on: empty would mean every interface, so it is refused."""
    if not re.fullmatch(r"[!-~]{1,253}", text):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not an address to listen on, such as 127.0.0.1 or 0.0.0.0"
        )
    return text


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "listen",
        help="run a local receiver that verifies and prints deliveries",
        description="Receive webhooks on a local port, like `stripe listen`: both signatures "
        "(X-Stover-Signature and webhook-signature) are checked with --secret, a bad one is "
        "answered 401, and each request is printed as one line: time, event type, event id, "
        "attempt, and the answer given.",
    )
    parser.add_argument("--port", type=_port, required=True, help="port to listen on")
    parser.add_argument(
        "--secret", required=True, type=_secret, help="the endpoint's secret (whsec_…)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        type=_host,
        help="address to listen on (default 127.0.0.1; 0.0.0.0 inside a container)",
    )
    parser.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="answer this share of well-signed requests with 500, 0 to 1 (default 0)",
    )
    parser.add_argument(
        "--delay",
        type=_seconds,
        default=0.0,
        metavar="D",
        help="seconds to wait before answering (default 0)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed the simulated failures, to repeat a run"
    )
    parser.set_defaults(func=run)


def format_line(seen: receiver.Seen) -> str:
    """One request as one line: time, type, event id, attempt, answer (80 columns)."""
    clock = seen.at.astimezone().strftime("%H:%M:%S")
    event_type = render.shorten(render.clean(seen.event_type), TYPE_WIDTH)
    event_id = render.shorten(render.clean(seen.event_id), ID_WIDTH, "middle")
    attempt = "#" + render.shorten(render.clean(seen.attempt), 3) if seen.attempt else "#?"
    verdict = {200: "200 ok", 401: "401 bad sig", 500: "500 failed"}.get(
        seen.status, f"{seen.status} {seen.verdict}"
    )
    return (
        f"{clock}  {event_type:<{TYPE_WIDTH}}  {event_id:<{ID_WIDTH}}  {attempt:<3}  {verdict}"
    ).rstrip()


def run(args: argparse.Namespace, settings: Settings) -> int:
    behaviour = receiver.Behaviour(
        secret=args.secret,
        fail_rate=args.fail_rate,
        delay=args.delay,
        rng=random.Random(args.seed),  # noqa: S311 - simulated failures, not security
    )
    asyncio.run(_serve(behaviour, args.host, args.port))
    return 0


def _print(seen: receiver.Seen) -> None:
    render.emit(format_line(seen))
    sys.stdout.flush()
    if seen.problem is not None:
        print(f"  {render.clean(seen.problem)}", file=sys.stderr, flush=True)


async def _serve(behaviour: receiver.Behaviour, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner, bound = await receiver.start(behaviour, _print, host=host, port=port)
    shown = f"[{host}]" if ":" in host else host
    extras = []
    if behaviour.fail_rate:
        extras.append(f"failing {behaviour.fail_rate:.0%} with 500")
    if behaviour.delay:
        extras.append(f"answering after {behaviour.delay:g}s")
    suffix = f" ({', '.join(extras)})" if extras else ""
    print(
        f"listening on http://{shown}:{bound}/ — POST webhooks to any path{suffix}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
