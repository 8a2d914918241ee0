-- Least-privilege roles (NOLOGIN; grant them to the login roles that need them):
--
--   outbox_relay   what `outbox relay` does: claim and record deliveries, disable an endpoint that
--                  answered 410 Gone, say whether it is idle. It cannot read the application's
--                  tables, change endpoints' URLs or secrets, or delete anything but its own
--                  entry in outbox.relays.
--     grant outbox_relay to stover_relay;  -- a LOGIN role the sidecar connects as
--
--   outbox_writer  what the capture triggers and outbox.emit() do in a writer's transaction:
--                  insert events and deliveries, read which endpoints subscribe (not their URLs
--                  or secrets) and whether a relay waits for a wake-up. Grant it to the
--                  application's role.
--     grant outbox_writer to stover_app;
--
-- Operator commands (`outbox endpoints`, `redeliver`, `replay`, `migrate`) run as the schema's
-- owner. Roles are shared by every database of a server: a second database migrated on the same
-- server finds them and grants its own tables. A migration that adds a table the relay or the
-- writers touch grants it here too.

do $$
begin
    if not exists (select from pg_roles where rolname = 'outbox_relay') then
        create role outbox_relay nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'outbox_writer') then
        create role outbox_writer nologin;
    end if;
exception when insufficient_privilege then
    raise notice 'roles outbox_relay and outbox_writer not created: % may not create roles; '
                 'ask an administrator to create them and run the grants of 0004_roles.sql',
                 current_user;
end
$$;

do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant usage on schema outbox to outbox_relay;
        -- `outbox relay` refuses to start with migrations pending, so it reads their record.
        grant select on outbox.schema_migrations to outbox_relay;
        grant select on outbox.events to outbox_relay;
        grant select, update (enabled, description) on outbox.endpoints to outbox_relay;
        grant select,
              update (status, attempts, next_attempt_at, last_attempt_at, last_status_code,
                      last_error, delivered_at)
            on outbox.deliveries to outbox_relay;
        grant select, insert on outbox.attempts to outbox_relay;
        grant select, insert, update, delete on outbox.relays to outbox_relay;
        -- The relay's own VACUUM of outbox.deliveries; before PostgreSQL 17 only the owner may.
        if current_setting('server_version_num')::integer >= 170000 then
            execute 'grant maintain on outbox.deliveries to outbox_relay';
        end if;
    end if;
    if exists (select from pg_roles where rolname = 'outbox_writer') then
        grant usage on schema outbox to outbox_writer;
        -- The capture statement reads back the ids and types of the events it inserts.
        grant select (id, type), insert on outbox.events to outbox_writer;
        grant insert on outbox.deliveries to outbox_writer;
        -- outbox.emit() registers an application's new event type as it first raises it.
        grant select, insert on outbox.event_types to outbox_writer;
        -- Which endpoints subscribe, never their URLs or secrets.
        grant select (id, enabled, event_types) on outbox.endpoints to outbox_writer;
        grant select (idle, heartbeat_at) on outbox.relays to outbox_writer;
    end if;
end
$$;
