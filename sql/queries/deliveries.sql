-- name: deliveries_claim
-- Claim up to %(limit)s due deliveries of enabled endpoints under a lease. The lease is the
-- delivery's own next_attempt_at pushed %(lease)s seconds ahead: a relay that dies leaves the row
-- to come due again by itself, and the value it set doubles as the token its completion must match.
--
-- An endpoint whose circuit breaker is open (probe_at set) gives nothing until probe_at has
-- passed, and then one delivery, the probe: the claim locks the endpoint's row (SKIP LOCKED, so
-- a relay claiming at the same moment passes it by, and one that comes after finds probe_at
-- moved) and pushes probe_at on by the lease, so one probe at a time is in flight across every
-- relay; recording its outcome sets the next probe's time or closes the breaker. Endpoints with
-- a closed breaker are listed, probed and locked as before.
--
-- An endpoint with a rate limit (rate_limit starts a second, across relays) is taken the same
-- way: its row locked (SKIP LOCKED), and only while it has a delivery due and a slot free within
-- the next second. It gives as many deliveries as it has slots from rate_next_at (or now) to a
-- second on, 1/rate_limit seconds apart, and rate_next_at moves past the slots taken, in this
-- statement: however many relays claim, no two deliveries share a slot. Each such row comes
-- with [seconds from now() to its slot, seconds from when it fell due to its slot, now() in Unix
-- seconds]; the relay starts the attempt at its slot, which is always well inside the lease
-- (outbox.db.store.ClockLink says when that is by the relay's clock). Endpoints without a
-- limit read nothing of this: their rows are neither locked nor written.
--
-- Endpoint by endpoint, through deliveries_pending_idx (endpoint_id, next_attempt_at): `turn`
-- lists the enabled endpoints this relay is not skipping (%(busy)s: those at its per-endpoint
-- cap) in the order they take turns, and each gives its oldest due deliveries until %(limit)s
-- are locked. Accounts take turns, and endpoints within an account (deliveries_claim_turn_each):
-- accounts in descending order starting below `after_account`, the account the relay's
-- previous claim reached last, and wrapping round; within each account its endpoints in
-- descending id order starting below the one that account's last turn reached (`afters`, an
-- object of account to endpoint id; the account-less endpoints are account ''). So an account
-- with many endpoints, or a large backlog, gets a turn like any other account with work. The
-- LIMIT stops the walk as soon as it has enough, so only the rows claimed are read and locked
-- (with the dead entries at the head of each endpoint's range that it visits), and the
-- deliveries of disabled or skipped endpoints are never read. SKIP LOCKED inside each endpoint's scan keeps concurrent relays on different rows. The
-- MATERIALIZED CTE is a fence: the planner cannot flatten it into a join that locks whatever
-- rows it happens to visit.
--
-- This is a template (outbox.db.store.claim_statement): the lines `-- turn`, `-- due` and
-- `-- slot` are replaced by the named fragments that follow this statement. While no enabled
-- endpoint has a rate limit, the plain fragments are used, which leave out everything the limit
-- needs: the whole statement then costs what it cost before limits existed (the limit's parts
-- took planning from 0.57 to 1.02 ms a claim). The `_limited` fragments take slots as below.
--
-- The claim commits without waiting for its WAL to reach disk (synchronous_commit off for this
-- statement's transaction only): a claim lost in a server crash only makes its deliveries due
-- again, which at-least-once delivery allows, and the outcome's durable commit flushes the claim
-- with it. The flush wait was the claim's largest cost on the commit-to-receipt path.
with recursive async_commit as materialized (
    select set_config('synchronous_commit', 'off', true)
),
-- turn
-- due
-- PostgreSQL may run a prepared statement with a generic plan, and one made while the tables
-- were still empty is kept until they are next analyzed: a join planned then (UPDATE ... FROM
-- due, events, endpoints) read the whole of outbox.events by hash on every claim. The event and
-- endpoint are therefore lateral lookups of one row each (LIMIT 1 keeps the planner from
-- flattening them back into joins), and the ids go in as an array. (A generic plan made while
-- outbox.deliveries held a few rows and had never been analyzed still finds those ids by a scan
-- of it: see outbox.db.store for why the relay leaves the choice of plan to PostgreSQL.)
claimed as (
    update outbox.deliveries d
    set next_attempt_at = now() + make_interval(secs => %(lease)s::float8)
    from async_commit
    where d.id = any (array(select id from due))
    returning d.id, d.attempts, d.ladder_start, d.next_attempt_at, d.event_id, d.endpoint_id,
              d.record, d.sequence
)
select c.id, c.attempts, c.ladder_start, c.next_attempt_at,
       e.id, e.type, e.created_at, e.data::text, e.previous_attributes::text,
       ep.id, ep.url, ep.secret,
       c.id = any (array(select due.id from due where due.probe)) as probe, ep.failing,
       ep.previous_secret, ep.headers, ep.account_id, c.record, c.sequence,
-- slot
from claimed c
cross join lateral (
    select e.id, e.type, e.created_at, e.data, e.previous_attributes
    from outbox.events e
    where e.id = c.event_id
    limit 1
) e
cross join lateral (
    select ep.id, ep.url, ep.secret,
           ep.consecutive_failures > 0 or ep.probe_at is not null as failing,
           -- During a rotation's overlap the replaced secret signs too.
           case when ep.previous_secret_until > now() then ep.previous_secret end
               as previous_secret,
           -- Custom headers as text, parsed by the relay only when there are some.
           nullif(ep.headers, '{}')::text as headers,
           ep.account_id
    from outbox.endpoints ep
    where ep.id = c.endpoint_id
    limit 1
) ep;

-- name: deliveries_claim_turn_each
-- The claim's `turn` with up to 100 enabled endpoints: each enabled endpoint not skipped, each to
-- be probed in deliveries_pending_idx whether it has anything due, by account and then by
-- endpoint; an endpoint whose breaker is open only once its probe is due, and locked (the
-- sub-select: FOR UPDATE takes no UNION). An
-- endpoint given a rate limit a moment ago is left out until the relay takes the `_limited`
-- fragments (it looks every few seconds).
turn (id, probe) as (
    select t.id, t.probe
    from (
        select ep.id, coalesce(ep.account_id, '') as account, false as probe
        from outbox.endpoints ep
        where ep.enabled
          and ep.probe_at is null
          and ep.rate_limit is null
          and ep.id <> all (%(busy)s::text[])
        union all
        select open.id, open.account, true
        from (
            select ep.id, coalesce(ep.account_id, '') as account
            from outbox.endpoints ep
            where ep.enabled
              and ep.probe_at <= now()
              and ep.rate_limit is null
              and ep.id <> all (%(busy)s::text[])
            for update skip locked
        ) open
    ) t
    order by t.account >= %(after_account)s::text, t.account desc,
             t.id >= coalesce(%(afters)s::jsonb ->> t.account, ''), t.id desc
),

-- name: deliveries_claim_turn_walk
-- The claim's `turn` past 100 enabled endpoints, where probing each one would be most of the
-- claim (+0.6 ms at 1,000, +8 ms at 10,000 when few have work): the endpoints with pending
-- deliveries are found by skipping from one to the next through deliveries_pending_idx, one
-- descent each for the greatest endpoint_id below the last, so endpoints with nothing pending
-- cost nothing; here endpoints take turns by id whatever their account (an account has at most
-- OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT of them). (Those descents cross the dead entries that completed deliveries leave at the
-- tail of an endpoint's range until VACUUM, and the walk is a larger statement to plan, which
-- the probes of a few endpoints are not: with one endpoint the walk measured slower.)
below (id) as (
    select max(d.endpoint_id)
    from outbox.deliveries d
    where d.status = 'pending'
      and d.endpoint_id < %(after)s::text
    union all
    select (select max(d.endpoint_id)
            from outbox.deliveries d
            where d.status = 'pending'
              and d.endpoint_id < below.id)
    from below
    where below.id is not null
),
from_top (id) as (
    select max(d.endpoint_id)
    from outbox.deliveries d
    where d.status = 'pending'
    union all
    select (select max(d.endpoint_id)
            from outbox.deliveries d
            where d.status = 'pending'
              and d.endpoint_id < from_top.id)
    from from_top
    where from_top.id >= %(after)s::text
),
-- An endpoint whose breaker is open is usable only once its probe is due, and locked; the second
-- branch is never run for an endpoint the first one gave (LIMIT 1).
turn (id, probe) as (
    select walked.id, usable.probe
    from (select below.id from below where below.id is not null
          union all
          select from_top.id from from_top where from_top.id >= %(after)s::text) walked
    cross join lateral (
        select false as probe
        from outbox.endpoints ep
        where ep.id = walked.id
          and ep.enabled
          and ep.probe_at is null
          and ep.rate_limit is null
          and ep.id <> all (%(busy)s::text[])
        union all
        select true
        from (
            select 1
            from outbox.endpoints ep
            where ep.id = walked.id
              and ep.enabled
              and ep.probe_at <= now()
              and ep.rate_limit is null
              and ep.id <> all (%(busy)s::text[])
            for update skip locked
        ) open
        limit 1
    ) usable
),

-- name: deliveries_claim_due
-- The claim's `due`, and the probes' endpoints pushed on, without rate limits.
due as materialized (
    select taken.id, turn.id as endpoint_id, turn.probe
    from turn
    cross join lateral (
        select d.id
        from outbox.deliveries d
        where d.endpoint_id = turn.id
          and d.status = 'pending'
          and d.next_attempt_at <= now()
        order by d.next_attempt_at
        limit case when turn.probe then 1 else %(limit)s end
        for update of d skip locked
    ) taken
    limit %(limit)s
),
probing as (
    update outbox.endpoints ep
    set probe_at = now() + make_interval(secs => %(lease)s::float8)
    where ep.id = any (array(select due.endpoint_id from due where due.probe))
      -- Evaluated once: without a probe, the endpoints are not read at all.
      and (select bool_or(due.probe) from due)
),

-- name: deliveries_claim_slot
-- Without rate limits, no delivery has a slot.
       null::float8[] as slot

-- name: deliveries_claim_turn_each_limited
-- The claim's `turn` with up to 100 enabled endpoints: each enabled endpoint not skipped, each to
-- be probed in deliveries_pending_idx whether it has anything due; an endpoint whose breaker is
-- open only once its probe is due, and one with a rate limit only while it has a delivery due
-- and a slot free within the next second, both locked (the sub-select: FOR NO KEY UPDATE takes
-- no UNION; NO KEY, so fan-out adding deliveries to the endpoint never makes the claim skip it).
-- `quota`: the most deliveries the endpoint may give (NULL: up to the claim's limit); `rate` and
-- `base`: its limit and first free slot.
turn (id, probe, rate, base, quota) as (
    select t.id, t.probe, t.rate, t.base, t.quota
    from (
        select ep.id, coalesce(ep.account_id, '') as account, false as probe,
               null::integer as rate, null::timestamptz as base, null::integer as quota
        from outbox.endpoints ep
        where ep.enabled
          and ep.probe_at is null
          and ep.rate_limit is null
          and ep.id <> all (%(busy)s::text[])
        union all
        select held.id, held.account, held.probe, held.rate, held.base, held.quota
        from (
            select ep.id, coalesce(ep.account_id, '') as account,
                   ep.probe_at is not null as probe, ep.rate_limit as rate,
                   greatest(ep.rate_next_at, now()) as base,
                   case when ep.probe_at is not null then 1
                        when ep.rate_limit is not null then ceil(
                            (1.0 - greatest(extract(epoch from ep.rate_next_at - now()), 0.0))
                            * ep.rate_limit)::integer
                   end as quota
            from outbox.endpoints ep
            where ep.enabled
              and ep.id <> all (%(busy)s::text[])
              and (ep.probe_at <= now()
                   or (ep.probe_at is null
                       and ep.rate_limit is not null
                       -- its soonest pending delivery, by deliveries_pending_idx
                       and (select d.next_attempt_at from outbox.deliveries d
                            where d.endpoint_id = ep.id and d.status = 'pending'
                            order by d.next_attempt_at limit 1) <= now()))
              and (ep.rate_limit is null or ep.rate_next_at is null
                   or ep.rate_next_at < now() + interval '1 second')
            for no key update skip locked
        ) held
    ) t
    order by t.account >= %(after_account)s::text, t.account desc,
             t.id >= coalesce(%(afters)s::jsonb ->> t.account, ''), t.id desc
),

-- name: deliveries_claim_turn_walk_limited
-- The claim's `turn` past 100 enabled endpoints, where probing each one would be most of the
-- claim (+0.6 ms at 1,000, +8 ms at 10,000 when few have work): the endpoints with pending
-- deliveries are found by skipping from one to the next through deliveries_pending_idx, one
-- descent each for the greatest endpoint_id below the last, so endpoints with nothing pending
-- cost nothing; here endpoints take turns by id whatever their account (an account has at most
-- OUTBOX_MAX_ENDPOINTS_PER_ACCOUNT of them). (Those descents cross the dead entries that completed deliveries leave at the
-- tail of an endpoint's range until VACUUM, and the walk is a larger statement to plan, which
-- the probes of a few endpoints are not: with one endpoint the walk measured slower.)
below (id) as (
    select max(d.endpoint_id)
    from outbox.deliveries d
    where d.status = 'pending'
      and d.endpoint_id < %(after)s::text
    union all
    select (select max(d.endpoint_id)
            from outbox.deliveries d
            where d.status = 'pending'
              and d.endpoint_id < below.id)
    from below
    where below.id is not null
),
from_top (id) as (
    select max(d.endpoint_id)
    from outbox.deliveries d
    where d.status = 'pending'
    union all
    select (select max(d.endpoint_id)
            from outbox.deliveries d
            where d.status = 'pending'
              and d.endpoint_id < from_top.id)
    from from_top
    where from_top.id >= %(after)s::text
),
-- An endpoint whose breaker is open is usable only once its probe is due, and one with a rate
-- limit while it has a delivery due and a slot free within the next second, both locked, as in
-- deliveries_claim_turn_each; the second branch is never run for an endpoint the first one gave
-- (LIMIT 1).
turn (id, probe, rate, base, quota) as (
    select walked.id, usable.probe, usable.rate, usable.base, usable.quota
    from (select below.id from below where below.id is not null
          union all
          select from_top.id from from_top where from_top.id >= %(after)s::text) walked
    cross join lateral (
        select false as probe, null::integer as rate, null::timestamptz as base,
               null::integer as quota
        from outbox.endpoints ep
        where ep.id = walked.id
          and ep.enabled
          and ep.probe_at is null
          and ep.rate_limit is null
          and ep.id <> all (%(busy)s::text[])
        union all
        select held.probe, held.rate, held.base, held.quota
        from (
            select ep.probe_at is not null as probe, ep.rate_limit as rate,
                   greatest(ep.rate_next_at, now()) as base,
                   case when ep.probe_at is not null then 1
                        when ep.rate_limit is not null then ceil(
                            (1.0 - greatest(extract(epoch from ep.rate_next_at - now()), 0.0))
                            * ep.rate_limit)::integer
                   end as quota
            from outbox.endpoints ep
            where ep.id = walked.id
              and ep.enabled
              and ep.id <> all (%(busy)s::text[])
              and (ep.probe_at <= now()
                   or (ep.probe_at is null
                       and ep.rate_limit is not null
                       -- its soonest pending delivery, by deliveries_pending_idx
                       and (select d.next_attempt_at from outbox.deliveries d
                            where d.endpoint_id = ep.id and d.status = 'pending'
                            order by d.next_attempt_at limit 1) <= now()))
              and (ep.rate_limit is null or ep.rate_next_at is null
                   or ep.rate_next_at < now() + interval '1 second')
            for no key update skip locked
        ) held
        limit 1
    ) usable
),

-- name: deliveries_claim_due_limited
-- The claim's `due` with rate limits: each delivery's due time, and its endpoint's limit and
-- first free slot.
due as materialized (
    select taken.id, turn.id as endpoint_id, turn.probe, turn.rate, turn.base, taken.due_at
    from turn
    cross join lateral (
        select d.id, d.next_attempt_at as due_at
        from outbox.deliveries d
        where d.endpoint_id = turn.id
          and d.status = 'pending'
          and d.next_attempt_at <= now()
        order by d.next_attempt_at
        limit coalesce(turn.quota, %(limit)s)
        for update of d skip locked
    ) taken
    limit %(limit)s
),
-- The endpoints probed (probe_at pushed on by the lease) and rate-limited (rate_next_at moved
-- past the slots taken): one UPDATE, as an endpoint can be both.
touched as (
    update outbox.endpoints ep
    set probe_at = case when t.probe then now() + make_interval(secs => %(lease)s::float8)
                        else ep.probe_at end,
        rate_next_at = case when t.rate is not null
                            then t.base + make_interval(secs => t.taken / t.rate)
                            else ep.rate_next_at end
    from (
        select due.endpoint_id, bool_or(due.probe) as probe, min(due.rate) as rate,
               min(due.base) as base, count(*)::float8 as taken
        from due
        where due.probe or due.rate is not null
        group by due.endpoint_id
    ) t
    where ep.id = t.endpoint_id
      -- Evaluated once: without a probe or a rate limit, the endpoints are not read at all.
      and (select bool_or(due.probe or due.rate is not null) from due)
),

-- name: deliveries_claim_slot_limited
       -- A rate-limited delivery's slot, the endpoint's next after those of its deliveries
       -- ahead of it in this claim. Evaluated only when the claim took such a delivery.
       case when (select bool_or(due.rate is not null) from due) then (
           select array[extract(epoch from s.base - now()) + s.place / s.rate,
                        extract(epoch from s.base - s.due_at) + s.place / s.rate,
                        extract(epoch from now())]
           from (
               select due.base, due.rate::float8 as rate, due.due_at,
                      (select count(*) from due ahead
                       where ahead.endpoint_id = due.endpoint_id and ahead.id < due.id)::float8
                          as place
               from due
               where due.id = c.id
                 and due.rate is not null
           ) s
       ) end as slot

-- name: endpoints_many
-- Whether more than 100 endpoints are enabled (the claim then walks: deliveries_claim_turn_walk),
-- and whether any enabled one has a rate limit (the claim then takes the `_limited` fragments).
select (select count(*) > 100
        from (select from outbox.endpoints ep where ep.enabled limit 101) enabled),
       exists (select from outbox.endpoints ep where ep.enabled and ep.rate_limit is not null);

-- name: deliveries_complete
-- Record a batch of attempt outcomes: the delivery's summary columns and one outbox.attempts row
-- each, in one statement. A row whose lease token no longer matches was taken over by another
-- relay after this one's lease ran out; its outcome is dropped, so the owner's record stands.
-- %(outcomes)s is a JSON array of objects named as the columns below (one JSON text measured far
-- cheaper to send than ten arrays).
--
-- An ordered delivery that ends (delivered or failed) lets the next one of its record go
-- (outbox.release_next, migration 0014); a batch without one does not call it.
with outcome as (
    select o.delivery_id as id, o.lease, o.attempt, o.status, o.delay, o.started_at,
           o.duration_ms, o.status_code, o.error, o.response_body
    from json_to_recordset(%(outcomes)s::json) as o (
        delivery_id bigint, lease timestamptz, attempt integer, status text, delay float8,
        started_at timestamptz, duration_ms float8, status_code integer, error text,
        response_body text
    )
),
recorded as (
    update outbox.deliveries d
    set status = o.status,
        attempts = o.attempt,
        next_attempt_at = case when o.status = 'pending'
                               then now() + make_interval(secs => o.delay) end,
        last_attempt_at = o.started_at,
        last_status_code = o.status_code,
        last_error = o.error,
        delivered_at = case when o.status = 'delivered' then now() end
    from outcome o
    where d.id = o.id
      and d.status = 'pending'
      and d.next_attempt_at = o.lease
    returning d.id, d.endpoint_id, d.record, d.ordered, d.status
),
released as (
    select case when count(*) > 0
                then outbox.release_next(array_agg(r.endpoint_id), array_agg(r.record))
           end as released
    from recorded r
    where r.ordered and r.status <> 'pending'
)
insert into outbox.attempts
    (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body)
select o.id, o.attempt, o.started_at, o.duration_ms, o.status_code, o.error, o.response_body
from outcome o
join recorded r on r.id = o.id
cross join released
on conflict (delivery_id, attempt) do nothing;

-- name: endpoints_judge
-- What a batch of outcomes does to its endpoints' runs of failed attempts and circuit breakers,
-- run before deliveries_complete in the same transaction when the batch has something to say
-- (outbox.relay.breaker.verdicts): %(verdicts)s is a JSON array, per endpoint, of whether an
-- attempt succeeded and the failed attempts that started after the latest success. A success ends
-- the run (only the later failures stay in it) and closes the breaker; failures extend the run.
-- A run of %(breaker_after)s opens the breaker, with the first probe %(probe_first)s seconds on;
-- each failed probe doubles the wait, up to %(probe_longest)s. Returns the endpoints whose
-- breaker it opened (true) or closed (false).
--
-- Rows are locked in id order, before the batch's deliveries: relays recording failures of the
-- same endpoints, and an endpoint being deleted (its row, then its deliveries), never deadlock
-- with it. Only rows that change are locked: a healthy endpoint's is read, not written.
with verdict as (
    select v.endpoint_id, v.succeeded, v.failures, v.first_failed, v.last_failed,
           v.probes_failed
    from json_to_recordset(%(verdicts)s::json) as v (
        endpoint_id text, succeeded boolean, failures integer, first_failed timestamptz,
        last_failed timestamptz, probes_failed integer
    )
),
locked as materialized (
    select ep.id, ep.consecutive_failures, ep.failing_since, ep.last_failure_at,
           ep.breaker_opened_at, ep.probe_at, ep.probes,
           v.succeeded, v.failures, v.first_failed, v.last_failed, v.probes_failed
    from verdict v
    join outbox.endpoints ep on ep.id = v.endpoint_id
    where v.failures > 0 or ep.consecutive_failures > 0 or ep.breaker_opened_at is not null
    order by ep.id
    for no key update of ep
),
after_batch as (
    select l.id, l.breaker_opened_at, l.probe_at, l.probes_failed,
           not l.succeeded and l.breaker_opened_at is not null as stays_open,
           l.probes + l.probes_failed as probes,
           case when l.succeeded then l.failures
                else l.consecutive_failures + l.failures end as failures,
           case when l.succeeded then l.first_failed
                else coalesce(l.failing_since, l.first_failed) end as failing_since,
           case when l.succeeded then l.last_failed
                else greatest(l.last_failure_at, l.last_failed) end as last_failure_at
    from locked l
),
settled as (
    update outbox.endpoints ep
    set consecutive_failures = n.failures,
        failing_since = n.failing_since,
        last_failure_at = n.last_failure_at,
        breaker_opened_at = case when n.stays_open then n.breaker_opened_at
                                 when n.failures >= %(breaker_after)s::integer then now() end,
        probes = case when n.stays_open then n.probes else 0 end,
        probe_at = case
            when n.stays_open and n.probes_failed > 0
                then now() + make_interval(secs => least(
                    %(probe_first)s::float8 * power(2.0, least(n.probes, 30)),
                    %(probe_longest)s::float8))
            when n.stays_open then n.probe_at
            when n.failures >= %(breaker_after)s::integer
                then now() + make_interval(secs => %(probe_first)s::float8)
        end
    from after_batch n
    where ep.id = n.id
    returning ep.id, ep.breaker_opened_at is not null as open
)
select s.id, s.open
from settled s
join locked l on l.id = s.id
where s.open <> (l.breaker_opened_at is not null);

-- name: deliveries_release
-- Hand leases back (graceful shutdown, or claimed beyond an endpoint's cap): due again now.
update outbox.deliveries d
set next_attempt_at = now()
from unnest(%(ids)s::bigint[], %(leases)s::timestamptz[]) as r (id, lease)
where d.id = r.id
  and d.status = 'pending'
  and d.next_attempt_at = r.lease;

-- name: deliveries_next_due
-- Seconds until the earliest pending delivery of an enabled endpoint comes due, or its endpoint's
-- next probe when its breaker is open (negative when one is due now), for the idle relay's
-- sleep; NULL when nothing is pending. The endpoints with
-- pending deliveries are found as the claim finds them, by one descent of deliveries_pending_idx
-- each, and each gives its soonest: idle endpoints cost nothing and a disabled endpoint's backlog
-- is not read.
with recursive pending (id) as (
    select max(d.endpoint_id)
    from outbox.deliveries d
    where d.status = 'pending'
    union all
    select (select max(d.endpoint_id)
            from outbox.deliveries d
            where d.status = 'pending'
              and d.endpoint_id < pending.id)
    from pending
    where pending.id is not null
)
select extract(epoch from min(soonest.at) - now())::float8
from pending
cross join lateral (
    select ep.probe_at, ep.rate_next_at - interval '1 second' as slot_free_at
    from outbox.endpoints ep
    where ep.id = pending.id
      and ep.enabled
    limit 1
) usable
cross join lateral (
    -- An endpoint whose breaker is open gives nothing before its next probe, nor one with a rate
    -- limit before a slot within the next second is free.
    select greatest(d.next_attempt_at, usable.probe_at, usable.slot_free_at) as at
    from outbox.deliveries d
    where d.endpoint_id = pending.id
      and d.status = 'pending'
    order by d.next_attempt_at
    limit 1
) soonest;

-- name: endpoints_disable_gone
-- A 410 Gone answer means the receiver is gone for good (Standard Webhooks): stop sending.
update outbox.endpoints
set enabled = false,
    disabled_reason = 'answered 410 Gone',
    description = case when description = '' then 'disabled: answered 410 Gone'
                       else description end
where id = any (%(ids)s::text[])
  and enabled;

-- name: relay_announce
-- Say whether this relay is idle and listening; writers send a NOTIFY only while one is.
insert into outbox.relays (id, idle, heartbeat_at)
values (%(id)s, %(idle)s, now())
on conflict (id) do update set idle = excluded.idle, heartbeat_at = excluded.heartbeat_at;

-- name: relay_forget
delete from outbox.relays where id = %(id)s;

-- name: deliveries_may_vacuum
-- Whether this role may VACUUM outbox.deliveries (a superuser, the owner or a member of its role,
-- or from PostgreSQL 17 a holder of MAINTAIN); otherwise VACUUM would only warn, and the relay
-- leaves the table to autovacuum.
select coalesce(r.rolsuper, false)
       or pg_has_role(c.relowner, 'MEMBER')
       or case when current_setting('server_version_num')::integer >= 170000
               then has_table_privilege(c.oid, 'MAINTAIN') else false end
from pg_class c
left join pg_roles r on r.rolname = current_user
where c.oid = 'outbox.deliveries'::regclass;

-- name: deliveries_vacuum
-- Every attempt leaves dead row versions and index entries behind (the claim and the outcome
-- are both updates). Autovacuum looks at a table once per autovacuum_naptime (a minute by
-- default), while a busy relay makes thousands per second; claims then walk ever more dead
-- entries at the head of each endpoint's range of the pending index. Pages already all-visible are skipped, so a frequent run is cheap.
vacuum (skip_locked) outbox.deliveries;
