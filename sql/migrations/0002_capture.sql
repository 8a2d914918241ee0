-- Capture: statement-level triggers that turn row changes into outbox events, and attach() that
-- installs them on any table.
--
-- Statement-level triggers with transition tables write one INSERT ... SELECT per statement, so a
-- 100-row INSERT costs one trigger call instead of a hundred.

-- Timestamps inside event data are rendered in UTC whatever the writer's session zone is. A
-- function-level `SET timezone` did that at a measured ~80 µs per call; switching the zone for
-- the statement only when the session is not already on UTC costs ~3 µs, and nothing on the
-- usual UTC server. The change is transaction-local and undone by utc_end() (or by rollback).
create function outbox.utc_begin() returns text
language plpgsql volatile as $$
declare
    zone text := current_setting('TimeZone');
begin
    if zone in ('UTC', 'Etc/UTC', 'UCT', 'Etc/UCT', 'GMT', 'Etc/GMT', 'Universal', 'Zulu') then
        return null;
    end if;
    perform set_config('TimeZone', 'UTC', true);
    return zone;
end
$$;

create function outbox.utc_end(zone text) returns void
language plpgsql volatile as $$
begin
    if zone is not null then
        perform set_config('TimeZone', zone, true);
    end if;
end
$$;

create function outbox.capture_insert() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    -- tg_argv[0]: the event type, e.g. contact.created
    with ev as (
        insert into outbox.events (type, data)
        select tg_argv[0], to_jsonb(r) from new_rows r
        returning id, type
    )
    insert into outbox.deliveries (event_id, endpoint_id)
    select ev.id, ep.id
    from ev join outbox.endpoints ep on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
    if found and exists (select 1 from outbox.relays
                         where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
    perform outbox.utc_end(zone);
    return null;
end
$$;

create function outbox.capture_delete() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    -- tg_argv[0]: the event type, e.g. contact.deleted; data is the row as it was
    with ev as (
        insert into outbox.events (type, data)
        select tg_argv[0], to_jsonb(r) from old_rows r
        returning id, type
    )
    insert into outbox.deliveries (event_id, endpoint_id)
    select ev.id, ep.id
    from ev join outbox.endpoints ep on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
    if found and exists (select 1 from outbox.relays
                         where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
    perform outbox.utc_end(zone);
    return null;
end
$$;

-- The changed rows of an UPDATE: old and new rows paired by primary key (tg_argv[1]), with the old
-- values of the columns that changed. Rows whose columns are all unchanged are left out, so a
-- no-op UPDATE emits nothing.
create function outbox.capture_update() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    -- tg_argv[0]: the event type, e.g. contact.updated; tg_argv[1]: the primary-key column
    with ev as (
        insert into outbox.events (type, data, previous_attributes)
        select tg_argv[0], c.new_row, c.previous
        from (
            select n.j as new_row,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r) as j from new_rows r) n
            join (select to_jsonb(r) as j from old_rows r) o
              on n.j -> tg_argv[1] = o.j -> tg_argv[1]
        ) c
        where c.previous is not null
        returning id, type
    )
    insert into outbox.deliveries (event_id, endpoint_id)
    select ev.id, ep.id
    from ev join outbox.endpoints ep on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
    if found and exists (select 1 from outbox.relays
                         where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
    perform outbox.utc_end(zone);
    return null;
end
$$;

-- Install capture triggers on a table of the application's: <entity>.created / .updated /
-- .deleted (any subset via `actions`), and register those event types. Idempotent.
create function outbox.attach(
    target regclass,
    entity text,
    actions text[] default array['created', 'updated', 'deleted']
) returns void
language plpgsql as $$
declare
    pk_columns text[];
    tbl text := target::text;
    base text;
    action text;
begin
    -- Trigger names come from the catalog, not from target::text, whose schema prefix depends on
    -- the caller's search_path: a second attach() must find and replace the same triggers.
    select n.nspname || '_' || c.relname into base
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = target;
    if entity !~ '^[a-z][a-z0-9_]*$' then
        raise exception 'entity % must be lowercase letters, digits and underscores',
                quote_literal(entity)
            using errcode = 'invalid_parameter_value';
    end if;
    foreach action in array actions loop
        if action not in ('created', 'updated', 'deleted') then
            raise exception 'action % must be created, updated or deleted', quote_literal(action)
                using errcode = 'invalid_parameter_value';
        end if;
    end loop;
    select array_agg(a.attname order by a.attnum) into pk_columns
    from pg_index i
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = target and i.indisprimary;
    if 'updated' = any(actions) and coalesce(cardinality(pk_columns), 0) <> 1 then
        raise exception 'outbox.attach(%) needs a single-column primary key to pair old and new rows',
                tbl
            using errcode = 'invalid_parameter_value';
    end if;

    if 'created' = any(actions) then
        perform outbox.register_event_type(entity || '.created', 'New ' || entity || ' added');
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_created', tbl);
        execute format(
            'create trigger %I after insert on %s referencing new table as new_rows '
            'for each statement execute function outbox.capture_insert(%L)',
            'outbox_' || base || '_created', tbl, entity || '.created');
    end if;
    if 'updated' = any(actions) then
        perform outbox.register_event_type(entity || '.updated', entity || ' modified');
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_updated', tbl);
        execute format(
            'create trigger %I after update on %s '
            'referencing old table as old_rows new table as new_rows '
            'for each statement execute function outbox.capture_update(%L, %L)',
            'outbox_' || base || '_updated', tbl, entity || '.updated', pk_columns[1]);
    end if;
    if 'deleted' = any(actions) then
        perform outbox.register_event_type(entity || '.deleted', entity || ' removed');
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_deleted', tbl);
        execute format(
            'create trigger %I after delete on %s referencing old table as old_rows '
            'for each statement execute function outbox.capture_delete(%L)',
            'outbox_' || base || '_deleted', tbl, entity || '.deleted');
    end if;
end
$$;

-- Remove what attach() installed (the event types stay: past events still carry them).
create function outbox.detach(target regclass) returns void
language plpgsql as $$
declare
    trig record;
begin
    for trig in
        select tgname from pg_trigger
        where tgrelid = target and not tgisinternal and tgname like 'outbox\_%'
    loop
        execute format('drop trigger %I on %s', trig.tgname, target::text);
    end loop;
end
$$;

-- Keep updated_at current when another column changes, and only then: an UPDATE that changes
-- nothing else stays a no-op (and so emits no event).
create function outbox.touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := old.updated_at;
    if new is distinct from old then
        new.updated_at := now();
    end if;
    return new;
end
$$;
