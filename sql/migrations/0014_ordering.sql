-- Ordering per record: events name their record and their place in its history, and an endpoint
-- may ask for a record's events one at a time, in that order.
--
-- 1. The record. An event from a table attach()ed with a single-column primary key (and from the
--    reference tables) is about the record '<table>:<key>', e.g. 'deals:42'. Capture writes
--    nothing more for it: fan-out reads the key from the event's data, by the entity part of its
--    type (outbox.record_sources, kept by attach()). outbox.emit() takes a key of the caller's
--    choosing, stored on the event (events.record).
-- 2. The place. Fan-out numbers each record's events 1, 2, 3, ... in the order they were
--    written (outbox.records holds each record's last number; outbox.event_records each event's).
--    Two writes of one record serialize on its row lock, so the second writes its events after
--    the first has committed, whatever their xids. Within one fan-out step the xid order can
--    differ from that (a transaction that wrote elsewhere first has the lower xid), so each event
--    carries the WAL insert position at which it was written (events.written_at): the second
--    writer's events are written after the first one's commit record, so they sort after. The
--    position is read from shared memory, once per row, with no lock held past the read.
-- 3. Ordered endpoints (endpoints.ordered). Fan-out gives a record's delivery to such an endpoint
--    `next_attempt_at` NULL (held: the claim never sees it) while an earlier delivery of the same
--    record to that endpoint is pending; recording an outcome that ends one (delivered or failed)
--    makes the next one due (outbox.release_next). A pending delivery waiting on the retry ladder
--    thus holds back that record's later deliveries and nothing else. The claim is unchanged.
--
-- Fan-out and completions meet on the records' rows in outbox.records: a fan-out step locks the
-- rows of its records (its upsert) before it decides, in a later statement, which deliveries to
-- hold; a completion locks the rows of the records it finishes before it looks, in a later
-- statement, for the next delivery. Whichever comes second sees what the first committed, so a
-- held delivery always has a pending one ahead of it that will release it. Both lock in key order.

-- ---------------------------------------------------------------------------------------------
-- Events: the caller's record key (emit) and where in the WAL the row was written.
-- Keys compare in collation "C", as ids do: byte order, the same on every installation.
alter table outbox.events add column record text collate "C", add column written_at pg_lsn;
alter table outbox.events alter column written_at set default pg_current_wal_insert_lsn();

-- Which table's rows an entity's events are about, and their key column. `source` is the keys'
-- prefix: the table's name, or schema.name when another entity's table has that name already.
create table outbox.record_sources (
    entity      text primary key,
    source      text not null,
    key_column  text not null,
    schema_name text not null,
    table_name  text not null
);
insert into outbox.record_sources (entity, source, key_column, schema_name, table_name) values
    ('contact', 'contacts', 'id', 'stover', 'contacts'),
    ('company', 'companies', 'id', 'stover', 'companies'),
    ('deal', 'deals', 'id', 'stover', 'deals'),
    ('post', 'posts', 'id', 'stover', 'posts'),
    ('attribution', 'attribution_events', 'id', 'stover', 'attribution_events');

-- Each record's last sequence number. Kept when its events are pruned, so numbers never restart.
create table outbox.records (
    key      text collate "C" primary key,
    sequence bigint not null
);

-- Each event's record and number, for every delivery of it, including those `outbox replay`
-- writes later.
create table outbox.event_records (
    event_id text primary key,
    record   text collate "C" not null,
    sequence bigint not null
);

create function outbox.forget_event_records() returns trigger
language plpgsql as $$
begin
    delete from outbox.event_records r using gone_events g where r.event_id = g.id;
    return null;
end
$$;
create trigger events_forget_records
    after delete on outbox.events
    referencing old table as gone_events
    for each statement execute function outbox.forget_event_records();

-- ---------------------------------------------------------------------------------------------
-- Endpoints and deliveries.
alter table outbox.endpoints add column ordered boolean not null default false;
-- A delivery's record and number (copied from the event: the claim reads the delivery) and
-- whether it was written for an ordered endpoint, which is what its completion acts on: switching
-- an endpoint's ordering changes what fan-out writes next, never what is already pending.
alter table outbox.deliveries
    add column record text collate "C",
    add column sequence bigint,
    add column ordered boolean not null default false;
-- Ordered deliveries not finished yet, by record: fan-out's and completion's lookups. Unordered
-- deliveries never enter it.
create index deliveries_record_idx on outbox.deliveries (endpoint_id, record, sequence)
    where status = 'pending' and ordered;

-- ---------------------------------------------------------------------------------------------
-- emit() takes a record key (otherwise 0011's). The earlier signature's calls (two or three arguments, by position
-- or by name) resolve to this one.
drop function outbox.emit(text, jsonb, text);
create function outbox.emit(event_type text, data jsonb, account text default null,
                            key text default null)
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
    if key is not null and (length(key) not between 1 and 256 or key ~ '[[:cntrl:]]') then
        raise exception 'record key % must be 1 to 256 characters, none of them a control character',
                quote_literal(outbox.printable(left(key, 140)))
            using errcode = 'check_violation';
    end if;
    perform outbox.register_event_type(event_type);
    insert into outbox.events (type, data, account_id, record)
    values (event_type, data, account, key)
    returning id into event_id;
    return event_id;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- attach(): 0009's, registering the table as its entity's record source.
create or replace function outbox.attach(
    target regclass,
    entity text,
    actions text[] default array['created', 'updated', 'deleted'],
    account_column text default null
) returns void
language plpgsql as $$
declare
    pk_columns text[];
    tbl text := target::text;
    base text;
    action text;
    made record;
    capture regproc;
    name text;
    own boolean;
begin
    -- Trigger names come from the catalog, not from target::text, whose schema prefix depends on
    -- the caller's search_path: a second attach() must find and replace the same triggers.
    select n.nspname || '_' || c.relname, n.nspname = 'outbox' into base, own
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = target;
    if own then
        raise exception 'outbox.attach(%): the outbox''s own tables cannot be attached', tbl
            using errcode = 'invalid_parameter_value';
    end if;
    if entity is null or entity !~ '^[a-z][a-z0-9_]{0,247}$' then
        raise exception 'entity % must be at most 248 lowercase letters, digits and underscores',
                coalesce(quote_literal(left(entity, 140)), 'NULL')
            using errcode = 'invalid_parameter_value';
    end if;
    if actions is null or cardinality(actions) = 0 then
        raise exception 'actions must name at least one of created, updated, deleted'
            using errcode = 'invalid_parameter_value';
    end if;
    foreach action in array actions loop
        if action is null or action not in ('created', 'updated', 'deleted') then
            raise exception 'action % must be created, updated or deleted',
                    coalesce(quote_literal(action), 'NULL')
                using errcode = 'invalid_parameter_value';
        end if;
    end loop;
    if account_column is not null and not exists (
        select 1 from pg_attribute a
        where a.attrelid = target and a.attname = account_column
          and a.attnum > 0 and not a.attisdropped
    ) then
        raise exception 'outbox.attach(%): no column % to take the account from',
                tbl, quote_ident(account_column)
            using errcode = 'undefined_column';
    end if;
    select array_agg(a.attname order by a.attnum) into pk_columns
    from pg_index i
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = target and i.indisprimary;
    if 'updated' = any(actions) and coalesce(cardinality(pk_columns), 0) <> 1 then
        raise exception 'outbox.attach(%) needs a single-column primary key to pair old and new rows',
                tbl
            using errcode = 'invalid_parameter_value';
    end if;

    -- A row whose key changes, or that moves to another account, is deleted and created.
    if 'created' = any(actions) or 'updated' = any(actions) then
        perform outbox.register_event_type(entity || '.created', 'New ' || entity || ' added');
    end if;
    if 'deleted' = any(actions) or 'updated' = any(actions) then
        perform outbox.register_event_type(entity || '.deleted', entity || ' removed');
    end if;
    if 'updated' = any(actions) then
        perform outbox.register_event_type(entity || '.updated', entity || ' modified');
    end if;
    -- The table's events name their record: '<table>:<primary key>' (outbox.record_sources),
    -- '<schema>.<table>:<primary key>' when another entity's table has the same name.
    if coalesce(cardinality(pk_columns), 0) = 1 then
        insert into outbox.record_sources as r (entity, source, key_column, schema_name, table_name)
        select entity,
               case when exists (select 1 from outbox.record_sources o
                                 where o.entity <> attach.entity and o.table_name = c.relname
                                   and o.schema_name <> n.nspname)
                    then n.nspname || '.' || c.relname else c.relname end,
               pk_columns[1], n.nspname, c.relname
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.oid = target
        on conflict on constraint record_sources_pkey do update
        set source = excluded.source, key_column = excluded.key_column,
            schema_name = excluded.schema_name, table_name = excluded.table_name;
    end if;
    foreach action in array array['created', 'updated', 'deleted'] loop
        continue when not action = any(actions);
        capture := case action when 'created' then 'outbox.capture_insert'::regproc
                               when 'updated' then 'outbox.capture_update'::regproc
                               else 'outbox.capture_delete'::regproc end;
        for made in
            select t.tgname from pg_trigger t
            where t.tgrelid = target and not t.tgisinternal and t.tgfoid = capture
        loop
            execute format('drop trigger %I on %s', made.tgname, tbl);
        end loop;
        name := 'outbox_' || base;
        while octet_length(name || '_' || action) > 63 loop
            name := left(name, -1);
        end loop;
        name := name || '_' || action;
        if action = 'created' then
            execute format(
                'create trigger %I after insert on %s referencing new table as new_rows '
                'for each statement execute function outbox.capture_insert(%L, %L)',
                name, tbl, entity || '.created', account_column);
        elsif action = 'updated' then
            execute format(
                'create trigger %I after update on %s '
                'referencing old table as old_rows new table as new_rows '
                'for each statement execute function outbox.capture_update(%L, %L, %L)',
                name, tbl, entity || '.updated', pk_columns[1], account_column);
        else
            execute format(
                'create trigger %I after delete on %s referencing old table as old_rows '
                'for each statement execute function outbox.capture_delete(%L, %L)',
                name, tbl, entity || '.deleted', account_column);
        end if;
    end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Fan-out: 0011's, with each event's record and where it was written, and a transaction larger than
-- a step written in parts (outbox.fan_out_splits; docs/fan-out.md).
-- Transactions being fanned out in parts (outbox.fan_out): the cursor has passed them, and each
-- step writes the deliveries of the next max_events of their events, after `after_id`.
create table outbox.fan_out_splits (
    xid      bigint primary key,
    after_id text collate "C" not null
);

drop function outbox.events_between(pg_snapshot, pg_snapshot);
create function outbox.events_between(prev pg_snapshot, upto pg_snapshot)
returns table (id text, type text, created_at timestamptz, account_id text, subject text,
               record text, written_at pg_lsn, xid bigint)
language sql stable parallel safe as $$
    select e.id, e.type, e.created_at, e.account_id,
           case when starts_with(e.type, 'outbox.') then e.data ->> 'endpoint_id' end,
           coalesce(e.record,
                    (select s.source || ':' || (e.data ->> s.key_column)
                     from outbox.record_sources s
                     where s.entity = split_part(e.type, '.', 1))),
           e.written_at, e.xid::text::bigint
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
        select e.id, e.type, e.created_at, e.xid, e.account_id, e.data, e.record, e.written_at
        from outbox.events e
        where e.id >= outbox.xid_key(r.lo)
          and e.id < outbox.xid_key(r.hi)
        offset 0
    ) e
    where r.lo < r.hi
      and pg_visible_in_snapshot(e.xid, upto)
      and not pg_visible_in_snapshot(e.xid, prev)
$$;

create or replace function outbox.fan_out_due() returns boolean
language plpgsql stable as $$
begin
    return exists (
        select 1
        from outbox.fan_out_cursor c
        cross join lateral outbox.events_between(c.snapshot, pg_current_snapshot()) b
        where c.name = 'main'
    ) or exists (select 1 from outbox.fan_out_splits);
end
$$;

-- 0007's, counting the events of transactions being fanned out in parts that wait for theirs.
create or replace function outbox.fan_out_lag(out events bigint, out oldest_age_s float8)
language plpgsql stable as $$
begin
    select count(*),
           coalesce(extract(epoch from clock_timestamp() - min(w.created_at)), 0)::float8
    into events, oldest_age_s
    from (
        select b.created_at
        from outbox.fan_out_cursor c
        cross join lateral outbox.events_between(c.snapshot, pg_current_snapshot()) b
        where c.name = 'main'
        union all
        select e.created_at
        from outbox.fan_out_splits s
        join outbox.events e on e.id > s.after_id and e.id < outbox.xid_key(s.xid + 1)
    ) w;
end
$$;

create or replace function outbox.fan_out(max_events integer default 10000,
                                          out events integer, out deliveries integer,
                                          out more boolean)
language plpgsql as $$
declare
    prev pg_snapshot;
    upto pg_snapshot;
    below bigint;
    ids text[];
    types text[];
    created timestamptz[];
    accounts text[];
    subjects text[];
    records text[];
    sequences bigint[];
    splitting bigint[];
    part record;
    part_size integer;
    part_events integer := greatest(max_events / 5, 1);
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
    -- The step's events, each record's numbered in the order they were written. The upsert locks
    -- the records' rows, in key order, until the step commits.
    with ev as materialized (
        select b.id, b.type, b.created_at, b.account_id, b.subject, b.record, b.written_at, b.xid
        from outbox.events_between(prev, upto) b
    ),
    keyed as materialized (
        select ev.id, ev.record,
               row_number() over (partition by ev.record order by ev.written_at, ev.id) as n,
               count(*) over (partition by ev.record) as c
        from ev
        where ev.record is not null
    ),
    bumped as (
        insert into outbox.records as r (key, sequence)
        select k.record, k.c from keyed k where k.n = 1 order by k.record
        on conflict (key) do update set sequence = r.sequence + excluded.sequence
        returning r.key, r.sequence
    ),
    numbered as materialized (
        select k.id, k.record, b.sequence - k.c + k.n as sequence
        from keyed k
        join bumped b on b.key = k.record
    ),
    kept as (
        insert into outbox.event_records (event_id, record, sequence)
        select n.id, n.record, n.sequence from numbered n
        on conflict (event_id) do nothing
    ),
    -- A transaction of more than max_events events is fanned out in parts, a step at a time
    -- (outbox.fan_out_splits), so the transactions after it need not wait for all of it; unless
    -- an ordered endpoint could get its events, which must then go whole, in order.
    large as (
        select ev.xid, array_agg(distinct ev.account_id) as accounts
        from ev
        group by ev.xid
        having count(*) > max_events
    ),
    split as (
        select coalesce(array_agg(l.xid), '{}') as xids
        from large l
        where not exists (select 1 from outbox.endpoints ep
                          where ep.ordered
                            and (ep.account_id is null or ep.account_id = any (l.accounts)))
    )
    select array_agg(ev.id) filter (where not ev.xid = any (s.xids)),
           array_agg(ev.type) filter (where not ev.xid = any (s.xids)),
           array_agg(ev.created_at) filter (where not ev.xid = any (s.xids)),
           array_agg(ev.account_id) filter (where not ev.xid = any (s.xids)),
           array_agg(ev.subject) filter (where not ev.xid = any (s.xids)),
           array_agg(n.record) filter (where not ev.xid = any (s.xids)),
           array_agg(n.sequence) filter (where not ev.xid = any (s.xids)),
           min(s.xids)
    into ids, types, created, accounts, subjects, records, sequences, splitting
    from ev
    left join numbered n on n.id = ev.id
    cross join split s;
    if cardinality(splitting) > 0 then
        insert into outbox.fan_out_splits (xid, after_id)
        select x, outbox.xid_key(x) from unnest(splitting) x;
    end if;
    -- The next part of the oldest transaction being fanned out in parts: its events were
    -- numbered with the rest of their step. A part is a fifth of a step, so that the events
    -- committed after an import wait for little more than one step of it, which writes its
    -- events' deliveries to every endpoint of the account (20 each, say).
    select s.xid, s.after_id into part
    from outbox.fan_out_splits s
    where not s.xid = any (coalesce(splitting, '{}'))  -- from the next step: this one numbered it
    order by s.xid
    limit 1;
    if found then
        with chunk as (
            select e.id, e.type, e.created_at, e.account_id,
                   case when starts_with(e.type, 'outbox.') then e.data ->> 'endpoint_id' end
                       as subject,
                   r.record, r.sequence
            from outbox.events e
            left join outbox.event_records r on r.event_id = e.id
            where e.id > part.after_id and e.id < outbox.xid_key(part.xid + 1)
            order by e.id
            limit part_events
        )
        select coalesce(ids, '{}') || coalesce(array_agg(c.id order by c.id), '{}'),
               coalesce(types, '{}') || coalesce(array_agg(c.type order by c.id), '{}'),
               coalesce(created, '{}') || coalesce(array_agg(c.created_at order by c.id), '{}'),
               coalesce(accounts, '{}') || coalesce(array_agg(c.account_id order by c.id), '{}'),
               coalesce(subjects, '{}') || coalesce(array_agg(c.subject order by c.id), '{}'),
               coalesce(records, '{}') || coalesce(array_agg(c.record order by c.id), '{}'),
               coalesce(sequences, '{}') || coalesce(array_agg(c.sequence order by c.id), '{}'),
               count(*), max(c.id)
        into ids, types, created, accounts, subjects, records, sequences, part_size, part.after_id
        from chunk c;
        if part_size < part_events then
            delete from outbox.fan_out_splits s where s.xid = part.xid;
        else
            update outbox.fan_out_splits s set after_id = part.after_id where s.xid = part.xid;
        end if;
        more := more or part_size = part_events
                or exists (select 1 from outbox.fan_out_splits s where s.xid <> part.xid);
    end if;
    more := more or cardinality(splitting) > 0;
    events := coalesce(cardinality(ids), 0);
    -- A statement of its own, whose snapshot sees every completion that committed while the
    -- upsert above waited for its rows: a delivery to an ordered endpoint is held when an earlier
    -- one of its record, pending already or earlier in this step, is ahead of it.
    with ev as (
        select * from unnest(ids, types, created, accounts, subjects, records, sequences)
            as u (id, type, created_at, account_id, subject, record, sequence)
    ),
    matched as (
        -- an account's events to that account's endpoints
        select ev.id as event_id, ev.record, ev.sequence, ep.id as endpoint_id, ep.account_id,
               ep.ordered and ev.record is not null as ordered
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
        select ev.id, ev.record, ev.sequence, ep.id, null,
               ep.ordered and ev.record is not null
        from ev
        join outbox.endpoints ep
          on ep.account_id is null
         and (ev.account_id is null or ep.all_accounts)
         and ep.enabled
         and ep.created_at <= ev.created_at
         and ep.event_types && outbox.type_patterns(ev.type)
         and ep.id is distinct from ev.subject
    ),
    placed as (
        select m.*, false as held
        from matched m
        where not m.ordered
        union all
        -- Only ordered deliveries are ranked within their (endpoint, record) pair: a step with
        -- none sorts nothing here.
        select m.*,
               row_number() over (partition by m.endpoint_id, m.record order by m.sequence) > 1
               or exists (select 1 from outbox.deliveries d
                          where d.endpoint_id = m.endpoint_id
                            and d.record = m.record collate "C"
                            and d.status = 'pending'
                            and d.ordered)
        from matched m
        where m.ordered
    ),
    written as (
        insert into outbox.deliveries
            (event_id, endpoint_id, account_id, record, sequence, ordered, next_attempt_at)
        select p.event_id, p.endpoint_id, p.account_id, p.record, p.sequence, p.ordered,
               case when not p.held then now() end
        from placed p
        order by p.event_id, p.endpoint_id
        on conflict (event_id, endpoint_id) do nothing
        returning 1
    )
    select count(*) into deliveries from written;
    update outbox.fan_out_cursor
    set snapshot = upto, fanned_at = now()
    where name = 'main';
    if deliveries > 0 then
        perform outbox.wake_relays();
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- What ends an ordered delivery (an outcome delivered or failed, recorded by
-- deliveries_complete) lets the next one of its record go: for each (endpoint, record) pair,
-- unless a delivery of the pair is still under way or waiting on the ladder, the held one with
-- the lowest number becomes due. Returns how many it released, and wakes idle relays for them.
--
-- The records' rows are locked first, in key order, in a statement of their own, so that the
-- lookup after it sees what a fan-out step holding them committed. That lookup also sees what the
-- calling statement changed before calling (a function's queries see the changes of the query
-- that runs them, made so far): the deliveries that just ended are no longer pending.
-- (enable_sort off: each pair's first delivery must be found by walking deliveries_record_idx in
-- order. On a table not analyzed yet every estimate is one row, and a walk of the endpoint's
-- whole range of deliveries_pending_idx followed by a sort looked as cheap: 2 ms a pair behind
-- 4,000 held deliveries, growing with the backlog.)
create function outbox.release_next(endpoint_ids text[], records text[])
returns integer
language plpgsql
set enable_sort = off
as $$
declare
    released integer;
begin
    perform 1
    from outbox.records r
    where r.key = any (records collate "C")
    order by r.key
    for no key update;
    -- The ids go in as an array, evaluated once: as a join, a plan made before the table was
    -- first analyzed ran the lookups once per delivery row.
    -- Only a holder of the records' locks makes a held delivery due, so the update need not
    -- check again that it still is held.
    with woken as (
        update outbox.deliveries d
        set next_attempt_at = now()
        where d.id = any (array(
            select h.id
            from (select distinct p.endpoint_id, p.record
                  from unnest(endpoint_ids, records) as p (endpoint_id, record)
                  where p.record is not null) p
            cross join lateral (
                select h.id, h.next_attempt_at
                from outbox.deliveries h
                where h.endpoint_id = p.endpoint_id collate "C"
                  and h.record = p.record collate "C"
                  and h.status = 'pending'
                  and h.ordered
                order by h.sequence
                limit 1
            ) h
            where h.next_attempt_at is null
              and not exists (
                select 1 from outbox.deliveries a
                where a.endpoint_id = p.endpoint_id collate "C"
                  and a.record = p.record collate "C"
                  and a.status = 'pending'
                  and a.ordered
                  and a.next_attempt_at is not null
            )))
          and d.status = 'pending'
        returning 1
    )
    select count(*) into released from woken;
    if released > 0 then
        perform outbox.wake_relays();
    end if;
    return released;
end
$$;

-- Deliveries made pending again by hand (`outbox redeliver`, `outbox replay`) take their turn on
-- an ordered endpoint: each of `ids` that is ordered is held, and then, as when a delivery ends,
-- each of their records with nothing under way gets its first held delivery going. An old
-- delivery sent again thus goes after the one of its record in flight, and before the later ones
-- still waiting. Returns how many it held.
create function outbox.hold_ordered(ids bigint[])
returns integer
language plpgsql as $$
declare
    held integer;
    endpoint_ids text[];
    records text[];
begin
    select array_agg(d.endpoint_id), array_agg(d.record)
    into endpoint_ids, records
    from outbox.deliveries d
    where d.id = any (ids) and d.ordered and d.record is not null and d.status = 'pending';
    if endpoint_ids is null then
        return 0;
    end if;
    perform 1
    from outbox.records r
    where r.key = any (records collate "C")
    order by r.key
    for no key update;
    update outbox.deliveries d
    set next_attempt_at = null
    where d.id = any (ids) and d.ordered and d.record is not null and d.status = 'pending';
    get diagnostics held = row_count;
    perform outbox.release_next(endpoint_ids, records);
    return held;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Roles: the relay numbers records and releases held deliveries; account roles may make their
-- endpoints ordered.
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant select on outbox.record_sources to outbox_relay;
        grant select, insert, update on outbox.records to outbox_relay;
        grant select, insert on outbox.event_records to outbox_relay;
        grant select, insert, update, delete on outbox.fan_out_splits to outbox_relay;
    end if;
    if exists (select from pg_roles where rolname = 'outbox_account') then
        grant insert (ordered), update (ordered) on outbox.endpoints to outbox_account;
        -- Redelivering to an ordered endpoint locks the records' rows (outbox.hold_ordered),
        -- which takes the right to update one of their columns.
        grant select, update (sequence) on outbox.records to outbox_account;
    end if;
end
$$;

-- Records have no account of their own: an account sees the records of its own ordered
-- deliveries still pending (those it can redeliver behind), through its deliveries' policy.
alter table outbox.records enable row level security;
create policy unconfined on outbox.records
    using ((select not outbox.confined())) with check ((select not outbox.confined()));
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        create policy relay on outbox.records to outbox_relay using (true) with check (true);
    end if;
    if exists (select from pg_roles where rolname = 'outbox_account') then
        create policy own_account on outbox.records to outbox_account
            using (key in (select d.record from outbox.deliveries d
                           where d.ordered and d.status = 'pending'));
    end if;
end
$$;
