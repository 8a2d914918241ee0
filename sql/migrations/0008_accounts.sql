-- Accounts: every event, endpoint and delivery may belong to one of the application's accounts
-- (tenants), and an event reaches only the endpoints of its own account.
--
-- The account is one more column of the one event row the writer inserts, taken from the changed
-- row in the writer's transaction; fan-out matches it to the endpoints' accounts by equality, so
-- it finds them through an index or a hash join, however many accounts there are. A NULL account
-- is a single-account installation's: rows written before this migration keep it and behave as
-- they did. An endpoint with all_accounts (and no account of its own) is the operator's feed of
-- every account's events.
--
-- PostgreSQL keeps accounts apart: the role outbox_account sees and changes, by row-level
-- security, only the rows of the account named by the setting outbox.account (or, for a login
-- mapped in outbox.account_logins, by that mapping whatever the setting says).

-- ---------------------------------------------------------------------------------------------
-- The reference application's accounts.
create table stover.accounts (
    id         bigint generated always as identity primary key,
    name       text not null,
    created_at timestamptz not null default now()
);
alter table stover.companies add column account_id bigint references stover.accounts;
alter table stover.contacts add column account_id bigint references stover.accounts;
alter table stover.deals add column account_id bigint references stover.accounts;
alter table stover.posts add column account_id bigint references stover.accounts;
alter table stover.attribution_events add column account_id bigint references stover.accounts;

-- ---------------------------------------------------------------------------------------------
-- The outbox's accounts: the application's tenant key as text (a bigint, a uuid or a slug).
alter table outbox.events add column account_id text collate "C";
alter table outbox.endpoints
    add column account_id text collate "C"
        constraint endpoint_account_format
        check (account_id ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$'),
    add column all_accounts boolean not null default false,
    add constraint endpoint_all_accounts_alone
        check (not (all_accounts and account_id is not null));
-- A delivery's account is its endpoint's: the audit of an account reads its own deliveries
-- without a join, and row-level security decides on the row itself.
alter table outbox.deliveries add column account_id text collate "C";

-- Fan-out finds an account's enabled endpoints by this index (or by hash on the account).
create index endpoints_account_idx on outbox.endpoints (account_id) where enabled;

-- ---------------------------------------------------------------------------------------------
-- Capture. The templates of 0007, taking the event's account from the row: the trigger's
-- argument names the account column (absent: no account, NULL). An UPDATE that moves a row to
-- another account is, for each account, what it looks like from there: the old account gets
-- <entity>.deleted with the row as it was, the new one <entity>.created with the row as it is,
-- and neither sees the other's values.
do $migration$
declare
    -- The event's data must not depend on the writer's session: timestamps in UTC (TimeZone),
    -- intervals as 'postgres' style, bytea as hex, floats shortest-exact (extra_float_digits
    -- above 0). A setting that differs is switched for the statement and put back after it
    -- (set_config(..., true) is transaction-local, and undone with the statement if it fails).
    template constant text := $template$
create or replace function outbox.%1$I() returns trigger
language plpgsql as $function$
declare
    zone text := current_setting('TimeZone');
    style text := current_setting('IntervalStyle');
    bytes text := current_setting('bytea_output');
    digits text := current_setting('extra_float_digits');
begin
    if zone in ('UTC', 'Etc/UTC', 'UCT', 'Etc/UCT', 'GMT', 'Etc/GMT', 'Universal', 'Zulu') then
        zone := null;
    else
        perform set_config('TimeZone', 'UTC', true);
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
            from (select to_jsonb(r) as j from new_rows r) n
            full join (select to_jsonb(r) as j from old_rows r) o
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
    from (select to_jsonb(r) as j from new_rows r) r$s$);
    execute format(template, 'capture_delete', $s$
    insert into outbox.events (type, data, account_id)
    select tg_argv[0], r.j, r.j ->> tg_argv[1]
    from (select to_jsonb(r) as j from old_rows r) r$s$);
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
    from (select to_jsonb(r) as j from new_rows r) r
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

-- attach() takes the account column; detach() is unchanged.
drop function outbox.attach(regclass, text, text[]);
create function outbox.attach(
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
begin
    -- Trigger names come from the catalog, not from target::text, whose schema prefix depends on
    -- the caller's search_path: a second attach() must find and replace the same triggers.
    select n.nspname || '_' || c.relname into base
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = target;
    if base like 'outbox\_%' then
        raise exception 'outbox.attach(%): the outbox''s own tables cannot be attached', tbl
            using errcode = 'invalid_parameter_value';
    end if;
    if entity is null or entity !~ '^[a-z][a-z0-9_]*$' then
        raise exception 'entity % must be lowercase letters, digits and underscores',
                coalesce(quote_literal(entity), 'NULL')
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
    if 'created' = any(actions) then
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_created', tbl);
        execute format(
            'create trigger %I after insert on %s referencing new table as new_rows '
            'for each statement execute function outbox.capture_insert(%L, %L)',
            'outbox_' || base || '_created', tbl, entity || '.created', account_column);
    end if;
    if 'updated' = any(actions) then
        perform outbox.register_event_type(entity || '.updated', entity || ' modified');
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_updated', tbl);
        execute format(
            'create trigger %I after update on %s '
            'referencing old table as old_rows new table as new_rows '
            'for each statement execute function outbox.capture_update(%L, %L, %L)',
            'outbox_' || base || '_updated', tbl, entity || '.updated', pk_columns[1],
            account_column);
    end if;
    if 'deleted' = any(actions) then
        execute format('drop trigger if exists %I on %s', 'outbox_' || base || '_deleted', tbl);
        execute format(
            'create trigger %I after delete on %s referencing old table as old_rows '
            'for each statement execute function outbox.capture_delete(%L, %L)',
            'outbox_' || base || '_deleted', tbl, entity || '.deleted', account_column);
    end if;
end
$$;

-- The reference tables take their events' account from their account_id.
select outbox.attach('stover.contacts', 'contact', account_column => 'account_id');
select outbox.attach('stover.companies', 'company', array['created', 'updated'], 'account_id');
select outbox.attach('stover.deals', 'deal', array['created'], 'account_id');
drop trigger outbox_stover_attribution_events_created on stover.attribution_events;
create trigger outbox_stover_attribution_events_created
    after insert on stover.attribution_events
    referencing new table as new_rows
    for each statement execute function outbox.capture_insert('attribution.tracked', 'account_id');
drop trigger outbox_stover_deals_updated on stover.deals;
create trigger outbox_stover_deals_updated
    after update on stover.deals
    referencing old table as old_rows new table as new_rows
    for each statement execute function outbox.capture_deal_update('account_id');
-- deal.deleted: what the account a deal moved away from gets.
select outbox.register_event_type('deal.deleted', 'deal removed');
drop trigger outbox_stover_posts_created on stover.posts;
create trigger outbox_stover_posts_created
    after insert on stover.posts
    referencing new table as new_rows
    for each statement execute function outbox.capture_post_insert('account_id');
drop trigger outbox_stover_posts_updated on stover.posts;
create trigger outbox_stover_posts_updated
    after update on stover.posts
    referencing old table as old_rows new table as new_rows
    for each statement execute function outbox.capture_post_update('account_id');

-- emit() takes the account.
drop function outbox.emit(text, jsonb);
create function outbox.emit(event_type text, data jsonb, account text default null) returns text
language plpgsql as $$
declare
    event_id text;
begin
    if event_type is null or event_type !~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$' then
        raise exception 'event type % must look like entity.action (lowercase, 2 to 4 dot-separated parts)',
                coalesce(quote_literal(event_type), 'NULL')
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
-- Fan-out by account: the events between two snapshots carry their account, and an event gets a
-- delivery to each matching endpoint of its own account, plus, for an event with no account, the
-- endpoints with none, and for an event with one, the all_accounts endpoints. Two equality joins,
-- never a test of every endpoint against every event.
drop function outbox.events_between(pg_snapshot, pg_snapshot);
create function outbox.events_between(prev pg_snapshot, upto pg_snapshot)
returns table (id text, type text, created_at timestamptz, account_id text)
language sql stable parallel safe as $$
    select e.id, e.type, e.created_at, e.account_id
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
        select e.id, e.type, e.created_at, e.xid, e.account_id
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
        select b.id, b.type, b.created_at, b.account_id
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

-- Deleting an endpoint takes the fan-out cursor's lock (0007): as the definer, so a role allowed
-- to delete its own endpoints need not be allowed to lock the cursor, or to delete deliveries.
alter function outbox.forget_endpoints() security definer set search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------------------------
-- Isolation. A login that must not choose its account (a customer's read-only SQL login) is
-- mapped to one here; the mapping wins over the setting.
create table outbox.account_logins (
    login      name primary key,
    account_id text collate "C" not null
               constraint account_login_format
               check (account_id ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$'),
    created_at timestamptz not null default now()
);

-- The account the current session is confined to: its login's mapping, else the setting
-- outbox.account, else none (NULL, which matches no row). Definer: the confined role need not
-- read the mappings of other logins.
create function outbox.current_account() returns text
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select coalesce(
        (select l.account_id from outbox.account_logins l where l.login = session_user),
        nullif(current_setting('outbox.account', true), ''))
$$;

-- Whether the current role is confined to an account: a member of outbox_account.
create function outbox.confined() returns boolean
language sql stable as $$
    select case when exists (select from pg_roles where rolname = 'outbox_account')
                then pg_has_role(current_user, 'outbox_account', 'member')
                else false end
$$;

do $$
begin
    if not exists (select from pg_roles where rolname = 'outbox_account') then
        create role outbox_account nologin;
    end if;
exception when insufficient_privilege then
    raise notice 'role outbox_account not created: % may not create roles; '
                 'ask an administrator to create it and run the grants of 0008_accounts.sql',
                 current_user;
end
$$;

-- Every other role keeps what its grants allow (the table's owner and superusers are not subject
-- to row-level security at all). `(select ...)`: evaluated once per statement, not per row.
alter table outbox.events enable row level security;
alter table outbox.endpoints enable row level security;
alter table outbox.deliveries enable row level security;
alter table outbox.attempts enable row level security;
create policy unconfined on outbox.events
    using ((select not outbox.confined())) with check ((select not outbox.confined()));
create policy unconfined on outbox.endpoints
    using ((select not outbox.confined())) with check ((select not outbox.confined()));
create policy unconfined on outbox.deliveries
    using ((select not outbox.confined())) with check ((select not outbox.confined()));
create policy unconfined on outbox.attempts
    using ((select not outbox.confined())) with check ((select not outbox.confined()));

-- The relay and the writers: their grants alone, and no policy to evaluate (a policy of TRUE
-- makes the others' condition fold away when the statement is planned).
do $$
declare
    tbl text;
begin
    if exists (select from pg_roles where rolname = 'outbox_relay')
       and exists (select from pg_roles where rolname = 'outbox_writer') then
        foreach tbl in array array['events', 'endpoints', 'deliveries', 'attempts'] loop
            execute format('create policy relay_and_writers on outbox.%I '
                           'to outbox_relay, outbox_writer using (true) with check (true)', tbl);
        end loop;
    end if;
end
$$;

do $$
begin
    if not exists (select from pg_roles where rolname = 'outbox_account') then
        return;
    end if;
    create policy own_account on outbox.events for select to outbox_account
        using (account_id = (select outbox.current_account()));
    create policy own_account on outbox.endpoints to outbox_account
        using (account_id = (select outbox.current_account()))
        with check (account_id = (select outbox.current_account()) and not all_accounts);
    -- A delivery it writes is of its own event to its own endpoint: the subqueries see only
    -- those, under these same policies.
    create policy own_account on outbox.deliveries to outbox_account
        using (account_id = (select outbox.current_account()))
        with check (account_id = (select outbox.current_account())
                    and exists (select 1 from outbox.endpoints ep where ep.id = endpoint_id)
                    and exists (select 1 from outbox.events e where e.id = event_id));
    create policy own_account on outbox.attempts for select to outbox_account
        using (exists (select 1 from outbox.deliveries d
                       where d.id = delivery_id
                         and d.account_id = (select outbox.current_account())));

    grant usage on schema outbox to outbox_account;
    grant select on outbox.event_types, outbox.events, outbox.deliveries, outbox.attempts
        to outbox_account;
    -- Its own endpoints: create, edit, rotate, disable, delete.
    grant select, insert, delete,
          update (url, event_types, enabled, description, secret, updated_at, account_id)
        on outbox.endpoints to outbox_account;
    -- Redeliver and replay its own deliveries.
    grant insert (event_id, endpoint_id, account_id),
          update (status, next_attempt_at, ladder_start, delivered_at)
        on outbox.deliveries to outbox_account;
end
$$;
