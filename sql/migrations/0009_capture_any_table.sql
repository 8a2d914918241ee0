-- Capture takes the whole row of any table, and writes the same data whatever the writer's
-- session.
--
-- 1. Ranges ignore DateStyle. 0008 switches TimeZone, IntervalStyle, bytea_output and
--    extra_float_digits for the capture statement, since to_jsonb() writes intervals, bytea and
--    floats with their output functions. A range (daterange, tstzrange, ...) is written with its
--    output function too, and dates and timestamps inside it follow DateStyle:
--    '[2024-01-15,2024-02-01)' under ISO became '[15.01.2024,01.02.2024)' under German.
--    DateStyle is switched to ISO the same way.
-- 2. The row is `r.*`, not `r`. In `select to_jsonb(r) from new_rows r` a column named r wins
--    over the row alias: a table with such a column had that column's value captured as the
--    event's data, and its INSERTs failed outright when the value was NULL (data is NOT NULL).
--    `r.*` can only be the whole row.

do $migration$
declare
    -- The event's data must not depend on the writer's session: timestamps in UTC (TimeZone),
    -- dates inside ranges in ISO (DateStyle), intervals as 'postgres' style, bytea as hex, floats
    -- shortest-exact (extra_float_digits above 0). A setting that differs is switched for the
    -- statement and put back after it (set_config(..., true) is transaction-local, and undone
    -- with the statement if it fails).
    template constant text := $template$
create or replace function outbox.%1$I() returns trigger
language plpgsql as $function$
declare
    zone text := current_setting('TimeZone');
    dates text := current_setting('DateStyle');
    style text := current_setting('IntervalStyle');
    bytes text := current_setting('bytea_output');
    digits text := current_setting('extra_float_digits');
begin
    if zone in ('UTC', 'Etc/UTC', 'UCT', 'Etc/UCT', 'GMT', 'Etc/GMT', 'Universal', 'Zulu') then
        zone := null;
    else
        perform set_config('TimeZone', 'UTC', true);
    end if;
    -- DateStyle is 'ISO, MDY' and such: the output format, then the input order it leaves as is.
    if starts_with(dates, 'ISO') then
        dates := null;
    else
        perform set_config('DateStyle', 'ISO', true);
    end if;
    if style = 'postgres' then
        style := null;
    else
        perform set_config('IntervalStyle', 'postgres', true);
    end if;
    if bytes = 'hex' then
        bytes := null;
    else
        perform set_config('bytea_output', 'hex', true);
    end if;
    if digits::integer > 0 then
        digits := null;
    else
        perform set_config('extra_float_digits', '1', true);
    end if;
    %2$s;
    if zone is not null then
        perform set_config('TimeZone', zone, true);
    end if;
    if dates is not null then
        perform set_config('DateStyle', dates, true);
    end if;
    if style is not null then
        perform set_config('IntervalStyle', style, true);
    end if;
    if bytes is not null then
        perform set_config('bytea_output', bytes, true);
    end if;
    if digits is not null then
        perform set_config('extra_float_digits', digits, true);
    end if;
    return null;
end
$function$;
$template$;
    -- Old and new rows paired by primary key (%1$s, an expression); %2$s: the account column.
    -- A full join: a row whose key the UPDATE changed has no partner, and is a deletion of the old
    -- key and a creation of the new one (an old row whose key another row took in the same
    -- statement pairs with that row, as an update of the key).
    changed constant text := $changed$
            select n.j as new_row, o.j as old_row,
                   n.j ->> %2$s as account, o.j ->> %2$s as old_account,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r.*) as j from new_rows r) n
            full join (select to_jsonb(r.*) as j from old_rows r) o
              on n.j -> %1$s = o.j -> %1$s$changed$;
    -- A pair that is an update within one account.
    same constant text := $same$c.new_row is not null and c.old_row is not null
          and c.previous is not null and c.account is not distinct from c.old_account$same$;
    -- The events of a changed key, or of a row moved between accounts; %1$s is the entity.
    moved constant text := $moved$
    union all
    select %1$s || '.deleted', c.old_row, null::jsonb, c.old_account, 8
    where c.old_row is not null and (c.new_row is null or c.account is distinct from c.old_account)
    union all
    select %1$s || '.created', c.new_row, null::jsonb, c.account, 9
    where c.new_row is not null and (c.old_row is null or c.account is distinct from c.old_account)$moved$;
begin
    -- tg_argv: [0] event type, [1] account column
    execute format(template, 'capture_insert', $s$
    insert into outbox.events (type, data, account_id)
    select tg_argv[0], r.j, r.j ->> tg_argv[1]
    from (select to_jsonb(r.*) as j from new_rows r) r$s$);
    execute format(template, 'capture_delete', $s$
    insert into outbox.events (type, data, account_id)
    select tg_argv[0], r.j, r.j ->> tg_argv[1]
    from (select to_jsonb(r.*) as j from old_rows r) r$s$);
    -- tg_argv: [0] event type, [1] primary-key column, [2] account column
    execute format(template, 'capture_update', format($s$
    insert into outbox.events (type, data, previous_attributes, account_id)
    select t.type, t.data, t.previous, t.account
    from (%s
    ) c
    cross join lateral (
        select tg_argv[0] as type, c.new_row as data, c.previous, c.account, 1 as ord
        where %s%s
    ) t
    order by coalesce(c.new_row, c.old_row) -> tg_argv[1], t.ord$s$,
        format(changed, 'tg_argv[1]', 'tg_argv[2]'), same,
        format(moved, 'split_part(tg_argv[0], ''.'', 1)')));
    -- tg_argv: [0] account column
    execute format(template, 'capture_deal_update', format($s$
    insert into outbox.events (type, data, previous_attributes, account_id)
    select t.type, t.data, t.previous, t.account
    from (%s
    ) c
    cross join lateral (
        select 'deal.updated' as type, c.new_row as data, c.previous, c.account, 1 as ord
        where %2$s
        union all
        select 'deal.stage_changed', c.new_row, c.previous, c.account, 2
        where %2$s and c.previous ? 'stage'
        union all
        select 'deal.' || (c.new_row ->> 'stage'), c.new_row, c.previous, c.account, 3
        where %2$s and c.previous ? 'stage'
          and c.new_row ->> 'stage' in ('closed_won', 'closed_lost')%3$s
    ) t
    order by coalesce(c.new_row, c.old_row) -> 'id', t.ord$s$,
        format(changed, '''id''', 'tg_argv[0]'), same, format(moved, '''deal''')));
    execute format(template, 'capture_post_insert', $s$
    insert into outbox.events (type, data, account_id)
    select 'post.' || (r.j ->> 'status'), r.j, r.j ->> tg_argv[0]
    from (select to_jsonb(r.*) as j from new_rows r) r
    where r.j ->> 'status' in ('scheduled', 'published', 'failed')$s$);
    -- A post's events go to the account it belongs to after the UPDATE.
    execute format(template, 'capture_post_update', format($s$
    insert into outbox.events (type, data, previous_attributes, account_id)
    select 'post.' || (c.new_row ->> 'status'), c.new_row, c.previous, c.account
    from (%s
    ) c
    where c.previous ? 'status'
      and c.new_row ->> 'status' in ('scheduled', 'published', 'failed')$s$,
        format(changed, '''id''', 'tg_argv[0]')));
end
$migration$;

-- attach() names each trigger so that it fits. Names were 'outbox_<schema>_<table>_<action>',
-- and PostgreSQL cuts identifiers at 63 bytes: for a table name of 48 bytes or more in public,
-- the three actions' names came out the same, each attach step dropped the trigger the step
-- before had made, and only `deleted` was left capturing. The table part is now shortened until
-- the action fits; and the triggers an earlier attach() made are found by their function, not
-- by their name, so those cut names are replaced too. And only the schema outbox holds the
-- outbox's own tables: a table in a schema of the application's named outbox_archive or such was
-- refused as one of them.
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

-- Event types are at most 256 characters. Longer names were taken until the primary key of
-- outbox.event_types refused one ('index row size 3016 exceeds btree version 4 maximum 2704'),
-- which is no way to tell a caller of emit() what was wrong. emit() and attach() now say so, and
-- quote at most 140 characters of what they were given.
alter table outbox.event_types
    drop constraint event_type_name_format,
    add constraint event_type_name_format
        check (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$' and length(name) <= 256);

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
