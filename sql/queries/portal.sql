-- Portal links: revoking an account's links, and the check every portal request makes.

-- name: portal_revoke
insert into outbox.portal_revocations (account_id) values (%(account_id)s::text)
on conflict (account_id) do update set revoked_at = now()
returning revoked_at;

-- name: portal_link_revoked
select outbox.portal_link_revoked(%(account_id)s::text, %(issued)s::timestamptz);

-- name: portal_confine
-- The rest of this transaction runs as outbox_account, confined to the link's account by
-- row-level security: whatever the page's code asks, PostgreSQL returns that account's rows.
select set_config('role', 'outbox_account', true),
       set_config('outbox.account', %(account_id)s::text, true);
