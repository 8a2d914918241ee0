-- Read at every /metrics scrape and /healthz probe. Both must stay cheap on a large outbox: the
-- backlog walks only the partial pending index (pending rows), never delivered or failed history.

-- name: backlog_measure
-- Deliveries waiting (pending), those due now for enabled endpoints (what a relay could claim this
-- instant), and how long the oldest of those has been due. A delivery a relay holds has its
-- next_attempt_at pushed ahead by its lease, so in-flight work does not count as due.
select count(*) as pending,
       count(*) filter (where d.next_attempt_at <= now() and ep.enabled) as due,
       coalesce(extract(epoch from now() - min(d.next_attempt_at)
                        filter (where d.next_attempt_at <= now() and ep.enabled)), 0)::float8
           as oldest_due_age
from outbox.deliveries d
join outbox.endpoints ep on ep.id = d.endpoint_id
where d.status = 'pending';

-- name: migrations_applied
select version, checksum from outbox.schema_migrations order by version;

-- name: fan_out_lag
-- Committed events not fanned out yet, and the age of the oldest: a range of the events' primary
-- key past the fan-out cursor (outbox.fan_out_lag), no lock.
select l.events, l.oldest_age_s from outbox.fan_out_lag() l;
