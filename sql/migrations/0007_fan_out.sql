-- Capture writes one row per event; the relay fans committed events out to deliveries.
--
-- Until this migration every capture statement also wrote a delivery per subscribed endpoint,
-- so a business write cost more with every subscriber. Now the writer's transaction inserts its
-- events and nothing else, and outbox.fan_out(), run by the relay after commit, turns the events
-- that committed since its last step into deliveries, exactly once, the way PgQ batches events:
-- by transaction snapshots.
--
-- Each event row carries its writer's top-level transaction id (xid). A cursor row keeps the
-- snapshot of the last fan-out step. A step takes a new snapshot; the events whose xid is
-- visible in the new snapshot and not in the old one are those that committed in between,
-- whatever order their transactions began or committed in. A transaction still open at the new
-- snapshot is left for a later step and holds back no other transaction's events; a rolled-back
-- transaction or savepoint left no rows to find.
--
-- The writer pays for one B-tree entry per event, its primary key, and that one index is the
-- fan-out's index too: new ids start with the writer's xid in fixed-width hex,
--     evt_<16 hex digits of the xid><12 hex digits of a cached sequence>
-- so the events of a range of transactions are a range of the primary key. Ids written before
-- this migration (a microsecond clock, then random bits) sort above every id of this form and
-- have no xid: fan-out never reads them, as their deliveries were written with them.

-- ---------------------------------------------------------------------------------------------
-- Events: the xid and the new ids.

-- Cached per session: a writer takes 100 values at a time instead of locking the sequence's page
-- for every event. Ids from one session still grow; across sessions the xid prefix orders them.
create sequence outbox.events_seq as bigint cache 100;

-- The primary-key prefix of a transaction's events: 'evt_' and the xid in 16 hex digits.
-- Fixed width, lowercase, under collation "C": text order is numeric order.
create function outbox.xid_key(xid bigint) returns text
language sql immutable parallel safe
return 'evt_' || lpad(to_hex(xid), 16, '0');

-- Added without a default first, so the table is not rewritten: rows written before this
-- migration keep a NULL xid, which no snapshot sees, so fan-out never picks them up.
alter table outbox.events add column xid xid8;
alter table outbox.events
    alter column xid set default pg_current_xact_id(),
    alter column id set default 'evt_'
        || lpad(to_hex(pg_current_xact_id()::text::bigint), 16, '0')
        || lpad(to_hex(nextval('outbox.events_seq') & 281474976710655), 12, '0');

-- Events are append-only: the snapshot a fan-out step read them under must stay true of them.
create function outbox.refuse_event_update() returns trigger
language plpgsql as $$
begin
    raise exception 'outbox.events is append-only: events are never updated'
        using errcode = 'feature_not_supported',
              hint = 'Emit a new event instead (outbox.emit).';
end
$$;
create trigger events_append_only
    before update on outbox.events
    for each statement execute function outbox.refuse_event_update();

-- ---------------------------------------------------------------------------------------------
-- Deliveries: one per (event, endpoint), as a constraint. Fan-out relies on its cursor for that,
-- replay on its lock; the index makes a mistake in either an error instead of a duplicate, and
-- serves every lookup by event that the old index served.
create unique index deliveries_event_endpoint_idx
    on outbox.deliveries (event_id, endpoint_id);
drop index outbox.deliveries_event_idx;

-- ---------------------------------------------------------------------------------------------
-- The fan-out cursor: the snapshot up to which committed events have deliveries. One row per
-- stream of transaction ids; a single PostgreSQL server has one, 'main'. (A distributed database
-- with an xid space per node would keep one row per node.)
create table outbox.fan_out_cursor (
    name      text collate "C" primary key,
    snapshot  pg_snapshot not null,
    fanned_at timestamptz not null default now()
);
-- This migration's own snapshot: every event committed before it got its deliveries from the
-- capture statement that wrote it. A transaction still open now is in the snapshot's in-progress
-- list, so its events, whenever it commits, are fanned out.
insert into outbox.fan_out_cursor (name, snapshot) values ('main', pg_current_snapshot());

-- The committed events that the cursor's snapshot `prev` does not cover yet, as far as snapshot
-- `upto` (at most the caller's own snapshot): those whose xid `upto` sees and `prev` does not.
-- Read through the primary key: the range of xids from prev's xmax to upto's xmax, and one range
-- per transaction that was in progress at `prev` and has ended by `upto` (PgQ's batch_event_sql
-- does the same).
create function outbox.events_between(prev pg_snapshot, upto pg_snapshot)
returns table (id text, type text, created_at timestamptz)
language sql stable parallel safe as $$
    select e.id, e.type, e.created_at
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
        select e.id, e.type, e.created_at, e.xid
        from outbox.events e
        where e.id >= outbox.xid_key(r.lo)
          and e.id < outbox.xid_key(r.hi)
        offset 0
    ) e
    where r.lo < r.hi
      and pg_visible_in_snapshot(e.xid, upto)
      and not pg_visible_in_snapshot(e.xid, prev)
$$;

-- `snap` cut down to the transactions below xid `below`: it sees what `snap` sees among them and
-- nothing at or above. A fan-out step that stops there leaves the rest for the next step.
create function outbox.snapshot_below(snap pg_snapshot, below bigint) returns pg_snapshot
language sql immutable parallel safe as $$
    select format('%s:%s:%s',
                  least(pg_snapshot_xmin(snap)::text::bigint, top),
                  top,
                  coalesce((select string_agg(x::text, ',' order by x::text::bigint)
                            from pg_snapshot_xip(snap) x
                            where x::text::bigint < top), ''))::pg_snapshot
    from (select least(pg_snapshot_xmax(snap)::text::bigint, below) as top) t
$$;

-- Whether any committed event waits for fan-out: a read of the cursor and a probe or two of the
-- primary key, no lock. Every step asks this first, so an idle relay's polling costs little.
-- (plpgsql, so the session keeps its plan: a SQL function with a FROM clause is planned again at
-- every call, 0.25 ms, most of a step that finds nothing.)
create function outbox.fan_out_due() returns boolean
language plpgsql stable as $$
begin
    return exists (
        select 1
        from outbox.fan_out_cursor c
        cross join lateral outbox.events_between(c.snapshot, pg_current_snapshot()) b
        where c.name = 'main'
    );
end
$$;

-- Whether the event of transaction `xid` has been fanned out: its xid is in the cursor's snapshot
-- (events written before this migration, with no xid, were fanned out as they were written).
--     select * from outbox.events e where not outbox.fanned_out(e.xid);
-- lists the committed events still waiting for their deliveries.
create function outbox.fanned_out(xid xid8) returns boolean
language sql stable parallel safe
return xid is null
    or pg_visible_in_snapshot(xid, (select c.snapshot from outbox.fan_out_cursor c
                                    where c.name = 'main'));

-- The committed events not fanned out yet: how many, and how long ago the oldest was written
-- (0 when none). Read by /metrics and /healthz; a range of the primary key, no lock.
create function outbox.fan_out_lag(out events bigint, out oldest_age_s float8)
language plpgsql stable as $$
begin
    select count(*),
           coalesce(extract(epoch from clock_timestamp() - min(b.created_at)), 0)::float8
    into events, oldest_age_s
    from outbox.fan_out_cursor c
    cross join lateral outbox.events_between(c.snapshot, pg_current_snapshot()) b
    where c.name = 'main';
end
$$;

-- One fan-out step: deliveries for the events committed since the last step, at most about
-- `max_events` of them (a single transaction's events are never split, so one large transaction
-- makes a larger step). Returns how many events it fanned out and deliveries it wrote, and whether
-- it stopped short of committed events (`more`); nothing when another relay is stepping.
--
-- Each event gets one pending delivery, due now, per endpoint that is enabled, was created no
-- later than the event, and subscribes to its type: subscriptions as they are at fan-out time.
--
-- Three statements, in READ COMMITTED, each with a newer snapshot than the one before: the
-- cursor's row lock (SKIP LOCKED: one relay steps at a time, the others go on claiming); the new
-- snapshot, taken after the lock, so it sees everything the previous step saw; and the events,
-- read under a snapshot at least as new as the one they are chosen by.
create function outbox.fan_out(max_events integer default 10000,
                               out events integer, out deliveries integer, out more boolean)
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
        select b.id, b.type, b.created_at from outbox.events_between(prev, upto) b
    ),
    written as (
        insert into outbox.deliveries (event_id, endpoint_id)
        select ev.id, ep.id
        from ev
        join outbox.endpoints ep
          on ep.enabled
         and ep.created_at <= ev.created_at
         and ep.event_types && outbox.type_patterns(ev.type)
        order by ev.id, ep.id
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

-- Deleting an endpoint while a fan-out step is open: the step may have written deliveries to it
-- that the delete cannot see yet, which would stay pending with no endpoint to send them to. The
-- delete first takes the cursor's lock, so it waits for a step in progress to commit, and then
-- removes what that step wrote; a step that starts after it skips, or finds the endpoint gone.
create or replace function outbox.forget_endpoints() returns trigger
language plpgsql as $$
begin
    perform 1 from outbox.fan_out_cursor for update;
    delete from outbox.deliveries d using gone_endpoints g where d.endpoint_id = g.id;
    return null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Capture: the same templates as 0005, writing the events alone. Writers no longer wake relays:
-- checking for an idle relay cost a write about a tenth of its rate at four clients, and a relay
-- with nothing to do asks outbox.fan_out_due() a few times a second instead, a read of the cursor
-- and a probe of the primary key.
do $migration$
declare
    template constant text := $template$
create or replace function outbox.%1$I() returns trigger
language plpgsql as $function$
declare
    zone text := current_setting('TimeZone');
begin
    if zone in ('UTC', 'Etc/UTC', 'UCT', 'Etc/UCT', 'GMT', 'Etc/GMT', 'Universal', 'Zulu') then
        zone := null;
    else
        perform set_config('TimeZone', 'UTC', true);
    end if;
    %2$s;
    if zone is not null then
        perform set_config('TimeZone', zone, true);
    end if;
    return null;
end
$function$;
$template$;
    changed constant text := $changed$
            select n.j as new_row,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r) as j from new_rows r) n
            join (select to_jsonb(r) as j from old_rows r) o on n.j -> %s = o.j -> %s$changed$;
begin
    execute format(template, 'capture_insert', $s$
    insert into outbox.events (type, data)
    select tg_argv[0], to_jsonb(r) from new_rows r$s$);
    execute format(template, 'capture_delete', $s$
    insert into outbox.events (type, data)
    select tg_argv[0], to_jsonb(r) from old_rows r$s$);
    execute format(template, 'capture_update', format($s$
    insert into outbox.events (type, data, previous_attributes)
    select tg_argv[0], c.new_row, c.previous
    from (%s
    ) c
    where c.previous is not null$s$, format(changed, 'tg_argv[1]', 'tg_argv[1]')));
    execute format(template, 'capture_deal_update', format($s$
    insert into outbox.events (type, data, previous_attributes)
    select t.type, c.new_row, c.previous
    from (%s
    ) c
    cross join lateral (
        select 'deal.updated' as type, 1 as ord
        union all
        select 'deal.stage_changed', 2 where c.previous ? 'stage'
        union all
        select 'deal.' || (c.new_row ->> 'stage'), 3
        where c.previous ? 'stage' and c.new_row ->> 'stage' in ('closed_won', 'closed_lost')
    ) t
    where c.previous is not null
    order by c.new_row -> 'id', t.ord$s$, format(changed, '''id''', '''id''')));
    execute format(template, 'capture_post_insert', $s$
    insert into outbox.events (type, data)
    select 'post.' || r.status, to_jsonb(r)
    from new_rows r
    where r.status in ('scheduled', 'published', 'failed')$s$);
    execute format(template, 'capture_post_update', format($s$
    insert into outbox.events (type, data, previous_attributes)
    select 'post.' || (c.new_row ->> 'status'), c.new_row, c.previous
    from (%s
    ) c
    where c.previous ? 'status'
      and c.new_row ->> 'status' in ('scheduled', 'published', 'failed')$s$,
        format(changed, '''id''', '''id''')));
end
$migration$;

-- Record an application-defined event inside the caller's transaction; its type is registered on
-- first use so endpoints can subscribe to it. Fan-out delivers it after commit, like any event.
create or replace function outbox.emit(event_type text, data jsonb) returns text
language plpgsql as $$
declare
    event_id text;
begin
    if event_type !~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$' then
        raise exception 'event type % must look like entity.action (lowercase, 2 to 4 dot-separated parts)',
                quote_literal(event_type)
            using errcode = 'check_violation';
    end if;
    if data is null or jsonb_typeof(data) <> 'object' then
        raise exception 'event data must be a JSON object' using errcode = 'check_violation';
    end if;
    perform outbox.register_event_type(event_type);
    insert into outbox.events (type, data) values (event_type, data) returning id into event_id;
    return event_id;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Roles: writers insert events only; the relay writes the deliveries and moves the cursor.
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_writer') then
        revoke insert on outbox.deliveries from outbox_writer;
        revoke select (id, enabled, event_types) on outbox.endpoints from outbox_writer;
        grant usage on sequence outbox.events_seq to outbox_writer;
    end if;
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant insert on outbox.deliveries to outbox_relay;
        grant select, update (snapshot, fanned_at) on outbox.fan_out_cursor to outbox_relay;
    end if;
end
$$;
