"""The dashboard's forms: each runs the same function as its CLI verb, with the same checks, and
a refusal shows the verb's one-line message with nothing changed."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web
from multidict import MultiDictProxy

from outbox.accounts import check_account
from outbox.ages import parse_age
from outbox.commands import deliveries as deliveries_verbs
from outbox.commands import endpoints as endpoint_verbs
from outbox.commands.deliveries import parse_delivery_id, parse_timestamp
from outbox.commands.endpoints import check_description, check_url, parse_types
from outbox.dashboard.app import context, db, done, page, session
from outbox.dashboard.views import checked_endpoint_id, render_create, render_endpoint
from outbox.db import admin
from outbox.errors import ConfigError, OutboxError

Form = MultiDictProxy[Any]


def routes(app: web.Application) -> None:
    app.router.add_post("/endpoints", create)
    for verb in ("enable", "disable"):
        app.router.add_post(f"/endpoints/{{id}}/{verb}", switch)
    app.router.add_post("/endpoints/{id}/rotate", rotate)
    app.router.add_post("/endpoints/{id}/test", send_test)
    app.router.add_post("/endpoints/{id}/replay", replay)
    app.router.add_get("/endpoints/{id}/delete", confirm_delete)
    app.router.add_post("/endpoints/{id}/delete", delete)
    app.router.add_post("/deliveries/{id}/redeliver", redeliver)


async def form(request: web.Request) -> Form:
    return await request.post()


def text(data: Form, name: str) -> str:
    """A field's text; absent, or sent as a file, it is empty."""
    value = data.get(name, "")
    return value if isinstance(value, str) else ""


async def create(request: web.Request) -> web.Response:
    data = await form(request)
    given = {
        "url": text(data, "url"),
        "description": text(data, "description"),
        "account": text(data, "account"),
        "events": [v for v in data.getall("events", []) if isinstance(v, str)],
        "all_accounts": text(data, "all_accounts") == "on",
    }
    settings = context(request).settings
    own = session(request).account
    try:
        url = check_url(str(given["url"]).strip())
        description = check_description(str(given["description"]))
        account = check_account(str(given["account"])) if given["account"] else None
        if own is not None:
            # A portal link's page makes its own account's endpoints (the database refuses any
            # other), never the operator's feed.
            account, given["all_accounts"] = own, False
        chosen = cast(list[str], given["events"])
        if not chosen:
            raise ConfigError("--events: choose at least one event type, a group or everything")
        patterns = parse_types(",".join(chosen))
        endpoint_id, secret = await db(
            request,
            lambda conn: endpoint_verbs.create(
                conn,
                settings,
                url=url,
                patterns=patterns,
                description=description,
                account=account,
                all_accounts=bool(given["all_accounts"]),
            ),
        )
    except OutboxError as exc:
        return await render_create(request, error=str(exc), status=400, **given)
    return page(request, "created.html", endpoint_id=endpoint_id, secret=secret, url=url)


async def switch(request: web.Request) -> web.StreamResponse:
    ep_id = checked_endpoint_id(request)
    enabled = request.path.endswith("/enable")
    try:
        pending = await db(
            request, lambda conn: endpoint_verbs.switch(conn, ep_id, enabled=enabled)
        )
    except OutboxError as exc:
        return await _refused(request, ep_id, exc)
    verb = "enabled" if enabled else "disabled"
    what = "are sent as they fall due" if enabled else "wait until it is enabled again"
    note = f"{verb} {ep_id}" + (f"; its {pending} pending deliveries {what}" if pending else "")
    raise done(request, f"/endpoints/{ep_id}", note)


async def rotate(request: web.Request) -> web.Response:
    ep_id = checked_endpoint_id(request)
    data = await form(request)
    try:
        overlap = parse_age(text(data, "overlap").strip() or "24h", "--overlap", zero=True)
        secret, until = await db(request, lambda conn: endpoint_verbs.rotate(conn, ep_id, overlap))
    except OutboxError as exc:
        return await _refused(request, ep_id, exc)
    return page(request, "rotated.html", endpoint_id=ep_id, secret=secret, until=until)


async def send_test(request: web.Request) -> web.StreamResponse:
    ep_id = checked_endpoint_id(request)
    data = await form(request)
    wanted = text(data, "type").strip() or None
    settings = context(request).settings
    try:
        target = await db(request, lambda conn: endpoint_verbs.test_target(conn, ep_id, wanted))
        result = await asyncio.to_thread(endpoint_verbs.send_test, settings, target)
    except OutboxError as exc:
        return await _refused(request, ep_id, exc)
    verdict = endpoint_verbs.test_verdict(target.sent_type, result)
    raise done(request, f"/endpoints/{ep_id}", verdict)


async def replay(request: web.Request) -> web.StreamResponse:
    ep_id = checked_endpoint_id(request)
    if session(request).account is not None:
        # outbox_account may not lock events, which replay does so that pruning waits for it.
        raise web.HTTPForbidden(text="replay is the operator's: `outbox replay --account`")
    data = await form(request)
    try:
        since = parse_timestamp(_required(text(data, "since"), "--since"), "--since")
        until_text = text(data, "until").strip()
        until = parse_timestamp(until_text, "--until") if until_text else None
        outcome = await db(
            request,
            lambda conn: deliveries_verbs.replay(conn, endpoint_id=ep_id, since=since, until=until),
        )
    except OutboxError as exc:
        return await _refused(request, ep_id, exc)
    note = (
        f"requeued {outcome.requeued}, created {outcome.created}, "
        f"already pending {outcome.already_pending}"
    )
    if not outcome.endpoint_enabled and (outcome.requeued or outcome.created):
        note += "; the endpoint is disabled: these wait until it is enabled"
    raise done(request, f"/endpoints/{ep_id}", note)


def _required(value: str, option: str) -> str:
    if not value.strip():
        raise ConfigError(f"{option} is required: give an ISO 8601 time such as 2024-01-15T10:30Z")
    return value


async def confirm_delete(request: web.Request) -> web.Response:
    ep_id = checked_endpoint_id(request)
    endpoint = await db(request, lambda conn: admin.get_endpoint(conn, ep_id))
    if endpoint is None:
        raise web.HTTPNotFound(text="no such endpoint")
    return page(request, "delete.html", endpoint=endpoint)


async def delete(request: web.Request) -> web.StreamResponse:
    ep_id = checked_endpoint_id(request)
    data = await form(request)
    allow_pending = text(data, "yes") == "on"
    try:
        outcome = await db(
            request, lambda conn: endpoint_verbs.delete(conn, ep_id, allow_pending=allow_pending)
        )
    except OutboxError as exc:
        return await _refused(request, ep_id, exc)
    raise done(request, "/", f"deleted {ep_id} and its {outcome.deliveries} deliveries")


async def redeliver(request: web.Request) -> web.StreamResponse:
    try:
        delivery_id = parse_delivery_id(request.match_info["id"])
    except ConfigError:
        raise web.HTTPNotFound(text="no such delivery") from None
    outcome = await db(request, lambda conn: admin.redeliver(conn, [delivery_id]))
    if outcome.already_pending:
        note = f"delivery {delivery_id} is already pending; it is sent when due"
    else:
        note = f"requeued delivery {delivery_id}: due now, the retry ladder starting over"
    raise done(request, f"/deliveries/{delivery_id}", note)


async def _refused(request: web.Request, ep_id: str, exc: OutboxError) -> web.Response:
    if str(exc).startswith("no endpoint with id"):
        raise web.HTTPNotFound(text="no such endpoint")
    return await render_endpoint(request, ep_id, error=str(exc), status=400)
