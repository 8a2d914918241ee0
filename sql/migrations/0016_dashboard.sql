-- The dashboard: its role, and the revocation of an account's portal links.
--
-- The dashboard's role (NOLOGIN; grant it to the login `outbox dashboard` connects as):
--
--   outbox_dashboard  what the dashboard's pages do: read the audit tables, create, switch,
--                     re-key and delete endpoints, redeliver and replay deliveries. It cannot
--                     write events or attempts, read the application's tables, claim deliveries
--                     or change migrations.
--     create role stover_dashboard login password '…';
--     grant outbox_dashboard to stover_dashboard;
--
-- It is not confined to an account (it is no member of outbox_account): it is the operator's
-- page, and row-level security's `unconfined` policies (0008) let it see every account's rows.
-- Deleting an endpoint removes its deliveries and attempts by the foreign keys' cascade, which
-- runs as the tables' owner, so the role needs no DELETE on them.

do $$
begin
    if not exists (select from pg_roles where rolname = 'outbox_dashboard') then
        create role outbox_dashboard nologin;
    end if;
exception when insufficient_privilege then
    raise notice 'role outbox_dashboard not created: % may not create roles; '
                 'ask an administrator to create it and run the grants of 0016_dashboard_role.sql',
                 current_user;
end
$$;

do $$
begin
    if not exists (select from pg_roles where rolname = 'outbox_dashboard') then
        return;
    end if;
    grant usage on schema outbox to outbox_dashboard;
    -- The dashboard refuses to start with migrations pending, as the relay does.
    grant select on outbox.schema_migrations to outbox_dashboard;
    grant select on outbox.event_types, outbox.events, outbox.deliveries, outbox.attempts
        to outbox_dashboard;
    grant select, insert, delete,
          update (enabled, description, secret, previous_secret, previous_secret_until,
                  updated_at)
        on outbox.endpoints to outbox_dashboard;
    -- Redeliver (requeue) and replay (requeue, or a new delivery of a past event, with the record
    -- and number fan-out gave the event; an ordered endpoint's requeued deliveries wait their
    -- record's turn, outbox.hold_ordered, which locks the records they are of).
    grant insert (event_id, endpoint_id, account_id, record, sequence, ordered),
          update (status, next_attempt_at, ladder_start, delivered_at)
        on outbox.deliveries to outbox_dashboard;
    grant select on outbox.event_records to outbox_dashboard;
    grant select, update (sequence) on outbox.records to outbox_dashboard;
    -- outbox.wake_relays() after a requeue: whether any relay waits for a wake-up.
    grant select (idle, heartbeat_at) on outbox.relays to outbox_dashboard;
    -- Replay locks the window's events FOR KEY SHARE (so `outbox prune` waits for it), which
    -- PostgreSQL allows only to a role that may update some column; the append-only trigger
    -- (0001) still refuses every update of an event.
    grant update (type) on outbox.events to outbox_dashboard;
    -- Replay sends only events fan-out has passed (outbox.fanned_out reads its cursor).
    grant select on outbox.fan_out_cursor to outbox_dashboard;
end
$$;

-- A portal link's pages run as outbox_account and redeliver as the CLI does, which wakes the
-- relays when one waits: that reads whether any does.
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_account') then
        grant select (idle, heartbeat_at) on outbox.relays to outbox_account;
    end if;
end
$$;

-- Portal links (`outbox portal-link ACCOUNT`) are signed and carry the time they were made;
-- `outbox portal-link ACCOUNT --revoke` refuses every link of the account made before now, and
-- every session opened with one.
create table outbox.portal_revocations (
    account_id text collate "C" primary key
               constraint portal_revocation_account_format
               check (account_id ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$'),
    revoked_at timestamptz not null default now()
);

-- Whether a link of `account` made at `issued` has been revoked. Definer: a portal session asks
-- before it is confined to its account, and need not read other accounts' revocations.
create function outbox.portal_link_revoked(account text, issued timestamptz) returns boolean
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
    select exists (select 1 from outbox.portal_revocations r
                   where r.account_id = account and r.revoked_at >= issued)
$$;
