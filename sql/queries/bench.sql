-- Queries of `outbox bench`: seeding workloads in bulk, watching them drain, and the statements
-- its pgbench scripts run. None of these is used by the relay or the operator commands.

-- name: bench_endpoint_add
insert into outbox.endpoints (url, event_types, enabled, description)
values (%(url)s::text, array['*'], %(enabled)s::boolean, 'outbox bench')
returning id;

-- name: bench_account_endpoint_add
-- An endpoint of account %(account)s, subscribed to everything.
insert into outbox.endpoints (url, event_types, description, account_id)
values (%(url)s::text, array['*'], 'outbox bench', %(account)s::text)
returning id;

-- name: bench_accounts_add
-- Accounts 1 to %(count)s in stover.accounts, for rows written with an account_id.
insert into stover.accounts (id, name) overriding system value
select g, 'bench ' || g from generate_series(1, %(count)s::integer) g
on conflict (id) do nothing;

-- name: bench_endpoint_enable
update outbox.endpoints set enabled = %(enabled)s::boolean where id = %(id)s::text;

-- name: bench_wake
-- What a writer's trigger sends when a relay is idle; the bench sends it after switching an
-- endpoint on, which by itself wakes no relay.
select pg_notify('outbox_due', '');

-- name: bench_events_insert
-- %(count)s contact.created events in one statement, shaped like the rows stover.contacts
-- produces; bench_fan_out then turns them into deliveries as a relay would.
insert into outbox.events (type, data)
select 'contact.created',
       jsonb_build_object(
           'id', g, 'first_name', 'Ada', 'last_name', 'Lovelace',
           'email', 'ada.' || g || '@example.com', 'phone', '+44 20 7946 0' || (g %% 1000),
           'company_id', null, 'custom_fields', jsonb_build_object('source', 'bench'),
           'created_at', now(), 'updated_at', now())
from generate_series(1, %(count)s::integer) g;

-- name: bench_large_events_insert
-- %(count)s contact.created events in one statement, each with a custom_fields note of about
-- %(bytes)s bytes (hex digits, as an attachment or a long text field would hold).
insert into outbox.events (type, data)
select 'contact.created',
       jsonb_build_object(
           'id', g, 'first_name', 'Ada', 'last_name', 'Lovelace',
           'custom_fields', jsonb_build_object(
               'note', left(repeat(md5(g::text || clock_timestamp()::text), %(bytes)s::integer / 32 + 1),
                            %(bytes)s::integer)))
from generate_series(1, %(count)s::integer) g;

-- name: bench_account_events_insert
-- %(count)s app.thing events in one statement, event g of account ((g + offset) mod accounts) + 1.
insert into outbox.events (type, data, account_id)
select 'app.thing', jsonb_build_object('id', g + %(offset)s::integer, 'source', 'bench'),
       (((g + %(offset)s::integer) %% %(accounts)s::integer) + 1)::text
from generate_series(1, %(count)s::integer) g;

-- name: bench_account_endpoints_set
-- Replace every endpoint by %(count)s endpoints subscribed to everything, spread evenly over
-- accounts 1 to %(accounts)s.
with gone as (delete from outbox.endpoints)
insert into outbox.endpoints (url, event_types, description, account_id)
select 'http://127.0.0.1:9/accounts/' || g, array['*'], 'outbox bench',
       ((g %% %(accounts)s::integer) + 1)::text
from generate_series(1, %(count)s::integer) g;

-- name: bench_endpoints_analyze
analyze outbox.endpoints;

-- name: bench_fan_out
-- One fan-out step of up to %(max_events)s events, as the relay takes them.
select f.events, f.deliveries, f.more from outbox.fan_out(%(max_events)s::integer) f;

-- name: bench_fan_out_floor
-- The join floor beside fan-out by account (`outbox bench accounts`): every committed event's
-- deliveries written by one INSERT ... SELECT, each event joined to the enabled endpoints of its
-- account whose types match, into outbox.deliveries with all its indexes. Nothing else a fan-out
-- step does: no cursor or snapshot, no numbering of records, no splitting of large
-- transactions, no ordered endpoints, no account-less endpoints, no conflict check.
insert into outbox.deliveries (event_id, endpoint_id, account_id, next_attempt_at)
select e.id, ep.id, ep.account_id, now()
from outbox.events e
join outbox.endpoints ep
  on ep.account_id = e.account_id
 and ep.enabled
 and ep.created_at <= e.created_at
 and ep.event_types && outbox.type_patterns(e.type);

-- name: bench_pending_count
-- Walks the partial pending index, so it stays cheap while a backlog drains.
select count(*) from outbox.deliveries where status = 'pending';

-- name: bench_pending_enabled_count
-- Pending deliveries the relay may claim now: those of endpoints that are switched on.
select count(*)
from outbox.deliveries d
join outbox.endpoints ep on ep.id = d.endpoint_id
where d.status = 'pending' and ep.enabled;

-- name: bench_status_counts
select status, count(*) from outbox.deliveries group by status;

-- name: bench_relays_idle
select count(*) from outbox.relays where idle and heartbeat_at > now() - interval '1 minute';

-- name: bench_reference_install
-- The cheapest per-row capture a trigger can make: each inserted row as jsonb into a table with
-- no index and no id, by one statement-level plpgsql trigger. What an event row with its data
-- costs a write, without the outbox's id and primary key.
create table bench_reference (data jsonb);
create function bench_reference() returns trigger
language plpgsql as $$
begin
    insert into bench_reference (data) select to_jsonb(r) from new_rows r;
    return null;
end
$$;
create trigger bench_reference after insert on stover.contacts
    referencing new table as new_rows for each statement execute function bench_reference();

-- name: bench_floor_install
-- The floor: the least a capture trigger can do, one tiny row per statement (an identity and the
-- writer's xid) into a table with no index, by one statement-level plpgsql trigger. No event data
-- at all: how close any trigger can come to plain INSERTs on this machine.
create table bench_floor (
    id  bigint generated always as identity,
    xid xid8 not null default pg_current_xact_id()
);
create function bench_floor() returns trigger
language plpgsql as $$
begin
    insert into bench_floor default values;
    return null;
end
$$;
create trigger bench_floor after insert on stover.contacts
    referencing new table as new_rows for each statement execute function bench_floor();

-- name: bench_account_install
-- Account 1, whose rows the pgbench scripts write; and the INSERT capture of contacts as attach()
-- makes it without `account_column` (bench_capture_no_account switches it on instead of the
-- reference tables' own, which takes the account from account_id).
insert into stover.accounts (id, name) overriding system value values (1, 'bench')
on conflict (id) do nothing;
create trigger bench_no_account after insert on stover.contacts
    referencing new table as new_rows for each statement
    execute function outbox.capture_insert('contact.created', null);

-- name: bench_pgq_available
-- Whether this server has PgQ installed (Debian's postgresql-NN-pgq3, for one).
select exists (select 1 from pg_available_extensions where name = 'pgq');

-- name: bench_pgq_install
-- PgQ's own JSON capture, the design outbox.fan_out() borrows: a row-level C trigger that writes
-- each row as JSON into a PgQ queue's event table (an id from a sequence, the xid, a B-tree on
-- the xid).
create extension if not exists pgq;
select pgq.create_queue('outbox_bench');
create trigger bench_pgq after insert on stover.contacts
    for each row execute function pgq.jsontriga('outbox_bench');

-- name: bench_endpoints_enable
-- The first %(count)s endpoints (by creation) enabled, the rest disabled.
with ranked as (
    select ep.id, row_number() over (order by ep.created_at, ep.id) as n from outbox.endpoints ep
)
update outbox.endpoints ep
set enabled = ranked.n <= %(count)s::integer
from ranked
where ranked.id = ep.id and ep.enabled is distinct from (ranked.n <= %(count)s::integer);

-- name: bench_capture_outbox
-- Only the outbox's own triggers (and the reference stover triggers: updated_at, checks).
alter table stover.contacts enable trigger user;
alter table stover.contacts disable trigger bench_reference;
alter table stover.contacts disable trigger bench_floor;
alter table stover.contacts disable trigger bench_no_account;

-- name: bench_capture_no_account
-- The outbox's capture as attach() makes it for a table without an account column: the same
-- trigger function, given no column to take the account from.
alter table stover.contacts enable trigger user;
alter table stover.contacts disable trigger bench_reference;
alter table stover.contacts disable trigger bench_floor;
alter table stover.contacts disable trigger outbox_stover_contacts_created;

-- name: bench_capture_reference
alter table stover.contacts disable trigger user;
alter table stover.contacts enable trigger bench_reference;

-- name: bench_capture_floor
alter table stover.contacts disable trigger user;
alter table stover.contacts enable trigger bench_floor;

-- name: bench_capture_pgq
alter table stover.contacts disable trigger user;
alter table stover.contacts enable trigger bench_pgq;

-- name: bench_capture_off
alter table stover.contacts disable trigger user;

-- name: bench_pgq_installed
select exists (select 1 from pg_trigger
               where tgname = 'bench_pgq' and tgrelid = 'stover.contacts'::regclass);

-- name: bench_pgq_off
-- After a mode that enabled every user trigger, where PgQ's was installed.
alter table stover.contacts disable trigger bench_pgq;

-- name: bench_checkpoint
checkpoint;

-- name: bench_dead_tuples
select coalesce(n_dead_tup, 0), coalesce(n_live_tup, 0), coalesce(autovacuum_count, 0)
from pg_stat_user_tables
where schemaname = 'outbox' and relname = 'deliveries';

-- name: bench_autovacuum_naptime
-- Seconds between autovacuum's visits to a database: the period of the dead-tuple sawtooth.
select setting::float8 from pg_settings where name = 'autovacuum_naptime';

-- name: bench_vacuum_analyze
vacuum (analyze) outbox.deliveries, outbox.events;

-- name: bench_event_contacts
-- Which event each written contact raised, to match receiver arrivals with writer commits.
select e.id, (e.data ->> 'id')::bigint
from outbox.events e
where e.type = 'contact.created';

-- name: bench_account_path
-- Where an account's deliveries (%(account)s null: the account-less ones) spent their time, each
-- its event's id and, in seconds since the epoch: its event's transaction began, its delivery
-- was written (the fan-out step's transaction began), its first attempt started.
select e.id,
       extract(epoch from e.created_at)::float8,
       extract(epoch from d.created_at)::float8,
       extract(epoch from (select min(a.started_at) from outbox.attempts a
                           where a.delivery_id = d.id))::float8
from outbox.deliveries d
join outbox.events e on e.id = d.event_id
where d.account_id is not distinct from %(account)s::text;

-- name: bench_event_sample
-- Events as the relay reads them, to render the same bodies for the baseline client and peer.
select e.id, e.type, e.created_at, e.data::text, e.previous_attributes::text
from outbox.events e
order by e.created_at desc
limit %(limit)s::integer;

-- name: bench_contact_insert
insert into stover.contacts (first_name, last_name, email, phone, custom_fields, account_id)
values ('Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', '{"source": "bench"}',
        %(account)s::bigint)
returning id;

-- name: bench_contacts_import
-- %(rows)s contacts of account %(account)s in one statement: one transaction of that many events.
insert into stover.contacts (first_name, last_name, email, custom_fields, account_id)
select 'Imported', 'Contact ' || g, 'import.' || g || '@example.com', '{"source": "import"}',
       %(account)s::bigint
from generate_series(1, %(rows)s::integer) g;

-- name: bench_fanned_out
select (select events from outbox.fan_out_lag()) = 0;

-- name: bench_account_enable
update outbox.endpoints set enabled = %(enabled)s::boolean where account_id = %(account)s::text;

-- name: bench_server_version
select current_setting('server_version');

-- name: bench_settings
select name, current_setting(name)
from pg_settings
where name = any (%(names)s::text[])
order by name;

-- name: bench_connections_free
-- Connections left for the bench's own clients, keeping superuser_reserved_connections aside.
select current_setting('max_connections')::integer
     - current_setting('superuser_reserved_connections')::integer
     - (select count(*) from pg_stat_activity where backend_type = 'client backend')::integer;

-- name: bench_pgqueuer_left
select count(*) from pgqueuer;

-- name: pgbench_single_row
-- Each row belongs to account 1 (bench_account_install), as a multi-account CRM's rows do.
insert into stover.contacts (first_name, last_name, email, phone, custom_fields, account_id)
values ('Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', '{"source": "bench"}', 1);

-- name: pgbench_hundred_rows
insert into stover.contacts (first_name, last_name, email, phone, custom_fields, account_id)
select 'Ada', 'Lovelace', 'ada.' || g || '@example.com', '+44 20 7946 0000', '{"source": "bench"}', 1
from generate_series(1, 100) g;


-- name: bench_outbox_reset
truncate outbox.attempts, outbox.deliveries, outbox.events, outbox.fan_out_splits;

-- name: bench_record_events_insert
-- %(records)s records, deals %(first)s onwards, each updated %(updates)s times in turn (every
-- record once, then every record again, ...): deal.updated events in one statement, numbered per
-- record at fan-out. Returns the ids of the first record's events, oldest first.
with written as (
    insert into outbox.events (type, data)
    select 'deal.updated',
           jsonb_build_object('id', %(first)s::bigint + r, 'name', 'Deal ' || r,
                              'stage', 'qualified', 'amount', 1000.5, 'update', u)
    from generate_series(1, %(updates)s::integer) u
    cross join generate_series(0, %(records)s::integer - 1) r
    order by u, r
    returning id, data
)
select coalesce(array_agg(w.id order by w.id), '{}')
from written w
where (w.data ->> 'id')::bigint = %(first)s::bigint;

-- name: bench_endpoint_ordered
update outbox.endpoints set ordered = %(ordered)s::boolean where id = %(id)s::text;

-- name: bench_pending_apart
-- Pending deliveries other than those of the records named (the ones failing on purpose).
select count(*) from outbox.deliveries
where status = 'pending' and record <> all (%(records)s::text[]);

-- name: bench_floor_claim
-- The contract floor's claim (`outbox bench deliver`): the least a sender can claim by and still
-- deliver at least once whoever dies: due rows taken with FOR UPDATE SKIP LOCKED under a lease
-- (the due time moved past now, its value the token an outcome must match), with what the
-- request needs. No fairness, no per-endpoint caps, no rate limits, no ordering.
with async_commit as materialized (
    select set_config('synchronous_commit', 'off', true)
),
due as (
    select d.id
    from outbox.deliveries d
    where d.status = 'pending' and d.next_attempt_at <= now()
    order by d.next_attempt_at
    limit %(limit)s::integer
    for update skip locked
)
update outbox.deliveries d
set next_attempt_at = now() + interval '45 seconds'
from due, outbox.events e, outbox.endpoints ep, async_commit
where d.id = due.id and e.id = d.event_id and ep.id = d.endpoint_id
returning d.id, d.next_attempt_at::text, d.attempts, ep.url, ep.secret,
          e.id, e.type, e.created_at, e.data::text, e.previous_attributes::text,
          d.record, d.sequence;

-- name: bench_floor_record
-- The contract floor's record: each attempt a row of outbox.attempts and its delivery's row
-- updated beside it (status, attempts, last attempt), in one statement per batch; an outcome
-- whose lease no longer matches is dropped. %(outcomes)s: a JSON array of
-- [delivery id, lease, attempt, started_at, duration_ms, status_code].
with outcome as (
    select (o ->> 0)::bigint as id, (o ->> 1)::timestamptz as lease, (o ->> 2)::integer as attempt,
           (o ->> 3)::timestamptz as started_at, (o ->> 4)::float8 as duration_ms,
           (o ->> 5)::integer as status_code
    from json_array_elements(%(outcomes)s::json) o
),
recorded as (
    update outbox.deliveries d
    set status = case when o.status_code between 200 and 299 then 'delivered' else 'pending' end,
        attempts = o.attempt,
        next_attempt_at = case when o.status_code between 200 and 299 then null
                               else now() + interval '1 minute' end,
        last_attempt_at = o.started_at,
        last_status_code = o.status_code,
        delivered_at = case when o.status_code between 200 and 299 then now() end
    from outcome o
    where d.id = o.id and d.status = 'pending' and d.next_attempt_at = o.lease
    returning d.id
)
insert into outbox.attempts (delivery_id, attempt, started_at, duration_ms, status_code)
select o.id, o.attempt, o.started_at, o.duration_ms, o.status_code
from outcome o
join recorded r on r.id = o.id;

-- name: bench_attempts_count
select count(*) from outbox.attempts;
