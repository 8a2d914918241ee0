-- The outbox: event types, events, endpoints, deliveries, attempts, and the relay wake-up flag.

create schema if not exists outbox;

-- Ids look like evt_0005f1c2d3e4a5b6c7d8e9f0a1b2: a microsecond clock in hex first, so new ids land on
-- the right-hand edge of the primary-key index instead of splitting random pages, then random bits.
create function outbox.new_id(prefix text) returns text
language sql volatile parallel safe as $$
    select prefix || '_'
        || lpad(to_hex((extract(epoch from clock_timestamp()) * 1000000)::bigint), 14, '0')
        || lpad(to_hex((random() * 281474976710655)::bigint), 12, '0')
$$;

-- whsec_ + base64 of 32 bytes. gen_random_uuid() is the core server's strong random source; three
-- of them (366 random bits) hashed with sha256 give 32 uniformly random bytes without pgcrypto.
create function outbox.new_secret() returns text
language sql volatile as $$
    select 'whsec_' || encode(sha256(convert_to(
        gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')),
        'base64')
$$;

-- ---------------------------------------------------------------------------------------------
-- Event types: the catalogue endpoints subscribe to. The 14 seed types are registered below;
-- outbox.attach() and outbox.register_event_type() add the application's own.
create table outbox.event_types (
    name        text primary key
                constraint event_type_name_format
                -- Two to four dot-separated segments: outbox.type_patterns() relies on the limit.
                check (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$'),
    description text not null default '',
    created_at  timestamptz not null default now()
);

insert into outbox.event_types (name, description) values
    ('contact.created', 'New contact added'),
    ('contact.updated', 'Contact information modified'),
    ('contact.deleted', 'Contact removed'),
    ('deal.created', 'New deal created'),
    ('deal.updated', 'Deal information modified'),
    ('deal.stage_changed', 'Deal moved to different stage'),
    ('deal.closed_won', 'Deal marked as won'),
    ('deal.closed_lost', 'Deal marked as lost'),
    ('company.created', 'New company added'),
    ('company.updated', 'Company information modified'),
    ('post.published', 'Post successfully published'),
    ('post.scheduled', 'Post scheduled for later'),
    ('post.failed', 'Post failed to publish'),
    ('attribution.tracked', 'New attribution event recorded');

create function outbox.register_event_type(name text, description text default '')
returns void language sql as $$
    insert into outbox.event_types (name, description) values (name, description)
    on conflict (name) do nothing
$$;

-- ---------------------------------------------------------------------------------------------
create table outbox.events (
    id                  text primary key default outbox.new_id('evt'),
    type                text not null,
    created_at          timestamptz not null default now(),
    data                jsonb not null,
    previous_attributes jsonb
);
create index events_created_at_idx on outbox.events (created_at);

-- ---------------------------------------------------------------------------------------------
create table outbox.endpoints (
    id          text primary key default outbox.new_id('ep'),
    url         text not null,
    secret      text not null default outbox.new_secret()
                -- Padded base64 of at least 24 bytes (Svix makes 24, we make 32): whole
                -- 4-character quanta, so every Standard Webhooks verifier can decode it.
                constraint endpoint_secret_format
                check (secret ~ '^whsec_(?:[A-Za-z0-9+/]{4}){8,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'),
    event_types text[] not null,
    enabled     boolean not null default true,
    description text not null default '',
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Reject bad endpoints where they are written, with messages a person can act on.
create function outbox.check_endpoint() returns trigger
language plpgsql as $$
declare
    pattern text;
begin
    -- Scheme, host (no userinfo), then a path, query or fragment, or nothing.
    if new.url !~* '^https?://[^/?#\s@]+([/?#]\S*)?$' then
        raise exception 'endpoint url % is not an absolute http(s) URL', quote_literal(new.url)
            using errcode = 'check_violation',
                  hint = 'Use a URL such as https://example.com/webhooks.';
    end if;
    if new.event_types is null or cardinality(new.event_types) = 0 then
        raise exception 'endpoint must subscribe to at least one event type'
            using errcode = 'check_violation',
                  hint = 'Use ''*'' for every type, ''deal.*'' for a prefix, or exact types.';
    end if;
    foreach pattern in array new.event_types loop
        if pattern is null or not exists (
            select 1 from outbox.event_types t where outbox.type_matches(array[pattern], t.name)
        ) then
            raise exception 'event type % is not known and matches no known type',
                    coalesce(quote_literal(pattern), 'NULL')
                using errcode = 'check_violation',
                      hint = 'List the types with: select name from outbox.event_types;';
        end if;
    end loop;
    if tg_op = 'UPDATE' then
        new.updated_at := now();
    end if;
    return new;
end
$$;

-- Does any pattern (exact type, 'prefix.*' or '*') match this event type?
create function outbox.type_matches(patterns text[], event_type text) returns boolean
language sql immutable parallel safe as $$
    select exists (
        select 1 from unnest(patterns) p
        where p = '*'
           or p = event_type
           or (p like '%.*' and starts_with(event_type, left(p, -1)))
    )
$$;

-- The subscription patterns that match an event type: '*', the type itself and each 'prefix.*'.
-- Fan-out joins endpoints with `event_types && type_patterns(type)`: an inlinable expression,
-- where calling type_matches() for every event and endpoint cost more than the capture itself.
create function outbox.type_patterns(t text) returns text[]
language sql immutable parallel safe
return array_remove(array[
    '*',
    t,
    case when split_part(t, '.', 2) <> '' then split_part(t, '.', 1) || '.*' end,
    case when split_part(t, '.', 3) <> ''
         then split_part(t, '.', 1) || '.' || split_part(t, '.', 2) || '.*' end,
    case when split_part(t, '.', 4) <> ''
         then split_part(t, '.', 1) || '.' || split_part(t, '.', 2) || '.'
              || split_part(t, '.', 3) || '.*' end
], null);

create trigger endpoints_check
    before insert or update of url, event_types on outbox.endpoints
    for each row execute function outbox.check_endpoint();

-- ---------------------------------------------------------------------------------------------
create table outbox.deliveries (
    id               bigint generated always as identity primary key,
    -- No foreign keys here on purpose: checking one takes a FOR KEY SHARE lock on the endpoint's
    -- row from every writing transaction, and concurrent writers then pile up multixacts on that
    -- one row. Deleting an endpoint or an event removes its deliveries by trigger instead.
    event_id         text not null,
    endpoint_id      text not null,
    status           text not null default 'pending'
                     constraint delivery_status check (status in ('pending', 'delivered', 'failed')),
    attempts         integer not null default 0,
    -- Attempts made before the current round of the retry ladder: 0 until an operator redelivers,
    -- then the ladder starts again from its first rung while attempt numbers keep counting up.
    ladder_start     integer not null default 0,
    -- For a pending delivery: when it is due. A relay that claims it pushes this forward by its
    -- lease; the value it set is its lease token, so a relay whose lease expired cannot overwrite
    -- the work of the relay that took the delivery over.
    next_attempt_at  timestamptz default now(),
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz not null default now()
);

-- The claim query's index: only pending rows, ordered by due time. Delivered and failed rows leave
-- it, so it stays as small as the backlog.
create index deliveries_due_idx on outbox.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_event_idx on outbox.deliveries (event_id);
create index deliveries_endpoint_created_idx on outbox.deliveries (endpoint_id, created_at);

-- The hot table sees an update per attempt: vacuum it far more eagerly than the defaults.
alter table outbox.deliveries set (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 80
);

create table outbox.attempts (
    delivery_id   bigint not null references outbox.deliveries (id) on delete cascade,
    attempt       integer not null,
    started_at    timestamptz not null,
    duration_ms   double precision not null,
    status_code   integer,
    error         text,
    response_body text,
    primary key (delivery_id, attempt)
);

-- ---------------------------------------------------------------------------------------------
-- Wake-up without NOTIFY in every business transaction. NOTIFY takes a database-wide lock at
-- commit, so writers only send one while some relay has said it is idle and listening; a busy
-- relay keeps claiming and needs no wake-up. A relay that died while idle stops counting once its
-- heartbeat is older than a minute.
create unlogged table outbox.relays (
    id          text primary key,
    idle        boolean not null default false,
    heartbeat_at timestamptz not null default now()
);

create function outbox.wake_relays() returns void
language plpgsql as $$
begin
    if exists (select 1 from outbox.relays
               where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Deliveries go when their endpoint or their event goes.
create function outbox.forget_endpoints() returns trigger
language plpgsql as $$
begin
    delete from outbox.deliveries d using gone_endpoints g where d.endpoint_id = g.id;
    return null;
end
$$;

create trigger endpoints_forget
    after delete on outbox.endpoints
    referencing old table as gone_endpoints
    for each statement execute function outbox.forget_endpoints();

create function outbox.forget_events() returns trigger
language plpgsql as $$
begin
    delete from outbox.deliveries d using gone_events g where d.event_id = g.id;
    return null;
end
$$;

create trigger events_forget
    after delete on outbox.events
    referencing old table as gone_events
    for each statement execute function outbox.forget_events();

-- Fan-out: each capture statement inserts its events and, in the same statement, one pending
-- delivery (due now) per enabled endpoint whose event_types match:
--
--     with ev as (insert into outbox.events ... returning id, type)
--     insert into outbox.deliveries (event_id, endpoint_id)
--     select ev.id, ep.id from ev join outbox.endpoints ep
--         on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
--
-- One statement instead of a second trigger level on outbox.events: that second level (its own
-- transition table and plpgsql call) measured as much as the capture itself. Applications add
-- events with outbox.emit(), which fans out the same way; a bare INSERT into outbox.events does not.

-- Record an application-defined event inside the caller's transaction. Its type is registered on
-- first use so endpoints can subscribe to it.
create function outbox.emit(event_type text, data jsonb) returns text
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
    event_id := outbox.new_id('evt');
    with ev as (
        insert into outbox.events (id, type, data) values (event_id, event_type, data)
        returning id, type
    )
    insert into outbox.deliveries (event_id, endpoint_id)
    select ev.id, ep.id
    from ev join outbox.endpoints ep on ep.enabled and ep.event_types && outbox.type_patterns(ev.type);
    if found and exists (select 1 from outbox.relays
                         where idle and heartbeat_at > now() - interval '1 minute') then
        perform pg_notify('outbox_due', '');
    end if;
    return event_id;
end
$$;
