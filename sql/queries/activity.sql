-- The demo's stand-in for a busy Stover account: ordinary writes on the stover tables, each of
-- which the capture triggers turn into events. Nothing here knows about the outbox.

-- name: company_insert
insert into stover.companies (name, domain)
values (%(name)s::text, %(domain)s::text)
returning id;

-- name: company_rename
update stover.companies set name = %(name)s::text where id = %(id)s::bigint;

-- name: contact_insert
insert into stover.contacts (first_name, last_name, email, phone, company_id, custom_fields)
values (%(first_name)s::text, %(last_name)s::text, %(email)s::text, %(phone)s::text,
        %(company_id)s::bigint, %(custom_fields)s::jsonb)
returning id;

-- name: contact_update
-- A sales rep edits a contact: a new phone number and a re-scored lead.
update stover.contacts
set phone = %(phone)s::text,
    custom_fields = custom_fields || jsonb_build_object('lead_score', %(lead_score)s::integer)
where id = %(id)s::bigint;

-- name: contact_delete
delete from stover.contacts where id = %(id)s::bigint;

-- name: deal_insert
insert into stover.deals (name, amount, currency, stage, company_id, contact_id)
values (%(name)s::text, %(amount)s::numeric, %(currency)s::text, 'lead', %(company_id)s::bigint,
        %(contact_id)s::bigint)
returning id;

-- name: deal_stage_set
update stover.deals set stage = %(stage)s::text where id = %(id)s::bigint;

-- name: post_schedule
insert into stover.posts (network, content, status, scheduled_at)
values (%(network)s::text, %(content)s::text, 'scheduled',
        now() + make_interval(mins => %(in_minutes)s::integer))
returning id;

-- name: post_publish
update stover.posts set status = 'published', published_at = now() where id = %(id)s::bigint;

-- name: post_fail
update stover.posts set status = 'failed', error = %(error)s::text where id = %(id)s::bigint;

-- name: attribution_insert
insert into stover.attribution_events (contact_id, source, medium, campaign, url)
values (%(contact_id)s::bigint, %(source)s::text, %(medium)s::text, %(campaign)s::text,
        %(url)s::text);
