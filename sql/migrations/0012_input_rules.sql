-- One rule, checked where input enters: what the tables accept, the relay can deliver. Rows
-- written straight into the outbox's tables meet the checks the CLI's input meets.

-- ---------------------------------------------------------------------------------------------
-- The endpoint URL rule. Null when `url` is acceptable, else a one-line reason. The relay's
-- Python (outbox.netguard.check_url) holds the same rule, step for step and word for word, and a
-- property test compares the two on generated URLs, so a URL the table accepts is a URL the
-- relay sends to, and the other way round. Reasons never quote the URL: it may carry a token.
--
-- The rule: at most 2,048 characters of RFC 3986's repertoire (letters, digits, -._~ and the
-- delimiters :/?#[]@!$&'()*+,;=, with % only in %XX escapes, brackets only around an IPv6 host):
-- an international name is written in its xn-- form and any other character percent-encoded, so
-- the text stored is the text sent. Scheme http or https (any case), then //, a host and an
-- optional port from 1 to 65535, and no userinfo. The host is an IPv6 literal in brackets
-- (without a zone), or a name of labels of letters, digits, _ and - (at most 63 characters
-- each, 253 in all, one trailing dot allowed) whose last label is not a number unless the whole
-- name is a canonical dotted-quad IPv4 address (0x7f.1 and 2130706433 are other spellings of
-- 127.0.0.1 that resolvers read as such).
create function outbox.url_problem(url text) returns text
language plpgsql immutable parallel safe as $$
declare
    -- RFC 3986's IPv6address: eight groups of 1 to 4 hex digits, or fewer around one "::"; the
    -- last two groups may be written as a dotted-quad IPv4 address.
    h16 constant text := '[0-9a-f]{1,4}';
    octet constant text := '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
    ipv4 constant text := format('%1$s([.]%1$s){3}', octet);
    ls32 constant text := format('(%1$s:%1$s|%2$s)', h16, ipv4);
    ipv6 constant text := format(
        '^((%1$s:){6}%2$s|::(%1$s:){5}%2$s|(%1$s)?::(%1$s:){4}%2$s'
        '|((%1$s:){0,1}%1$s)?::(%1$s:){3}%2$s|((%1$s:){0,2}%1$s)?::(%1$s:){2}%2$s'
        '|((%1$s:){0,3}%1$s)?::%1$s:%2$s|((%1$s:){0,4}%1$s)?::%2$s'
        '|((%1$s:){0,5}%1$s)?::%1$s|((%1$s:){0,6}%1$s)?::)$', h16, ls32);
    good integer;
    scheme text;
    after text;
    authority text;
    rest text;
    host text;
    port text;
    bracketed boolean;
    name text;
begin
    if url is null then
        return 'URL is missing';
    end if;
    if length(url) > 2048 then
        return 'URL is longer than 2048 characters';
    end if;
    -- The length of the longest acceptable prefix: where the first bad character stands.
    good := length(substring(url from '^([][A-Za-z0-9._~:/?#@!$&''()*+,;=%-]*)'));
    if good < length(url) then
        return outbox.url_character_problem(url, good + 1);
    end if;
    good := length(substring(url from '^((?:[^%]|%[0-9A-Fa-f]{2})*)'));
    if good < length(url) then
        return format('URL has a %% at position %s that does not begin a %%XX escape', good + 1);
    end if;
    scheme := lower(substring(url from '^([A-Za-z][A-Za-z0-9+.-]*):'));
    if scheme is null then
        return 'not an absolute http(s) URL';
    end if;
    if scheme not in ('http', 'https') then
        return format('not an absolute http(s) URL (scheme %s)',
                      outbox.quoted(outbox.clipped(scheme, 20)));
    end if;

    -- The authority ends where yarl, the relay's parser, ends it: at the first /, ? or #.
    after := substr(url, length(scheme) + 2);
    if left(after, 2) <> '//' then
        return 'missing host';
    end if;
    authority := substring(substr(after, 3) from '^([^/?#]*)');
    rest := substr(after, 3 + length(authority));
    if authority = '' then
        return 'missing host';
    end if;
    if strpos(authority, '@') > 0 then
        return 'userinfo (user:password@) is not allowed in the URL; send credentials another way';
    end if;
    bracketed := left(authority, 1) = '[';
    if bracketed then
        if strpos(authority, ']') = 0
           or substr(authority, strpos(authority, ']') + 1, 1) not in ('', ':') then
            return 'invalid IPv6 host: write it as [address] or [address]:port';
        end if;
        host := substr(authority, 2, strpos(authority, ']') - 2);
        port := substr(authority, strpos(authority, ']') + 1);
    else
        host := split_part(authority, ':', 1);
        port := substr(authority, length(host) + 1);
    end if;
    -- `port` is '' (none) or ':' and what follows.
    if port <> '' then
        port := substr(port, 2);
        if port !~ '^[0-9]{1,5}$' then
            return 'port must be a number from 1 to 65535';
        end if;
        if port::integer not between 1 and 65535 then
            return 'port must be a number from 1 to 65535';
        end if;
    end if;
    good := length(substring(rest from '^([^][]*)'));
    if good < length(rest) then
        return outbox.url_character_problem(url, length(url) - length(rest) + good + 1);
    end if;

    if bracketed then
        if host !~* ipv6 then
            return format('invalid IPv6 host %s', outbox.quoted(outbox.clipped(host, 100)));
        end if;
        return null;
    end if;
    if host = '' then
        return 'missing host';
    end if;
    host := lower(host);
    if host !~ '^[a-z0-9_-]+([.][a-z0-9_-]+)*[.]?$' then
        return format('invalid host %s', outbox.quoted(outbox.clipped(host, 100)));
    end if;
    name := case when right(host, 1) = '.' then left(host, -1) else host end;
    if length(name) > 253 then
        return 'host name is longer than 253 characters';
    end if;
    if name ~ '[^.]{64}' then
        return 'host name has a label longer than 63 characters';
    end if;
    if substring(name from '([^.]*)$') ~ '^(0x[0-9a-f]*|[0-9]+)$' and host !~ ('^' || ipv4 || '$') then
        return format('host %s is not a canonical IPv4 address',
                      outbox.quoted(outbox.clipped(host, 100)));
    end if;
    return null;
end
$$;

-- The reason for a character a URL cannot hold, named by its code point and position.
create function outbox.url_character_problem(url text, at integer) returns text
language sql immutable parallel safe as $$
    select format('URL has U+%s at position %s, which a URL cannot hold: percent-encode it',
                  lpad(h, greatest(length(h), 4), '0'), at)
    from (select upper(to_hex(ascii(substr(url, at, 1))))) c (h)
$$;

-- Text quoted as a literal, for reasons that name a value.
create function outbox.quoted(value text) returns text
language sql immutable parallel safe
return '''' || replace(value, '''', '''''') || '''';

-- `value` with each character other than printable ASCII shown as ?, so a reason stays one line.
create function outbox.printable(value text) returns text
language sql immutable parallel safe
return regexp_replace(value, '[^ -~]', '?', 'g');

-- At most `size` characters of `value`, an ellipsis marking a cut.
create function outbox.clipped(value text, size integer) returns text
language sql immutable parallel safe
return case when length(value) <= size then value else left(value, size) || '…' end;

-- ---------------------------------------------------------------------------------------------
-- Endpoints. The check refuses what the CLI refuses, with the same words: an id with spaces,
-- controls or other than ASCII (the CLI could not name it); a URL the rule above refuses;
-- event_types that are not a plain list of known types or patterns (an array of arrays was
-- taken, and then `outbox endpoints list` failed for every endpoint); a description over 1,000
-- characters or holding control characters (newlines and escape codes included). Each
-- value is checked when it is written, not when another column of its row changes: a relay
-- disabling an endpoint, or an operator renaming it, is never refused for a URL written under
-- an older rule.
create or replace function outbox.check_endpoint() returns trigger
language plpgsql as $$
declare
    pattern text;
    problem text;
begin
    -- What the CLI takes as an endpoint id (the default ep_… always is).
    if (tg_op = 'INSERT' or new.id is distinct from old.id)
       and (new.id !~ '^[!-~]+$' or length(new.id) > 256) then
        raise exception 'endpoint id % must be 1 to 256 printable ASCII characters without spaces',
                outbox.quoted(outbox.printable(outbox.clipped(new.id, 60)))
            using errcode = 'check_violation';
    end if;
    if tg_op = 'INSERT' or new.url is distinct from old.url then
        problem := outbox.url_problem(new.url);
        if problem is not null then
            raise exception 'endpoint url is refused: %', problem
                using errcode = 'check_violation',
                      hint = 'Use a URL such as https://example.com/webhooks.';
        end if;
    end if;
    if tg_op = 'INSERT' or new.event_types is distinct from old.event_types then
        if new.event_types is null or cardinality(new.event_types) = 0 then
            raise exception 'endpoint must subscribe to at least one event type'
                using errcode = 'check_violation',
                      hint = 'Use ''*'' for every type, ''deal.*'' for a prefix, or exact types.';
        end if;
        if array_ndims(new.event_types) <> 1 or array_lower(new.event_types, 1) <> 1 then
            raise exception 'event_types must be a plain list of types, not an array of arrays '
                            'or one with bounds of its own'
                using errcode = 'check_violation',
                      hint = 'Write it as ''{deal.*,contact.created}''.';
        end if;
        foreach pattern in array new.event_types loop
            if pattern is null or not exists (
                select 1 from outbox.event_types t where outbox.type_matches(array[pattern], t.name)
            ) then
                raise exception 'event type % is not known and matches no known type',
                        coalesce(outbox.quoted(outbox.printable(outbox.clipped(pattern, 60))),
                                 'NULL')
                    using errcode = 'check_violation',
                          hint = 'List the types with: select name from outbox.event_types;';
            end if;
        end loop;
    end if;
    if tg_op = 'INSERT' or new.description is distinct from old.description then
        problem := outbox.description_problem(new.description);
        if problem is not null then
            raise exception 'endpoint description is refused: %', problem
                using errcode = 'check_violation';
        end if;
    end if;
    if tg_op = 'UPDATE' then
        new.updated_at := now();
    end if;
    return new;
end
$$;

-- Null when `description` is a note the CLI would take, else why not (outbox.commands'
-- check_description holds the same rule).
create function outbox.description_problem(description text) returns text
language sql immutable parallel safe as $$
    select case
        when length(description) > 1000 then 'longer than 1000 characters'
        when description ~ '[\u0001-\u001f\u007f-\u009f]' then
            'it holds a control character (a line break, tab or escape code)'
    end
$$;

-- Endpoints written before this migration with an array of arrays: the same patterns as a plain
-- list (what fan-out matched them as; a NULL matched nothing), written while the check is off,
-- so nothing else of the row is judged or touched.
drop trigger endpoints_check on outbox.endpoints;
update outbox.endpoints
set event_types = array(select p from unnest(event_types) p where p is not null)
where array_ndims(event_types) > 1 or array_lower(event_types, 1) <> 1
   or array_position(event_types, null) is not null;
create trigger endpoints_check
    before insert or update of id, url, event_types, description on outbox.endpoints
    for each row execute function outbox.check_endpoint();
-- The shape holds even for rows written with triggers off (session_replication_role = replica),
-- so listings can rely on a list of strings.
alter table outbox.endpoints add constraint endpoint_event_types_list
    check (array_ndims(event_types) = 1 and array_lower(event_types, 1) = 1
           and array_position(event_types, null) is null);

-- ---------------------------------------------------------------------------------------------
-- Events written straight into outbox.events meet what outbox.emit() requires of data: data,
-- and previous_attributes when present, are JSON objects (the payload's "data" is the row).
-- Domains, not table constraints: a domain's check is parsed once per session, a table's on
-- every statement that writes the table (0005). NOT VALID: events are never updated, and rows
-- written before keep their values; changing the columns' types to the bare domain first
-- rewrites and scans nothing.
--
-- The type's shape (entity.action, as emit() checks it) is not checked here: a regular
-- expression on every captured row measured 0.5 us a row, some 5% of a 100-row statement's
-- capture, and the triggers and emit() only ever write well-formed types. The relay refuses a
-- malformed type written by hand at its first attempt, with the reason (outbox.relay.attempts).
create domain outbox.json_object as jsonb;
alter table outbox.events
    alter column data type outbox.json_object,
    alter column previous_attributes type outbox.json_object;
alter domain outbox.json_object add constraint json_object_only
    check (jsonb_typeof(value) = 'object') not valid;

-- ---------------------------------------------------------------------------------------------
-- Moments the relay and the CLI can read. Python's datetime holds the years 1 to 9999; a day's
-- margin at each end keeps every session time zone inside them. 'infinity' was taken: an event
-- created at 'infinity' stopped every relay that claimed its delivery, and a pending delivery
-- due at 'infinity' stopped every idle relay (its next wake-up could not be computed). The
-- columns any role but the owner writes: events.created_at (writers), an endpoint's times and a
-- delivery's next attempt and delivery time (a confined account redelivers its own).
create domain outbox.moment as timestamptz;
-- Rows written before: their moments brought inside the range, in the same order (a delivery
-- parked at 'infinity' stays last, one at '-infinity' stays first). Events are never updated
-- and keep theirs (NOT VALID below).
-- (greatest() and least() pass over a NULL, so NULL, "not yet", is kept apart.)
update outbox.deliveries
set next_attempt_at = case when next_attempt_at is not null then
        least(greatest(next_attempt_at, '0001-01-02 00:00:00+00'), '9999-12-30 00:00:00+00') end,
    delivered_at = case when delivered_at is not null then
        least(greatest(delivered_at, '0001-01-02 00:00:00+00'), '9999-12-30 00:00:00+00') end
where next_attempt_at not between '0001-01-02 00:00:00+00' and '9999-12-30 00:00:00+00'
   or delivered_at not between '0001-01-02 00:00:00+00' and '9999-12-30 00:00:00+00';
update outbox.endpoints
set created_at = least(greatest(created_at, '0001-01-02 00:00:00+00'), '9999-12-30 00:00:00+00'),
    updated_at = least(greatest(updated_at, '0001-01-02 00:00:00+00'), '9999-12-30 00:00:00+00')
where created_at not between '0001-01-02 00:00:00+00' and '9999-12-30 00:00:00+00'
   or updated_at not between '0001-01-02 00:00:00+00' and '9999-12-30 00:00:00+00';
alter table outbox.events alter column created_at type outbox.moment;
alter table outbox.endpoints
    alter column created_at type outbox.moment,
    alter column updated_at type outbox.moment;
-- Rebuilds deliveries_pending_idx (an index with a predicate is not carried over a type change):
-- about a second per million deliveries, during which relays wait.
alter table outbox.deliveries
    alter column next_attempt_at type outbox.moment,
    alter column delivered_at type outbox.moment;
alter domain outbox.moment add constraint moment_range
    check (value >= '0001-01-02 00:00:00+00' and value < '9999-12-31 00:00:00+00') not valid;
