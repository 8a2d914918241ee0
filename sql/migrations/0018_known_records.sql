-- The step's numbering, linear in the records it knows already (docs/fan-out.md#bounded-steps).
--
-- 0017 found the records already known as a list of keys and chose each record's insert by
-- testing it against that list. The planner, with no statistics for the step's events, took the
-- list for one row and tested membership by a nested loop: every record of the step against
-- every known one. Steps of new records never showed it; a step of 16,666 updates to known
-- records took 16 s. Each record now carries a flag from its own probe of the primary key.
--
-- The same want of statistics on a new installation let the test for an earlier pending delivery
-- of a record on an ordered endpoint read all of that endpoint's pending deliveries for each one
-- (10,000 updates on top of 20,000 pending: 7.3 s); it now asks for the record's first one in
-- sequence order, which its own index answers, with sorts off for the step (as release_next has)
-- and JIT off (the disabled sorts' cost would have every statement compiled).

create or replace function outbox.fan_out(max_events integer default 10000,
                                          out events integer, out deliveries integer,
                                          out more boolean)
language plpgsql
set enable_bitmapscan = off
set enable_sort = off
set jit = off
set work_mem = '32MB'
as $$
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
    part_events integer := greatest(max_events / 20, 1);
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
    -- the rows of the records already known, in key order, until the step commits; the new ones
    -- are inserted, unseen by others until then.
    with ev as materialized (
        select b.id, b.type, b.created_at, b.account_id, b.subject, b.record, b.written_at, b.xid
        from outbox.events_between(prev, upto) b
    ),
    keyed as materialized (
        select ev.id, ev.record,
               row_number() over w as n,
               count(*) over w as c
        from ev
        where ev.record is not null
        window w as (partition by ev.record order by ev.written_at, ev.id
                     rows between unbounded preceding and unbounded following)
    ),
    -- Each record's first event in the step, and whether the record is known already: a probe
    -- of the primary key per record. A flag rather than a list of the known keys joined back:
    -- the planner, with no statistics for the step's events, took such a list for one row and
    -- joined it by a nested loop, comparing every record with every known one.
    firsts as materialized (
        select k.record, k.c,
               exists (select 1 from outbox.records r where r.key = k.record) as known
        from keyed k
        where k.n = 1
    ),
    bumped_known as (
        insert into outbox.records as r (key, sequence)
        select f.record, f.c
        from firsts f
        where f.known
        order by f.record
        on conflict (key) do update set sequence = r.sequence + excluded.sequence
        returning r.key, r.sequence
    ),
    bumped_new as (
        insert into outbox.records as r (key, sequence)
        select f.record, f.c
        from firsts f
        where not f.known
        returning r.key, r.sequence
    ),
    bumped as (
        select * from bumped_known
        union all
        select * from bumped_new
    ),
    numbered as materialized (
        select k.id, k.record, b.sequence - k.c + k.n as sequence
        from keyed k
        join bumped b on b.key = k.record
    ),
    kept as (
        insert into outbox.event_records (event_id, record, sequence)
        select n.id, n.record, n.sequence from numbered n
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
    -- numbered with the rest of their step. A part is a twentieth of a step (250 of the relay's
    -- 5,000 events), since it writes its events' deliveries to every endpoint of their account
    -- (5,000 deliveries at 20 each): the events committed after an import wait for the step that
    -- numbers it and one part, not for a step's worth of its deliveries.
    select s.xid, s.after_id into part
    from outbox.fan_out_splits s
    where not s.xid = any (coalesce(splitting, '{}'))  -- from the next step: this one numbered it
    order by s.xid
    limit 1;
    if found then
        with chunk as (
            select e.id, e.type, e.created_at, e.account_id, e.subject, r.record, r.sequence
            from (
                select e.id, e.type, e.created_at, e.account_id,
                       case when starts_with(e.type, 'outbox.') then e.data ->> 'endpoint_id' end
                           as subject
                from outbox.events e
                where e.id > part.after_id and e.id < outbox.xid_key(part.xid + 1)
                order by e.id
                limit part_events
            ) e
            left join lateral (
                -- A probe of the primary key per event: OFFSET 0 keeps the planner from a hash
                -- join over every row of the table.
                select r.record, r.sequence
                from outbox.event_records r
                where r.event_id = e.id
                offset 0
            ) r on true
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
               -- The record's first pending delivery in sequence order, which only
               -- deliveries_record_idx gives without a sort (sorts are off for the step where
               -- any other way exists): as EXISTS, a plan made without statistics read every
               -- pending delivery of the endpoint through deliveries_pending_idx, once per
               -- ordered delivery.
               or coalesce((select true from outbox.deliveries d
                            where d.endpoint_id = m.endpoint_id
                              and d.record = m.record collate "C"
                              and d.status = 'pending'
                              and d.ordered
                            order by d.sequence
                            limit 1), false)
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
