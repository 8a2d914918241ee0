-- `outbox prune`: remove events older than a cutoff, with their deliveries and attempts, once
-- none of their deliveries is pending. Every parameter carries an explicit cast.
--
-- Batches walk outbox.events in primary-key order, each reading only its own rows. An event not
-- yet fanned out (its xid not in the fan-out cursor's snapshot) has no delivery yet and stays.

-- name: prune_batch
-- The next batch of events after %(after)s, each marked whether it is old enough to prune.
select id, created_at < %(cutoff)s::timestamptz as old
from outbox.events
where id > %(after)s::text
order by id
limit %(batch)s::integer;

-- name: prune_deliveries
-- The deliveries of the batch's old events that have no pending delivery. A delivery requeued
-- after this statement's snapshot is read again under its row lock, is pending, and stays.
delete from outbox.deliveries d
where d.event_id = any(%(event_ids)s::text[])
  and d.status <> 'pending'
  and not exists (select 1 from outbox.deliveries p
                  where p.event_id = d.event_id and p.status = 'pending')
returning d.event_id;

-- name: prune_events
-- A statement of its own, so its snapshot sees the deletions above and any delivery committed
-- since: an event with a delivery left (pending, or added by a replay) stays.
delete from outbox.events e
where e.id = any(%(event_ids)s::text[])
  and not exists (select 1 from outbox.deliveries d where d.event_id = e.id)
  and outbox.fanned_out(e.xid)
returning e.id;

-- name: prune_count
-- What prune_deliveries and prune_events would remove from the batch's old events.
select count(*) filter (where not c.pending) as events,
       coalesce(sum(c.deliveries) filter (where not c.pending), 0) as deliveries
from outbox.events e
cross join lateral (
    select count(*) as deliveries, coalesce(bool_or(d.status = 'pending'), false) as pending
    from outbox.deliveries d
    where d.event_id = e.id
) c
where e.id = any(%(event_ids)s::text[])
  and outbox.fanned_out(e.xid);
