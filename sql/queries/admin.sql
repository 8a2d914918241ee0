-- Operator queries behind `outbox endpoints`, `outbox deliveries`, `outbox redeliver` and
-- `outbox replay`. Every parameter carries an explicit cast: psycopg sends None and str untyped.

-- name: event_types_list
select name from outbox.event_types order by name;

-- name: endpoint_insert
insert into outbox.endpoints (url, event_types, description, enabled, secret, account_id,
                              all_accounts, headers, rate_limit, ordered)
values (%(url)s::text, %(event_types)s::text[], %(description)s::text, %(enabled)s::boolean,
        %(secret)s::text, %(account_id)s::text, %(all_accounts)s::boolean, %(headers)s::jsonb,
        %(rate_limit)s::integer, %(ordered)s::boolean)
returning id;

-- name: endpoint_ordered_set
-- Ordering applies to the deliveries fan-out writes from now on; those already pending keep the
-- way they were written (a held one is still released when the one ahead of it ends).
update outbox.endpoints set ordered = %(ordered)s::boolean
where id = %(endpoint_id)s::text
returning id;

-- name: account_endpoints_lock
-- Serialises endpoint creation within one account, so two at once cannot pass its limit.
select pg_advisory_xact_lock(hashtextextended('outbox.account:' || %(account_id)s::text, 0));

-- name: account_endpoints_count
select count(*) from outbox.endpoints where account_id = %(account_id)s::text;

-- name: endpoint_exists
select exists (select 1 from outbox.endpoints where id = %(endpoint_id)s::text);

-- name: endpoints_list
-- The pending count walks the endpoint's range of the partial pending index; the failed count walks the endpoint's
-- deliveries, which is fine for an operator's listing.
select ep.id, ep.url, ep.enabled, ep.event_types, ep.description, ep.created_at,
       ep.account_id, ep.all_accounts, ep.consecutive_failures, ep.failing_since,
       ep.breaker_opened_at, ep.probe_at, ep.probes, ep.disabled_at, ep.disabled_reason,
       -- The custom headers' names only: their values may be credentials.
       array(select jsonb_object_keys(ep.headers) order by 1) as header_names, ep.rate_limit,
       (select count(*) from outbox.deliveries d
        where d.endpoint_id = ep.id and d.status = 'pending') as pending,
       (select count(*) from outbox.deliveries d
        where d.endpoint_id = ep.id and d.status = 'failed') as failed
from outbox.endpoints ep
where %(account_id)s::text is null or ep.account_id = %(account_id)s::text
order by ep.created_at, ep.id;

-- name: endpoint_get
select ep.id, ep.url, ep.enabled, ep.event_types, ep.description, ep.created_at,
       ep.updated_at, ep.account_id, ep.all_accounts, ep.consecutive_failures, ep.failing_since,
       ep.last_failure_at, ep.breaker_opened_at, ep.probe_at, ep.probes, ep.disabled_at,
       ep.disabled_reason, ep.secret, c.pending, c.failed, c.delivered,
       array(select jsonb_object_keys(ep.headers) order by 1) as header_names, ep.rate_limit,
       case when ep.previous_secret_until > now() then ep.previous_secret end as previous_secret,
       case when ep.previous_secret_until > now() then ep.previous_secret_until end
           as previous_secret_until,
       ep.ordered
from outbox.endpoints ep
cross join lateral (
    select count(*) filter (where d.status = 'pending') as pending,
           count(*) filter (where d.status = 'failed') as failed,
           count(*) filter (where d.status = 'delivered') as delivered
    from outbox.deliveries d
    where d.endpoint_id = ep.id
) c
where ep.id = %(endpoint_id)s::text;

-- name: endpoint_options_lock
-- The endpoint's custom headers, locked for an update that merges changes into them.
select headers from outbox.endpoints where id = %(endpoint_id)s::text for no key update;

-- name: endpoint_update
-- Each column given (not null) is written, and checked by the table's triggers as any UPDATE is;
-- %(rate_limit_given)s says whether rate_limit (null: no limit) is one of them.
update outbox.endpoints ep
set url = coalesce(%(url)s::text, ep.url),
    event_types = coalesce(%(event_types)s::text[], ep.event_types),
    description = coalesce(%(description)s::text, ep.description),
    headers = coalesce(%(headers)s::jsonb, ep.headers),
    rate_limit = case when %(rate_limit_given)s::boolean then %(rate_limit)s::integer
                      else ep.rate_limit end,
    -- Ordering applies to the deliveries fan-out writes from then on (endpoint_ordered_set).
    ordered = coalesce(%(ordered)s::boolean, ep.ordered)
where ep.id = %(endpoint_id)s::text;

-- name: endpoint_headers
-- The custom headers with their values, for sending only (`outbox endpoints test`).
select headers from outbox.endpoints where id = %(endpoint_id)s::text;

-- name: endpoint_enabled_set
-- Returns the pending deliveries that this switch holds back or releases.
update outbox.endpoints
set enabled = %(enabled)s::boolean, updated_at = now()
where id = %(endpoint_id)s::text
returning (select count(*) from outbox.deliveries d
           where d.endpoint_id = %(endpoint_id)s::text and d.status = 'pending') as pending;

-- name: endpoint_secret_rotate
-- The new secret and when the replaced one stops signing (null: no overlap). Rows only for an
-- endpoint this session can see.
select r.secret, r.overlap_until
from outbox.endpoints ep
cross join lateral outbox.rotate_secret(ep.id, %(overlap)s::interval) r
where ep.id = %(endpoint_id)s::text;

-- name: endpoint_lock
-- FOR UPDATE conflicts with the KEY SHARE lock a new delivery's foreign key takes, so no
-- delivery to this endpoint can appear between counting the pending ones and deleting.
select id from outbox.endpoints where id = %(endpoint_id)s::text for update;

-- name: endpoint_deliveries_count
select count(*) filter (where status = 'pending') as pending, count(*) as total
from outbox.deliveries
where endpoint_id = %(endpoint_id)s::text;

-- name: endpoint_delete
delete from outbox.endpoints where id = %(endpoint_id)s::text;

-- name: deliveries_list
-- Identity ids grow with insertion, so id order is newest first and walks the primary key.
select d.id, d.status, d.attempts, d.ladder_start, d.event_id, e.type as event_type,
       e.created_at as event_created_at, d.endpoint_id, d.account_id, d.next_attempt_at,
       d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at, d.created_at
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where (%(endpoint_id)s::text is null or d.endpoint_id = %(endpoint_id)s::text)
  and (%(account_id)s::text is null or d.account_id = %(account_id)s::text)
  and (%(status)s::text is null or d.status = %(status)s::text)
  and (%(event_type)s::text is null
       or outbox.type_matches(array[%(event_type)s::text], e.type))
order by d.id desc
limit %(limit)s::integer;

-- name: delivery_get
-- A held delivery (ordered, pending, no due time) waits for the one of its record that is under
-- way or waiting on the retry ladder, else for the held one with the lowest number.
select d.id, d.status, d.attempts, d.ladder_start, d.event_id, e.type as event_type,
       e.created_at as event_created_at, d.endpoint_id, d.account_id, d.next_attempt_at,
       d.last_attempt_at, d.last_status_code, d.last_error, d.delivered_at, d.created_at,
       d.record, d.sequence, d.ordered,
       case when d.ordered and d.status = 'pending' and d.next_attempt_at is null then (
           select a.id
           from outbox.deliveries a
           where a.endpoint_id = d.endpoint_id
             and a.record = d.record
             and a.status = 'pending'
             and a.ordered
             and a.id <> d.id
           order by a.next_attempt_at is null, a.sequence
           limit 1)
       end as waiting_for
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where d.id = %(delivery_id)s::bigint;

-- name: attempts_list
select attempt, started_at, duration_ms, status_code, error,
       left(response_body, 200) as response_head,
       coalesce(char_length(response_body), 0) as response_length
from outbox.attempts
where delivery_id = %(delivery_id)s::bigint
order by attempt;

-- name: deliveries_status_lock
-- Lock the named deliveries first so a relay finishing one of them cannot slip in between
-- reading its status and requeueing it.
select id, status from outbox.deliveries
where id = any(%(delivery_ids)s::bigint[])
order by id
for update;

-- name: deliveries_requeue
-- Due now, from the first rung of the retry ladder again: ladder_start = attempts, while the
-- attempt number keeps counting up from where it was.
update outbox.deliveries
set status = 'pending', next_attempt_at = now(), ladder_start = attempts, delivered_at = null
where id = any(%(delivery_ids)s::bigint[]) and status in ('failed', 'delivered')
returning id;

-- name: deliveries_failed_requeue
-- --since means "failed since": the last attempt, which decided the failure, is at or after it.
update outbox.deliveries
set status = 'pending', next_attempt_at = now(), ladder_start = attempts, delivered_at = null
where status = 'failed'
  and (%(endpoint_id)s::text is null or endpoint_id = %(endpoint_id)s::text)
  and (%(since)s::timestamptz is null
       or coalesce(last_attempt_at, created_at) >= %(since)s::timestamptz)
returning id;

-- name: deliveries_hold_ordered
-- Requeued deliveries of ordered endpoints wait for the one of their record under way, if any.
select outbox.hold_ordered(%(delivery_ids)s::bigint[]);

-- name: relays_wake
select outbox.wake_relays();

-- name: endpoint_share_lock
-- Serialises replays of one endpoint (NO KEY UPDATE conflicts with itself) without blocking
-- writers, whose new deliveries only take KEY SHARE on the endpoint.
select event_types, enabled, account_id, all_accounts, ordered from outbox.endpoints
where id = %(endpoint_id)s::text
for no key update;

-- name: endpoint_replay
-- The window's events that the endpoint subscribes to (and that --types admits), among those
-- fanned out already (the others get their deliveries from fan-out): the ones with a delivery to
-- this endpoint are requeued unless still pending, the others get a new delivery.
-- Runs after endpoint_share_lock, in a statement of its own so its snapshot sees what any replay
-- that held the lock before it committed.
with matching as (
    select e.id
    from outbox.events e
    where e.created_at >= %(since)s::timestamptz
      and (%(until)s::timestamptz is null or e.created_at < %(until)s::timestamptz)
      and outbox.type_matches(%(subscribed)s::text[], e.type)
      and (%(types)s::text[] is null or outbox.type_matches(%(types)s::text[], e.type))
      -- nor, like fan-out, an operational event about the endpoint itself
      and not (starts_with(e.type, 'outbox.')
               and e.data ->> 'endpoint_id' is not distinct from %(endpoint_id)s::text)
      and outbox.fanned_out(e.xid)
      -- fan-out's rule: the endpoint's own account's events, or, without an account, the events
      -- without one (every account's with all_accounts)
      and (e.account_id = %(account_id)s::text
           or (%(account_id)s::text is null and (e.account_id is null or %(all_accounts)s::boolean)))
    -- `outbox prune` deleting one of these events waits for this replay to commit, and then
    -- removes the new delivery with the event instead of leaving it without one.
    for key share of e
),
existing as (
    select d.id, d.event_id, d.status
    from outbox.deliveries d
    join matching m on m.id = d.event_id
    where d.endpoint_id = %(endpoint_id)s::text
),
requeued as (
    update outbox.deliveries d
    set status = 'pending', next_attempt_at = now(), ladder_start = d.attempts,
        delivered_at = null
    from existing x
    where d.id = x.id and d.status in ('failed', 'delivered')
    returning d.id
),
created as (
    -- with the record and number fan-out gave the event
    insert into outbox.deliveries (event_id, endpoint_id, account_id, record, sequence, ordered)
    select m.id, %(endpoint_id)s::text, %(account_id)s::text, r.record, r.sequence,
           %(ordered)s::boolean and r.record is not null
    from matching m
    left join outbox.event_records r on r.event_id = m.id
    where not exists (select 1 from existing x where x.event_id = m.id)
    on conflict (event_id, endpoint_id) do nothing
    returning id
),
-- An ordered endpoint's take their turns (outbox.hold_ordered sees what this statement wrote).
held as (
    select case when %(ordered)s::boolean
                then outbox.hold_ordered(array(select id from requeued
                                               union all
                                               select id from created))
           end as held
)
select (select count(*) from requeued) as requeued,
       (select count(*) from created) as created,
       (select count(*) from existing where status = 'pending') as already_pending,
       (select held from held) as held;
