-- The relay's fan-out: committed events become deliveries (sql/migrations/0007_fan_out.sql has
-- outbox.fan_out() and why it is exactly once and gap-free).

-- name: fan_out_step
-- One step, in a transaction of its own. Its commit need not wait for the WAL flush: a step lost
-- in a server crash loses its deliveries and its cursor move together, and the next step writes
-- them again.
select set_config('synchronous_commit', 'off', true), f.events, f.deliveries, f.more
from outbox.fan_out(%(max_events)s::integer) f;

-- name: fan_out_lag
select l.events, l.oldest_age_s from outbox.fan_out_lag() l;
