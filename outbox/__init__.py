"""Stover outgoing webhooks: a PostgreSQL transactional outbox and the relay that delivers it."""

__version__ = "0.1.0"
