-- Reads behind `outbox dashboard`'s pages (its writes are the CLI verbs' own, in admin.sql).
-- An endpoint's health covers the deliveries created since %(since)s (the last 24 hours): one
-- range of deliveries_endpoint_created_idx per endpoint, so a page costs the same however much
-- history the tables hold.

-- name: endpoints_listed
-- The list page's endpoints; their health comes from endpoint_hours.
select ep.id, ep.url, ep.enabled, ep.event_types, ep.description, ep.account_id,
       ep.all_accounts, ep.breaker_opened_at
from outbox.endpoints ep
order by ep.created_at, ep.id;

-- name: endpoint_page
-- One endpoint; its pending deliveries are a range of the partial index deliveries_pending_idx.
select ep.id, ep.url, ep.enabled, ep.event_types, ep.description, ep.account_id,
       ep.all_accounts, ep.consecutive_failures, ep.breaker_opened_at, ep.probe_at, ep.probes,
       ep.disabled_at, ep.disabled_reason, ep.secret,
       case when ep.previous_secret_until > now() then ep.previous_secret_until end
           as previous_secret_until,
       (select count(*) from outbox.deliveries d
        where d.endpoint_id = ep.id and d.status = 'pending') as pending
from outbox.endpoints ep
where ep.id = %(endpoint_id)s::text;

-- name: endpoint_hours
-- Each hour since %(since)s (hour 0 is the first) of the deliveries created then: counted from
-- the deliveries alone, their status and attempt counts (a delivered delivery's last attempt
-- answered 2xx, each of its other attempts and every attempt of the rest did not).
select ep.id as endpoint_id,
       floor(extract(epoch from (d.created_at - %(since)s::timestamptz)) / 3600)::integer as hour,
       count(*) filter (where d.status = 'delivered') as delivered,
       count(*) filter (where d.status = 'pending' and d.attempts > 0) as retrying,
       count(*) filter (where d.status = 'failed') as failed,
       coalesce(sum(d.attempts), 0) as attempts,
       max(d.delivered_at) as last_success
from outbox.endpoints ep
join outbox.deliveries d on d.endpoint_id = ep.id and d.created_at >= %(since)s::timestamptz
where %(endpoint_id)s::text is null or ep.id = %(endpoint_id)s::text
group by 1, 2;

-- name: endpoints_p50
-- The median attempt duration of each endpoint's 200 newest deliveries in the window: attempts
-- by primary key, a bounded read whatever the window holds.
select ep.id as endpoint_id, p.p50_ms
from outbox.endpoints ep
cross join lateral (
    select percentile_cont(0.5) within group (order by a.duration_ms) as p50_ms
    from (
        select d.id from outbox.deliveries d
        where d.endpoint_id = ep.id and d.created_at >= %(since)s::timestamptz
        order by d.created_at desc
        limit 200
    ) recent
    join outbox.attempts a on a.delivery_id = recent.id
) p
where %(endpoint_id)s::text is null or ep.id = %(endpoint_id)s::text;

-- name: endpoint_deliveries
-- Newest first along deliveries_endpoint_created_idx; `since` bounds the same index range.
select d.id, d.status, d.attempts, d.ladder_start, d.event_id, e.type as event_type,
       e.created_at as event_created_at, d.endpoint_id, d.account_id, d.next_attempt_at,
       d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at, d.created_at
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where d.endpoint_id = %(endpoint_id)s::text
  and d.created_at >= coalesce(%(since)s::timestamptz, '-infinity'::timestamptz)
  and (%(status)s::text is null or d.status = %(status)s::text)
  and (%(event_type)s::text is null
       or outbox.type_matches(array[%(event_type)s::text], e.type))
order by d.created_at desc, d.id desc
limit %(limit)s::integer;

-- name: endpoint_attempts_recent
-- The attempt timeline: the latest attempts among the endpoint's 200 newest deliveries.
select a.delivery_id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.error
from (
    select d.id from outbox.deliveries d
    where d.endpoint_id = %(endpoint_id)s::text
    order by d.created_at desc
    limit 200
) recent
join outbox.attempts a on a.delivery_id = recent.id
order by a.started_at desc, a.delivery_id desc, a.attempt desc
limit %(limit)s::integer;

-- name: event_for_body
-- What the relay renders a delivery's body from (payload.render_event).
select e.id, e.type, e.created_at, e.data::text as data_json,
       e.previous_attributes::text as previous_json
from outbox.events e
where e.id = %(event_id)s::text;
