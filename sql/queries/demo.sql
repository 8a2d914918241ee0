-- What `outbox demo` reads back. Every query is scoped to the demo's own endpoint, so earlier
-- runs and other endpoints in the same database do not change the figures. The audit queries are
-- printed for people to copy, with the endpoint id written in.

-- name: demo_leftovers_disable
-- Endpoints of earlier demo runs that were interrupted point at receivers that are gone: switch
-- them off so new writes do not queue deliveries for them.
update outbox.endpoints
set enabled = false
where enabled
  and description = %(description)s::text
  and url like 'http://127.0.0.1:%%';

-- name: demo_progress
select count(*) as captured,
       count(*) filter (where d.status = 'delivered') as delivered,
       count(*) filter (where d.status = 'delivered' and d.attempts = 1) as first_try,
       count(*) filter (where d.status = 'pending' and d.attempts > 0) as retrying,
       count(*) filter (where d.status = 'pending') as pending,
       count(*) filter (where d.status = 'failed') as failed,
       coalesce(sum(d.attempts), 0) as attempts,
       percentile_cont(0.5) within group (order by d.delivered_at - e.created_at)
           filter (where d.status = 'delivered') as p50,
       percentile_cont(0.95) within group (order by d.delivered_at - e.created_at)
           filter (where d.status = 'delivered') as p95,
       (select l.events from outbox.fan_out_lag() l) as waiting
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where d.endpoint_id = %(endpoint_id)s::text;

-- name: audit_by_status
select status, count(*) as deliveries, sum(attempts) as attempts,
       max(attempts) as most_attempts
from outbox.deliveries
where endpoint_id = %(endpoint_id)s
group by status
order by status;

-- name: audit_most_attempts
select a.attempt, to_char(a.started_at, 'HH24:MI:SS.MS') as started,
       a.status_code, a.error, round(a.duration_ms::numeric, 1) as ms
from outbox.attempts a
where a.delivery_id = (
    select id from outbox.deliveries
    where endpoint_id = %(endpoint_id)s
    order by attempts desc, id
    limit 1)
order by a.attempt;

-- name: audit_by_type
select e.type, count(*) as events,
       count(*) filter (where d.status = 'delivered') as delivered,
       count(*) filter (where d.attempts > 1) as retried
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where d.endpoint_id = %(endpoint_id)s
group by e.type
order by events desc, e.type;
