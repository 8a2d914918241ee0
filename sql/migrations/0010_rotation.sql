-- Secret rotation with overlap.
--
-- outbox.rotate_secret(endpoint_id, overlap) gives an endpoint a new secret and keeps the one it
-- replaces for `overlap` (24 hours unless said otherwise). Until then every attempt is signed by
-- both: `webhook-signature` carries one `v1,` signature per secret (the Standard Webhooks way),
-- so a receiver holding either verifies; `X-Stover-Signature`, which carries one signature and
-- which the seed's snippet compares whole, stays signed by the replaced secret until the overlap
-- ends and by the new one from then on. A receiver that accepts either secret for the length of
-- the overlap never sees a failed check (README: "Rotating a secret").
--
-- One secret is kept beside the current one: a second rotation during an overlap replaces the
-- kept secret with the one it rotates out. An overlap of zero keeps none.

alter table outbox.endpoints
    add column previous_secret text
        constraint endpoint_previous_secret_format
        check (previous_secret ~ '^whsec_(?:[A-Za-z0-9+/]{4}){8,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'),
    add column previous_secret_until timestamptz,
    add constraint endpoint_previous_secret_pair
        check ((previous_secret is null) = (previous_secret_until is null));

comment on column outbox.endpoints.previous_secret is
    'The secret the last rotation replaced; it signs too until previous_secret_until.';
comment on column outbox.endpoints.previous_secret_until is
    'When the replaced secret stops signing (the end of the rotation''s overlap).';

create function outbox.rotate_secret(
    endpoint_id text, overlap interval default interval '24 hours'
) returns table (secret text, overlap_until timestamptz)
language plpgsql as $$
begin
    if overlap is null or overlap < interval '0' then
        raise exception 'overlap % is not a length of time from zero up',
                coalesce(quote_literal(overlap::text), 'NULL')
            using errcode = 'invalid_parameter_value',
                  hint = 'Use an interval such as ''24 hours'', or ''0'' for no overlap.';
    end if;
    return query
    update outbox.endpoints ep
    set previous_secret = case when overlap > interval '0' then ep.secret end,
        previous_secret_until = case when overlap > interval '0' then now() + overlap end,
        secret = outbox.new_secret(),
        updated_at = now()
    where ep.id = rotate_secret.endpoint_id
    returning ep.secret, ep.previous_secret_until;
    if not found then
        raise exception 'no endpoint with id %', quote_literal(endpoint_id)
            using errcode = 'no_data_found';
    end if;
end
$$;

comment on function outbox.rotate_secret(text, interval) is
    'Give an endpoint a new secret; the replaced one also signs for `overlap` (default 24 hours).';

-- An account's own role rotates its own endpoints' secrets (row-level security keeps it there).
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_account') then
        grant update (previous_secret, previous_secret_until) on outbox.endpoints
            to outbox_account;
    end if;
end
$$;
