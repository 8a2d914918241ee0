-- What the capture triggers cost each business write, cut where PostgreSQL spends it. Counted
-- with callgrind on a single-row INSERT into stover.contacts (instructions per statement, which
-- unlike time do not vary from run to run): 553k with capture before this migration, 196k without.
--
-- 1. The delivery_status CHECK constraint: the executor re-reads a table constraint from its
--    stored text and plans it again on every statement that writes the table (~34k per capture).
--    A domain's check is parsed once per session and kept in the type cache (~7k). Same values,
--    same SQLSTATE (23514) for anything else.
-- 2. Ids compared byte by byte: under a database collation other than C (C.UTF-8, en_US...)
--    every comparison in the id indexes went through strcoll. Ids are ASCII, so "C" orders and
--    matches them the same way, at memcmp's cost.
-- 3. events.created_at is indexed with BRIN instead of a B-tree: events arrive in created_at
--    order, replay's time ranges read a few block ranges, and a row costs the index almost
--    nothing (a B-tree entry per event was ~5% of a 100-row INSERT's capture).
-- 4. The capture functions switch the session to UTC inline instead of calling two plpgsql
--    functions per statement (~22k), and are now written once, below, from one template.

alter table outbox.deliveries drop constraint delivery_status;
create domain outbox.delivery_status as text
    constraint delivery_status check (value in ('pending', 'delivered', 'failed'));
alter table outbox.deliveries alter column status type outbox.delivery_status;

alter table outbox.events alter column id type text collate "C";
drop index outbox.events_created_at_idx;
create index events_created_at_idx on outbox.events using brin (created_at);
alter table outbox.endpoints alter column id type text collate "C";
alter table outbox.deliveries
    alter column event_id type text collate "C",
    alter column endpoint_id type text collate "C";

-- Every capture function is this template around the INSERT INTO outbox.events that turns the
-- statement's transition rows into events (%2$s); %1$I is the function's name. The events' data
-- renders timestamps in UTC whatever the writer's session zone is: the zone is switched for the
-- statement only when the session is not already on UTC (set_config(..., true) is transaction
-- local, and rolled back with the statement if it fails). Fan-out: each event gets one pending
-- delivery per enabled endpoint whose event_types match, in the same statement; a relay that has
-- said it is idle is woken by NOTIFY.
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
    with ev as (%2$s
        returning id, type
    )
    insert into outbox.deliveries (event_id, endpoint_id)
    select ev.id, ep.id
    from ev join outbox.endpoints ep on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
    if found and exists (select 1 from outbox.relays
                         where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
    if zone is not null then
        perform set_config('TimeZone', zone, true);
    end if;
    return null;
end
$function$;
$template$;
    -- The changed rows of an UPDATE: old and new rows paired by the primary key, with the old
    -- values of the columns that changed; rows with nothing changed are left out (%s: the key).
    changed constant text := $changed$
            select n.j as new_row,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r) as j from new_rows r) n
            join (select to_jsonb(r) as j from old_rows r) o on n.j -> %s = o.j -> %s$changed$;
begin
    -- attach()'s <entity>.created; tg_argv[0] is the event type.
    execute format(template, 'capture_insert', $s$
        insert into outbox.events (type, data)
        select tg_argv[0], to_jsonb(r) from new_rows r$s$);
    -- attach()'s <entity>.deleted: the row as it was.
    execute format(template, 'capture_delete', $s$
        insert into outbox.events (type, data)
        select tg_argv[0], to_jsonb(r) from old_rows r$s$);
    -- attach()'s <entity>.updated; tg_argv[1] is the primary-key column.
    execute format(template, 'capture_update', format($s$
        insert into outbox.events (type, data, previous_attributes)
        select tg_argv[0], c.new_row, c.previous
        from (%s
        ) c
        where c.previous is not null$s$, format(changed, 'tg_argv[1]', 'tg_argv[1]')));
    -- deal.updated for every changed deal; deal.stage_changed when stage changed; and
    -- deal.closed_won / deal.closed_lost when stage became one of those.
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
    -- post.scheduled / post.published / post.failed when a write makes status one of those: an
    -- INSERT with that status, or an UPDATE that changed status to it.
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

drop function outbox.utc_begin();
drop function outbox.utc_end(text);
