-- The reference Stover application tables and the triggers that emit the 14 seed events.

create schema if not exists stover;

create table stover.companies (
    id         bigint generated always as identity primary key,
    name       text not null,
    domain     text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table stover.contacts (
    id            bigint generated always as identity primary key,
    first_name    text,
    last_name     text,
    email         text,
    phone         text,
    company_id    bigint references stover.companies (id) on delete set null,
    custom_fields jsonb not null default '{}',
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create index contacts_company_idx on stover.contacts (company_id);

create table stover.deals (
    id         bigint generated always as identity primary key,
    name       text not null,
    amount     numeric(14, 2),
    currency   text not null default 'USD',
    stage      text not null default 'lead'
               constraint deal_stage check (
                   stage in ('lead', 'qualified', 'proposal', 'negotiation',
                             'closed_won', 'closed_lost')),
    company_id bigint references stover.companies (id) on delete set null,
    contact_id bigint references stover.contacts (id) on delete set null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index deals_company_idx on stover.deals (company_id);
create index deals_contact_idx on stover.deals (contact_id);

create table stover.posts (
    id           bigint generated always as identity primary key,
    network      text not null,
    content      text not null default '',
    status       text not null default 'draft'
                 constraint post_status check (
                     status in ('draft', 'scheduled', 'published', 'failed')),
    scheduled_at timestamptz,
    published_at timestamptz,
    error        text,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

create table stover.attribution_events (
    id          bigint generated always as identity primary key,
    contact_id  bigint references stover.contacts (id) on delete set null,
    source      text,
    medium      text,
    campaign    text,
    url         text,
    occurred_at timestamptz not null default now()
);
create index attribution_events_contact_idx on stover.attribution_events (contact_id);

-- The check constraints are the backstop; these say what went wrong in words a person can use.
create function stover.check_allowed() returns trigger
language plpgsql as $$
declare
    -- tg_argv[0]: column, tg_argv[1..]: allowed values
    value text := to_jsonb(new) ->> tg_argv[0];
begin
    if value is null or not (value = any(tg_argv[1:])) then
        raise exception '% % % is not one of %', tg_table_name, tg_argv[0],
                coalesce(quote_literal(value), 'NULL'), array_to_string(tg_argv[1:], ', ')
            using errcode = 'check_violation';
    end if;
    return new;
end
$$;

create trigger deals_check_stage before insert or update of stage on stover.deals
    for each row execute function stover.check_allowed(
        'stage', 'lead', 'qualified', 'proposal', 'negotiation', 'closed_won', 'closed_lost');
create trigger posts_check_status before insert or update of status on stover.posts
    for each row execute function stover.check_allowed(
        'status', 'draft', 'scheduled', 'published', 'failed');

create trigger companies_touch before update on stover.companies
    for each row execute function outbox.touch_updated_at();
create trigger contacts_touch before update on stover.contacts
    for each row execute function outbox.touch_updated_at();
create trigger deals_touch before update on stover.deals
    for each row execute function outbox.touch_updated_at();
create trigger posts_touch before update on stover.posts
    for each row execute function outbox.touch_updated_at();

-- contacts: created / updated / deleted; companies: created / updated; deals: created (updates
-- below); attribution_events: attribution.tracked.
select outbox.attach('stover.contacts', 'contact');
select outbox.attach('stover.companies', 'company', array['created', 'updated']);
select outbox.attach('stover.deals', 'deal', array['created']);

create trigger outbox_stover_attribution_events_created
    after insert on stover.attribution_events
    referencing new table as new_rows
    for each statement execute function outbox.capture_insert('attribution.tracked');

-- deal.updated for every changed deal; deal.stage_changed when stage changed; and
-- deal.closed_won / deal.closed_lost when stage became one of those.
create function outbox.capture_deal_update() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    with ev as (
        insert into outbox.events (type, data, previous_attributes)
        select t.type, c.new_row, c.previous
        from (
            select n.j as new_row,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r) as j from new_rows r) n
            join (select to_jsonb(r) as j from old_rows r) o on n.j -> 'id' = o.j -> 'id'
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
        order by c.new_row -> 'id', t.ord
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

create trigger outbox_stover_deals_updated
    after update on stover.deals
    referencing old table as old_rows new table as new_rows
    for each statement execute function outbox.capture_deal_update();

-- post.scheduled / post.published / post.failed when a write makes status one of those: an
-- INSERT with that status, or an UPDATE that changed status to it.
create function outbox.capture_post_insert() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    with ev as (
        insert into outbox.events (type, data)
        select 'post.' || r.status, to_jsonb(r)
        from new_rows r
        where r.status in ('scheduled', 'published', 'failed')
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

create function outbox.capture_post_update() returns trigger
language plpgsql as $$
declare
    zone text := outbox.utc_begin();
begin
    with ev as (
        insert into outbox.events (type, data, previous_attributes)
        select 'post.' || (c.new_row ->> 'status'), c.new_row, c.previous
        from (
            select n.j as new_row,
                   (select jsonb_object_agg(was.key, was.value)
                    from jsonb_each(o.j) was
                    where was.value is distinct from n.j -> was.key) as previous
            from (select to_jsonb(r) as j from new_rows r) n
            join (select to_jsonb(r) as j from old_rows r) o on n.j -> 'id' = o.j -> 'id'
        ) c
        where c.previous ? 'status'
          and c.new_row ->> 'status' in ('scheduled', 'published', 'failed')
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

create trigger outbox_stover_posts_created
    after insert on stover.posts
    referencing new table as new_rows
    for each statement execute function outbox.capture_post_insert();
create trigger outbox_stover_posts_updated
    after update on stover.posts
    referencing old table as old_rows new table as new_rows
    for each statement execute function outbox.capture_post_update();
