-- hotline: the initial schema (contract.md, "Data").
--
-- Other writers (the Supabase dashboard, other services, SQL scripts) write these tables
-- directly, so every id and timestamp has a default and a plain INSERT with only the required
-- columns works. Constraint names are explicit: the store maps them to its errors.

create table organizations (
    id                uuid        not null default gen_random_uuid(),
    name              text        not null,
    phone_number      text        not null,
    timezone          text        not null default 'UTC',
    greeting_template text,
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    constraint organizations_pkey primary key (id),
    constraint organizations_phone_number_key unique (phone_number),
    constraint organizations_name_check check (btrim(name) <> ''),
    constraint organizations_phone_number_check check (phone_number ~ '^\+[1-9][0-9]{1,14}$')
);

create table leads (
    id              uuid        not null default gen_random_uuid(),
    organization_id uuid        not null,
    phone_number    text        not null,
    customer_name   text,
    email           text,
    status          text        not null default 'new',
    notes           text,
    metadata        jsonb       not null default '{}'::jsonb,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint leads_pkey primary key (id),
    -- No cascade: deleting an organization that still has leads must fail.
    constraint leads_organization_id_fkey foreign key (organization_id)
        references organizations (id),
    -- Also serves lookups by (organization, phone) and the foreign key above.
    constraint leads_organization_id_phone_number_key unique (organization_id, phone_number),
    constraint leads_status_check
        check (status in ('new', 'contacted', 'qualified', 'customer', 'lost')),
    constraint leads_phone_number_check check (phone_number ~ '^\+[1-9][0-9]{1,14}$')
);

create table conversations (
    id              uuid        not null default gen_random_uuid(),
    lead_id         uuid        not null,
    organization_id uuid        not null,
    channel         text        not null,
    external_id     text,
    summary         text,
    transcript      jsonb,
    started_at      timestamptz not null default now(),
    ended_at        timestamptz,
    created_at      timestamptz not null default now(),
    constraint conversations_pkey primary key (id),
    constraint conversations_lead_id_fkey foreign key (lead_id)
        references leads (id) on delete cascade,
    constraint conversations_organization_id_fkey foreign key (organization_id)
        references organizations (id),
    -- The ElevenLabs conversation_id: recording a call is idempotent on it.
    constraint conversations_external_id_key unique (external_id),
    constraint conversations_channel_check check (channel in ('voice', 'sms', 'chat', 'email'))
);

-- A lead's history, newest first, with a stable tie-break.
create index conversations_lead_id_started_at_idx
    on conversations (lead_id, started_at desc, id desc);
-- Recently active leads (cache warming).
create index conversations_started_at_idx on conversations (started_at desc);
create index leads_updated_at_idx on leads (updated_at desc);
-- The foreign key from conversations to organizations (checked when an organization is deleted).
create index conversations_organization_id_idx on conversations (organization_id);

-- updated_at follows every UPDATE, also those made around the service. A writer that sets
-- updated_at explicitly keeps its value.
create function hotline_set_updated_at() returns trigger
language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end;
$$;

create trigger organizations_set_updated_at
    before update on organizations
    for each row execute function hotline_set_updated_at();

create trigger leads_set_updated_at
    before update on leads
    for each row execute function hotline_set_updated_at();
