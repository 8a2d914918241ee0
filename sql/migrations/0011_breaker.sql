-- Endpoints that fail for a long time: a circuit breaker per endpoint, disabling after sustained
-- failure, and operational events that tell an operator's own endpoint about both.
--
-- Breaker. The relay records every attempt's outcome (deliveries_complete) and, in the same
-- statement, the endpoint's run of failed attempts. A run of OUTBOX_BREAKER_AFTER failed attempts
-- opens the endpoint's breaker: its due deliveries are not claimed, so they wait without spending
-- a rung of the retry ladder, and one probe at a time is made: the claim takes one delivery of
-- the endpoint once probe_at has passed and pushes probe_at on by the claim's lease while the
-- probe is in flight. A failed probe sets the next one twice as far off (from the first interval,
-- up to the longest); the first successful attempt closes the breaker. Everything is in the row,
-- so any number of relays share one breaker per endpoint.
--
-- Disabling. outbox.disable_failing_endpoints(after) disables the enabled endpoints whose
-- attempts have all failed over a span of `after` (from the first failed attempt of the run to
-- the latest, with no success between), recording when and why. The relay calls it every minute.
--
-- Operational events. outbox.endpoint.disabled, outbox.endpoint.enabled and
-- outbox.endpoint.recovered are ordinary events in the endpoint's account, written by a trigger
-- on the endpoint's row whoever changes it (the relay, the CLI, plain SQL). An endpoint subscribes
-- to them by `outbox.*` or their exact types: `*` means every application event and leaves them
-- out, so existing receivers get no types they do not know. Fan-out never sends an endpoint the
-- events about itself.

-- ---------------------------------------------------------------------------------------------
-- State, on the endpoint's row. Added without defaults that need a rewrite: integer defaults of
-- 0 are stored once in the catalog (PostgreSQL 11+), the rest are NULL.
alter table outbox.endpoints
    -- Failed attempts since the last success (or since it was enabled).
    add column consecutive_failures integer not null default 0,
    -- When the first and the latest of those attempts started; NULL while the run is empty.
    add column failing_since timestamptz,
    add column last_failure_at timestamptz,
    -- The breaker: open while breaker_opened_at is set. probe_at is when the next probe may
    -- start (pushed on by the lease while one is in flight); probes counts the failed ones.
    add column breaker_opened_at timestamptz,
    add column probe_at timestamptz,
    add column probes integer not null default 0,
    -- Why and when it was last disabled (NULL while enabled).
    add column disabled_at timestamptz,
    add column disabled_reason text,
    add constraint endpoint_breaker_state
        check ((breaker_opened_at is null) = (probe_at is null));

-- ---------------------------------------------------------------------------------------------
-- The operational event types, and subscriptions: `*` is every type but these.
insert into outbox.event_types (name, description) values
    ('outbox.endpoint.disabled', 'Endpoint disabled: by its failures, a 410 Gone or an operator'),
    ('outbox.endpoint.enabled', 'Endpoint enabled again'),
    ('outbox.endpoint.recovered', 'Endpoint answered again after its circuit breaker opened')
on conflict (name) do nothing;

create or replace function outbox.type_matches(patterns text[], event_type text) returns boolean
language sql immutable parallel safe as $$
    select exists (
        select 1 from unnest(patterns) p
        where (p = '*' and not starts_with(event_type, 'outbox.'))
           or p = event_type
           or (p like '%.*' and starts_with(event_type, left(p, -1)))
    )
$$;

create or replace function outbox.type_patterns(t text) returns text[]
language sql immutable parallel safe
return array_remove(array[
    case when not starts_with(t, 'outbox.') then '*' end,
    t,
    case when split_part(t, '.', 2) <> '' then split_part(t, '.', 1) || '.*' end,
    case when split_part(t, '.', 3) <> ''
         then split_part(t, '.', 1) || '.' || split_part(t, '.', 2) || '.*' end,
    case when split_part(t, '.', 4) <> ''
         then split_part(t, '.', 1) || '.' || split_part(t, '.', 2) || '.'
              || split_part(t, '.', 3) || '.*' end
], null);

-- The application's events may not take the outbox's own prefix.
create or replace function outbox.emit(event_type text, data jsonb, account text default null)
returns text
language plpgsql as $$
declare
    event_id text;
begin
    if event_type is null or event_type !~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$'
       or length(event_type) > 256 then
        raise exception 'event type % must look like entity.action (lowercase, 2 to 4 dot-separated parts, at most 256 characters)',
                coalesce(quote_literal(left(event_type, 140)), 'NULL')
            using errcode = 'check_violation';
    end if;
    if starts_with(event_type, 'outbox.') then
        raise exception 'event type % is reserved: outbox.* types are the outbox''s own',
                quote_literal(event_type)
            using errcode = 'check_violation';
    end if;
    if data is null or jsonb_typeof(data) <> 'object' then
        raise exception 'event data must be a JSON object' using errcode = 'check_violation';
    end if;
    if account !~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$' then
        raise exception 'account % must be 1 to 128 letters, digits or . _ : @ - (starting with a letter or digit)',
                quote_literal(left(account, 140))
            using errcode = 'check_violation';
    end if;
    perform outbox.register_event_type(event_type);
    insert into outbox.events (type, data, account_id)
    values (event_type, data, account)
    returning id into event_id;
    return event_id;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Fan-out: 0008's, with each event's subject, the endpoint an operational event is about, which
-- gets no delivery of it. Only outbox.* events read their data for it.
drop function outbox.events_between(pg_snapshot, pg_snapshot);
create function outbox.events_between(prev pg_snapshot, upto pg_snapshot)
returns table (id text, type text, created_at timestamptz, account_id text, subject text)
language sql stable parallel safe as $$
    select e.id, e.type, e.created_at, e.account_id,
           case when starts_with(e.type, 'outbox.') then e.data ->> 'endpoint_id' end
    from (
        select pg_snapshot_xmax(prev)::text::bigint as lo, pg_snapshot_xmax(upto)::text::bigint as hi
        union all
        select x::text::bigint, x::text::bigint + 1
        from pg_snapshot_xip(prev) x
        where pg_visible_in_snapshot(x, upto)
    ) r
    cross join lateral (
        -- OFFSET 0 keeps each range a scan of the primary key: flattened, the planner moved the
        -- visibility tests into a sequential scan of every event (3 ms at 10k events).
        select e.id, e.type, e.created_at, e.xid, e.account_id, e.data
        from outbox.events e
        where e.id >= outbox.xid_key(r.lo)
          and e.id < outbox.xid_key(r.hi)
        offset 0
    ) e
    where r.lo < r.hi
      and pg_visible_in_snapshot(e.xid, upto)
      and not pg_visible_in_snapshot(e.xid, prev)
$$;

create or replace function outbox.fan_out(max_events integer default 10000,
                                          out events integer, out deliveries integer,
                                          out more boolean)
language plpgsql as $$
declare
    prev pg_snapshot;
    upto pg_snapshot;
    below bigint;
begin
    events := 0;
    deliveries := 0;
    more := false;
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'outbox.fan_out() must run in a READ COMMITTED transaction'
            using errcode = 'invalid_transaction_state';
    end if;
    if max_events is null or max_events < 1 then
        raise exception 'max_events must be a positive number' using errcode = 'check_violation';
    end if;
    -- Nothing to do is the common answer: find it out without writing a row lock.
    if not outbox.fan_out_due() then
        return;
    end if;
    select c.snapshot into prev
    from outbox.fan_out_cursor c
    where c.name = 'main'
    for update skip locked;
    if not found then
        return;
    end if;
    upto := pg_current_snapshot();
    -- Bound the step: stop below the transaction of the (max_events + 1)th event past the old
    -- snapshot's xmax, but always take at least the first transaction whole.
    select e.xid::text::bigint into below
    from outbox.events e
    where e.id >= outbox.xid_key(pg_snapshot_xmax(prev)::text::bigint)
      and e.id < outbox.xid_key(pg_snapshot_xmax(upto)::text::bigint)
      and pg_visible_in_snapshot(e.xid, upto)
    order by e.id
    offset max_events limit 1;
    if below is not null then
        select greatest(below, e.xid::text::bigint + 1) into below
        from outbox.events e
        where e.id >= outbox.xid_key(pg_snapshot_xmax(prev)::text::bigint)
          and pg_visible_in_snapshot(e.xid, upto)
        order by e.id
        limit 1;
    end if;
    if below is not null and below < pg_snapshot_xmax(upto)::text::bigint then
        upto := outbox.snapshot_below(upto, below);
        more := true;
    end if;
    with ev as materialized (
        select b.id, b.type, b.created_at, b.account_id, b.subject
        from outbox.events_between(prev, upto) b
    ),
    written as (
        insert into outbox.deliveries (event_id, endpoint_id, account_id)
        select m.event_id, m.endpoint_id, m.account_id
        from (
            -- an account's events to that account's endpoints
            select ev.id as event_id, ep.id as endpoint_id, ep.account_id
            from ev
            join outbox.endpoints ep
              on ep.account_id = ev.account_id
             and ep.enabled
             and ep.created_at <= ev.created_at
             and ep.event_types && outbox.type_patterns(ev.type)
             and ep.id is distinct from ev.subject
            union all
            -- events without an account to endpoints without one; an account's events to the
            -- endpoints of every account
            select ev.id, ep.id, null
            from ev
            join outbox.endpoints ep
              on ep.account_id is null
             and (ev.account_id is null or ep.all_accounts)
             and ep.enabled
             and ep.created_at <= ev.created_at
             and ep.event_types && outbox.type_patterns(ev.type)
             and ep.id is distinct from ev.subject
        ) m
        order by m.event_id, m.endpoint_id
        on conflict (event_id, endpoint_id) do nothing
        returning 1
    )
    select (select count(*) from ev), (select count(*) from written) into events, deliveries;
    update outbox.fan_out_cursor
    set snapshot = upto, fanned_at = now()
    where name = 'main';
    if deliveries > 0 then
        perform outbox.wake_relays();
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Switching an endpoint. Disabled: when, and why unless the statement said (an operator's
-- `outbox endpoints disable` or UPDATE is named by its login). Enabled again: a fresh start,
-- breaker closed and failures forgotten; a receiver that still fails opens it again.
create function outbox.endpoint_switched() returns trigger
language plpgsql as $$
begin
    if new.enabled and not old.enabled then
        new.disabled_at := null;
        new.disabled_reason := null;
        new.consecutive_failures := 0;
        new.failing_since := null;
        new.last_failure_at := null;
        new.breaker_opened_at := null;
        new.probe_at := null;
        new.probes := 0;
    elsif old.enabled and not new.enabled then
        if new.disabled_at is not distinct from old.disabled_at then
            new.disabled_at := now();
        end if;
        if new.disabled_reason is not distinct from old.disabled_reason then
            new.disabled_reason := 'disabled by ' || session_user;
        end if;
    end if;
    return new;
end
$$;

create trigger endpoints_switched
    before update of enabled on outbox.endpoints
    for each row execute function outbox.endpoint_switched();

-- An endpoint's URL as operational events show it: no query string or fragment (where tokens
-- tend to live) and no user name or password.
create function outbox.public_url(url text) returns text
language sql immutable parallel safe
return regexp_replace(regexp_replace(url, '[?#].*$', ''), '^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@', '\1');

-- The operational event of a change to an endpoint's row, in its account. Never its secret.
-- Definer: whoever may switch an endpoint (the relay, an account's own role) need not be allowed
-- to write events. Timestamps in the data are UTC, as capture writes them.
create function outbox.endpoint_events() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp set timezone = 'UTC' as $$
declare
    kind text;
    data jsonb := jsonb_build_object('endpoint_id', new.id,
                                     'url', outbox.public_url(new.url),
                                     'account_id', new.account_id);
begin
    if new.enabled and not old.enabled then
        kind := 'enabled';
        data := data || jsonb_build_object('enabled_at', now(),
                                           'disabled_at', old.disabled_at,
                                           'disabled_reason', old.disabled_reason);
    elsif old.enabled and not new.enabled then
        kind := 'disabled';
        data := data || jsonb_build_object('disabled_at', new.disabled_at,
                                           'reason', new.disabled_reason,
                                           'consecutive_failures', new.consecutive_failures,
                                           'failing_since', new.failing_since,
                                           'last_failure_at', new.last_failure_at);
    elsif new.enabled and old.breaker_opened_at is not null and new.breaker_opened_at is null then
        kind := 'recovered';
        data := data || jsonb_build_object('breaker_opened_at', old.breaker_opened_at,
                                           'recovered_at', now(),
                                           'failed_probes', old.probes,
                                           'consecutive_failures', old.consecutive_failures,
                                           'failing_since', old.failing_since);
    else
        return null;
    end if;
    insert into outbox.events (type, data, account_id)
    values ('outbox.endpoint.' || kind, data, new.account_id);
    if kind = 'recovered' then
        -- Its held deliveries are due now: idle relays need not wait for their next poll.
        perform outbox.wake_relays();
    end if;
    return null;
end
$$;

create trigger endpoints_events
    after update of enabled, breaker_opened_at on outbox.endpoints
    for each row
    when (old.enabled is distinct from new.enabled
          or (old.breaker_opened_at is not null and new.breaker_opened_at is null))
    execute function outbox.endpoint_events();

-- ---------------------------------------------------------------------------------------------
-- Disable the enabled endpoints whose attempts have all failed over a span of at least `after`,
-- from the first failed attempt of the run to the latest; returns their ids. An endpoint that
-- failed once and then got nothing to send is not "failing for days": only attempts count.
-- Endpoints another transaction holds are left for the next call (SKIP LOCKED, in id order like
-- every writer of endpoint rows, so calls never wait or deadlock).
create function outbox.disable_failing_endpoints(after interval) returns setof text
language plpgsql set intervalstyle = 'postgres' set timezone = 'UTC' as $$
begin
    if after is null or after <= interval '0' then
        raise exception 'after must be a positive interval, not %', coalesce(after::text, 'NULL')
            using errcode = 'check_violation';
    end if;
    return query
    with failing as (
        select ep.id
        from outbox.endpoints ep
        where ep.enabled
          and ep.failing_since is not null
          and ep.last_failure_at - ep.failing_since >= after
        order by ep.id
        for no key update skip locked
    )
    update outbox.endpoints ep
    set enabled = false,
        disabled_reason = format('every attempt failed for %s: %s in a row since %s',
                                 after, ep.consecutive_failures,
                                 to_char(ep.failing_since, 'YYYY-MM-DD HH24:MI:SS"Z"'))
    from failing f
    where ep.id = f.id
    returning ep.id::text;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Roles: the relay records the breaker and disables failing endpoints. (outbox_account may switch
-- its own endpoints, as before; the triggers fill in the rest.)
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant update (consecutive_failures, failing_since, last_failure_at, breaker_opened_at,
                      probe_at, probes, disabled_at, disabled_reason)
            on outbox.endpoints to outbox_relay;
    end if;
end
$$;
