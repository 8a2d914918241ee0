-- Read at every /metrics scrape and /healthz probe. Both must stay cheap on a large outbox: the
-- backlog walks only the partial pending index (pending rows), never delivered or failed history.

-- name: backlog_measure
-- Deliveries waiting (pending), those due now for enabled endpoints whose circuit breaker is
-- closed (what a relay could claim this instant), how long the oldest of those has been due, and
-- those due now but held back by an open breaker. A delivery a relay holds has its
-- next_attempt_at pushed ahead by its lease, so in-flight work does not count as due.
select count(*) as pending,
       count(*) filter (where d.next_attempt_at <= now() and ep.enabled
                          and ep.breaker_opened_at is null) as due,
       coalesce(extract(epoch from now() - min(d.next_attempt_at)
                        filter (where d.next_attempt_at <= now() and ep.enabled
                                  and ep.breaker_opened_at is null)), 0)::float8
           as oldest_due_age,
       count(*) filter (where d.next_attempt_at <= now() and ep.enabled
                          and ep.breaker_opened_at is not null) as held
from outbox.deliveries d
join outbox.endpoints ep on ep.id = d.endpoint_id
where d.status = 'pending';

-- name: endpoints_breakers
-- The enabled endpoints whose circuit breaker is open, with how long it has been, and how many
-- endpoints are disabled. A read of the endpoints, as many as the installation has.
select ep.id, extract(epoch from now() - ep.breaker_opened_at)::float8, null::bigint
from outbox.endpoints ep
where ep.enabled and ep.breaker_opened_at is not null
union all
select null, null, count(*)
from outbox.endpoints ep
where not ep.enabled;

-- name: migrations_applied
select version, checksum from outbox.schema_migrations order by version;

-- name: fan_out_lag
-- Committed events not fanned out yet, and the age of the oldest: a range of the events' primary
-- key past the fan-out cursor (outbox.fan_out_lag), no lock.
select l.events, l.oldest_age_s from outbox.fan_out_lag() l;
