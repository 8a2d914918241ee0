-- Endpoint options a receiver asks for: headers of its own on every request, and a limit on how
-- many attempts start per second, held across every relay.
--
-- Headers. `headers` is a JSON object of name -> value, sent with every attempt beside the
-- outbox's own headers. The names the outbox or HTTP itself sets (Host, Content-Type,
-- X-Stover-*, webhook-* ...) cannot be replaced; values may be credentials, so no listing, log,
-- event or error message shows one (outbox.headers_problem names the header, never its value).
--
-- Rate limit. `rate_limit` is the most attempts that may start per second to the endpoint, in
-- total over all relays (NULL: no limit). `rate_next_at` is the next start the limit allows: a
-- claim locks the endpoint's row, hands each delivery it takes the next slot (1/rate_limit
-- seconds apart, up to a second ahead) and moves `rate_next_at` past them, in the claim's one
-- statement; the relay starts each attempt at its slot. Deliveries the limit holds back stay
-- due and unclaimed: they spend no rung of the retry ladder.

alter table outbox.endpoints
    add column headers jsonb not null default '{}',
    add column rate_limit integer,
    add column rate_next_at timestamptz,
    add constraint endpoint_headers_object check (jsonb_typeof(headers) = 'object'),
    add constraint endpoint_rate_limit_range check (rate_limit between 1 and 10000);

-- Null when `headers` is a set of custom headers the relay may send, else why not: at most 20,
-- names that are HTTP tokens of at most 100 characters and none the outbox or HTTP sets,
-- distinct whatever their case, values of at most 4,096 printable ASCII characters without
-- spaces at either end, 8,192 characters in all. outbox.custom_headers holds the same rule in
-- the same words. A value is never quoted: it may be a credential.
create function outbox.headers_problem(headers jsonb) returns text
language plpgsql immutable parallel safe as $$
declare
    name text;
    value jsonb;
    seen text[] := '{}';
    total integer := 0;
begin
    if headers is null or jsonb_typeof(headers) <> 'object' then
        return 'headers must be a JSON object of name: value';
    end if;
    if (select count(*) from jsonb_object_keys(headers)) > 20 then
        return 'at most 20 headers per endpoint';
    end if;
    for name, value in select * from jsonb_each(headers) loop
        if name !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]{1,100}$' then
            return format('header name %s is not an HTTP token (letters, digits and '
                          '!#$%%&''*+-.^_`|~, 1 to 100 characters)',
                          outbox.quoted(outbox.printable(outbox.clipped(name, 60))));
        end if;
        if lower(name) in ('host', 'content-length', 'content-type', 'content-encoding',
                           'transfer-encoding', 'connection', 'keep-alive', 'te', 'trailer',
                           'upgrade', 'expect', 'user-agent')
           or lower(name) ~ '^(x-stover-|webhook-|proxy-)' then
            return format('header %s is set by the outbox or by HTTP itself and cannot be '
                          'replaced (nor any X-Stover-*, webhook-* or Proxy-* header)',
                          outbox.quoted(name));
        end if;
        if lower(name) = any (seen) then
            return format('header %s is given twice (header names ignore case)',
                          outbox.quoted(name));
        end if;
        seen := seen || lower(name);
        if jsonb_typeof(value) <> 'string' then
            return format('the value of header %s must be a string', outbox.quoted(name));
        end if;
        if length(value #>> '{}') > 4096 or (value #>> '{}') !~ '^([!-~]([ -~]*[!-~])?)?$' then
            return format('the value of header %s must be at most 4096 printable ASCII '
                          'characters, without control characters or spaces at either end',
                          outbox.quoted(name));
        end if;
        total := total + length(name) + length(value #>> '{}');
    end loop;
    if total > 8192 then
        return 'headers take more than 8192 characters in all';
    end if;
    return null;
end
$$;

-- Headers checked when written (a relay recording its claims never rewrites them), and the
-- row's updated_at kept, as outbox.check_endpoint does for the other columns.
create function outbox.check_endpoint_options() returns trigger
language plpgsql as $$
declare
    problem text;
begin
    if tg_op = 'INSERT' or new.headers is distinct from old.headers then
        problem := outbox.headers_problem(new.headers);
        if problem is not null then
            raise exception 'endpoint headers are refused: %', problem
                using errcode = 'check_violation';
        end if;
    end if;
    if tg_op = 'UPDATE' and (new.headers is distinct from old.headers
                             or new.rate_limit is distinct from old.rate_limit) then
        new.updated_at := now();
    end if;
    return new;
end
$$;

create trigger endpoints_check_options
    before insert or update of headers, rate_limit on outbox.endpoints
    for each row execute function outbox.check_endpoint_options();

-- Roles: the relay's claims move the next allowed start; an account's own role sets its own
-- endpoints' headers and limit (row-level security keeps it to them).
do $$
begin
    if exists (select from pg_roles where rolname = 'outbox_relay') then
        grant update (rate_next_at) on outbox.endpoints to outbox_relay;
    end if;
    if exists (select from pg_roles where rolname = 'outbox_account') then
        grant update (headers, rate_limit) on outbox.endpoints to outbox_account;
    end if;
end
$$;
