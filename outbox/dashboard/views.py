"""The dashboard's pages: the endpoint list, the create form, an endpoint, a delivery, login."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from outbox import payload, signing
from outbox.commands import endpoint_id, shown, type_pattern
from outbox.commands.deliveries import STATUSES, parse_delivery_id, parse_timestamp
from outbox.commands.endpoints import mask
from outbox.dashboard import access, catalog, chart, links
from outbox.dashboard.app import context, db, page, session, set_cookie
from outbox.db import admin, portal
from outbox.db import dashboard as reads
from outbox.errors import ConfigError

WINDOW = timedelta(hours=24)
PAGE_ROWS = 50


def routes(app: web.Application) -> None:
    app.router.add_get("/", endpoints_page)
    app.router.add_get("/endpoints/new", create_form)
    app.router.add_get("/endpoints/{id}", endpoint_page)
    app.router.add_get("/deliveries/{id}", delivery_page)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)


def window_start() -> datetime:
    """The first hour of the 24-hour window, on an hour boundary so the chart's bars are hours."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - WINDOW + timedelta(hours=1)


async def endpoints_page(request: web.Request) -> web.Response:
    since = window_start()

    def read(
        conn: admin.Connection,
    ) -> tuple[list[reads.Listed], dict[str, reads.Health], dict[str, list[reads.Hour]]]:
        return (reads.listed(conn), *reads.health(conn, since))

    endpoints, health, hours = await db(request, read)
    charts = {e.id: chart.svg(hours.get(e.id, [])) for e in endpoints}
    return page(request, "endpoints.html", endpoints=endpoints, health=health, charts=charts)


async def create_form(request: web.Request) -> web.Response:
    return await render_create(request)


async def render_create(
    request: web.Request, *, error: str | None = None, status: int = 200, **given: object
) -> web.Response:
    known = await db(request, admin.known_event_types)
    values = {
        "url": "",
        "description": "",
        "account": "",
        "events": [],
        "all_accounts": False,
        **given,
    }
    return page(
        request,
        "create.html",
        status=status,
        error=error,
        groups=catalog.grouped(known),
        descriptions=catalog.DESCRIPTIONS,
        form=values,
    )


def checked_endpoint_id(request: web.Request) -> str:
    try:
        return endpoint_id(request.match_info["id"])
    except argparse.ArgumentTypeError:
        raise web.HTTPNotFound(text="no such endpoint") from None


@dataclass(frozen=True)
class Filters:
    """The deliveries filter, checked as `outbox deliveries list` checks its options."""

    status: str | None = None
    event_type: str | None = None
    since: datetime | None = None


def read_filters(query: Mapping[str, str]) -> Filters:
    get = query.get
    status = get("status") or None
    if status is not None and status not in STATUSES:
        raise ConfigError(
            f"--status: invalid choice: {shown(status)} (choose from {', '.join(STATUSES)})"
        )
    event_type = get("type") or None
    if event_type is not None:
        try:
            event_type = type_pattern(event_type)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"--event-type: {exc}") from None
    since_text = get("since") or None
    since = None if since_text is None else parse_timestamp(since_text, "--since")
    return Filters(status, event_type, since)


async def endpoint_page(request: web.Request) -> web.Response:
    return await render_endpoint(request, checked_endpoint_id(request))


async def render_endpoint(
    request: web.Request,
    ep_id: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    since = window_start()
    filter_error = None
    try:
        filters = read_filters(request.query)
    except ConfigError as exc:
        filters, filter_error = Filters(), str(exc)

    def read(conn: admin.Connection) -> EndpointView | None:
        endpoint = reads.endpoint(conn, ep_id)
        if endpoint is None:
            return None
        health, hours = reads.health(conn, since, ep_id)
        return EndpointView(
            endpoint,
            health.get(ep_id),
            hours.get(ep_id, []),
            reads.deliveries(
                conn,
                ep_id,
                status=filters.status,
                event_type=filters.event_type,
                since=filters.since,
                limit=PAGE_ROWS,
            ),
            reads.timeline(conn, ep_id),
        )

    view = await db(request, read)
    if view is None:
        raise web.HTTPNotFound(text="no such endpoint")
    return page(
        request,
        "endpoint.html",
        status=400 if filter_error and status == 200 else status,
        endpoint=view.endpoint,
        masked=mask(view.endpoint.secret),
        health=view.health,
        chart=chart.svg(view.hours),
        deliveries=view.deliveries,
        timeline=view.timeline,
        filters=request.query,
        error=error or filter_error,
        statuses=STATUSES,
    )


@dataclass(frozen=True)
class EndpointView:
    """What an endpoint's page shows, read in one connection."""

    endpoint: reads.EndpointPage
    health: reads.Health | None
    hours: list[reads.Hour]
    deliveries: list[admin.Delivery]
    timeline: list[reads.TimelineAttempt]


@dataclass(frozen=True)
class SentAttempt:
    """An attempt with the headers it was sent with, rebuilt as the relay signed them."""

    attempt: admin.Attempt
    headers: dict[str, str]


async def delivery_page(request: web.Request) -> web.Response:
    try:
        delivery_id = parse_delivery_id(request.match_info["id"])
    except ConfigError:
        raise web.HTTPNotFound(text="no such delivery") from None

    def read(conn: admin.Connection) -> DeliveryView | None:
        delivery = admin.get_delivery(conn, delivery_id)
        if delivery is None:
            return None
        event = reads.event_body(conn, delivery.event_id)
        endpoint = admin.get_endpoint(conn, delivery.endpoint_id)
        if event is None or endpoint is None:
            return None
        return DeliveryView(delivery, admin.list_attempts(conn, delivery_id), event, endpoint)

    view = await db(request, read)
    if view is None:
        raise web.HTTPNotFound(text="no such delivery")
    event = view.event
    body = payload.render_event(
        event.id,
        event.type,
        event.created_at,
        event.data_json,
        event.previous_json,
        record=view.delivery.record,
        sequence=view.delivery.sequence,
    )
    sent = [SentAttempt(a, _headers(view.delivery, view.endpoint, body, a)) for a in view.attempts]
    return page(
        request,
        "delivery.html",
        delivery=view.delivery,
        body=body.decode("utf-8", "replace"),
        body_bytes=len(body),
        attempts=sent,
    )


HIDDEN = "(set on the endpoint; not shown)"


@dataclass(frozen=True)
class DeliveryView:
    delivery: admin.Delivery
    attempts: list[admin.Attempt]
    event: reads.EventBody
    endpoint: admin.EndpointDetail


def _headers(
    delivery: admin.Delivery, endpoint: admin.EndpointDetail, body: bytes, a: admin.Attempt
) -> dict[str, str]:
    """The attempt's headers as the relay made them: its number and start second, signed with
    the endpoint's secret (both, during a rotation's overlap), and the endpoint's own headers by
    name. Neither the secret nor a custom header's value (it may be a credential) is shown."""
    hidden = tuple((name, HIDDEN) for name in endpoint.header_names)
    return signing.delivery_headers(
        secret=endpoint.secret,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        delivery_id=str(delivery.id),
        attempt=a.attempt,
        body=body,
        timestamp=int(a.started_at.timestamp()),
        user_agent=signing.USER_AGENT,
        previous_secret=endpoint.previous_secret,
        custom=hidden,
    )


async def login_form(request: web.Request) -> web.Response:
    return page(request, "login.html", error=None)


async def login(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    token = ctx.settings.dashboard_token
    given = (await request.post()).get("token")
    if token is None:
        raise web.HTTPSeeOther("/")
    if not isinstance(given, str) or not access.token_matches(given, token):
        return page(request, "login.html", status=403, error="that is not the dashboard's token")
    response = web.HTTPSeeOther("/")
    # A new session id on login: a session planted before it gains nothing.
    set_cookie(response, request, access.new_session(authed=True))
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login" if context(request).settings.dashboard_token else "/")
    response.del_cookie(access.COOKIE, path="/")
    _ = session(request)
    return response


async def open_link(request: web.Request) -> web.StreamResponse:
    """A portal link: a session for its account alone, until the link expires."""
    ctx = context(request)
    token = ctx.settings.dashboard_token
    if token is None:
        raise web.HTTPNotFound(text="portal links need OUTBOX_DASHBOARD_TOKEN")
    link = links.read(links.link_key(token), request.match_info["token"])
    if isinstance(link, str):
        return page(request, "error.html", status=403, error=link)
    issued = datetime.fromtimestamp(link.issued, UTC)
    revoked = await db(
        request, lambda conn: portal.revoked(conn, link.account, issued), operator=True
    )
    if revoked:
        return page(request, "error.html", status=403, error="this link has been revoked")
    opened = access.new_session(
        authed=True,
        account=link.account,
        read_only=link.read_only,
        issued=link.issued,
        expires=link.expires,
    )
    response = web.HTTPSeeOther("/")
    set_cookie(response, request, opened)
    return response
