"""`outbox dashboard`: Settings > Webhooks > Outgoing as server-rendered pages (aiohttp, Jinja2)."""
