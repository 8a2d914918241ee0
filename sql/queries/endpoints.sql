-- Endpoint upkeep that runs on a schedule (outbox.db.upkeep).

-- name: endpoints_disable_failing
select outbox.disable_failing_endpoints(%(after)s::interval);
