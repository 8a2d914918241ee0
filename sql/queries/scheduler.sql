-- pgqueuer's scheduler inside the relays: its tables live in schema outbox (outbox/db/scheduler.py
-- creates them with pgqueuer's own statements). Every parameter carries an explicit cast.

-- name: grant_relay
-- What a relay connected as outbox_relay needs to host the scheduler: claim and release its rows
-- of outbox.pgqueuer_schedules and add its own (their ids come from the serial's sequence), and
-- see outbox.pgqueuer_log, whose presence the scheduler checks before it starts. Nothing of
-- pgqueuer's job queue: the relays only schedule. Re-run by every `outbox migrate`, so a role
-- created by an administrator after the tables gets them on the next run.
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant select, insert, update on outbox.pgqueuer_schedules to outbox_relay;
        execute format('grant usage on sequence %s to outbox_relay',
                       pg_get_serial_sequence('outbox.pgqueuer_schedules', 'id'));
        grant select on outbox.pgqueuer_log to outbox_relay;
    end if;
end
$$;

-- name: missing_tables
-- Which of the scheduler's tables are not there: an installation migrated before the relays
-- hosted maintenance.
select t.name
from unnest(%(tables)s::text[]) as t(name)
where to_regclass(t.name) is null
order by t.name;

-- name: may_schedule
-- Whether this role may run the scheduler on those tables (the owner may; outbox_relay after
-- grant_relay).
select has_table_privilege('outbox.pgqueuer_schedules', 'select')
   and has_table_privilege('outbox.pgqueuer_schedules', 'insert')
   and has_table_privilege('outbox.pgqueuer_schedules', 'update')
   and has_sequence_privilege(pg_get_serial_sequence('outbox.pgqueuer_schedules', 'id'), 'usage')
   and has_table_privilege('outbox.pgqueuer_log', 'select');

-- name: lacking_privileges
-- Which of the (table, privilege) pairs a job needs this role does not hold, as "DELETE on
-- outbox.events".
select upper(p.privilege) || ' on ' || p.relation
from unnest(%(relations)s::text[], %(privileges)s::text[]) as p(relation, privilege)
where not has_table_privilege(p.relation, p.privilege)
order by 1;
