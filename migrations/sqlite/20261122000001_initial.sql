-- hotline: the initial schema, SQLite mirror of migrations/postgres.
--
-- uuids are TEXT (lower-case, hyphenated), timestamps TEXT in RFC 3339 with milliseconds and `Z`
-- (`2026-11-22T10:00:00.000Z`), JSON is TEXT. Every id and timestamp has a default, so a plain
-- INSERT with only the required columns works. Readers also accept `YYYY-MM-DD HH:MM:SS`
-- (CURRENT_TIMESTAMP) and order by julianday(), which reads both forms.
-- Foreign keys are enforced because the store turns PRAGMA foreign_keys on for every connection.

create table organizations (
    id                text not null primary key
                      default (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                          || substr(hex(randomblob(2)), 2) || '-'
                          || substr('89ab', 1 + (random() & 3), 1)
                          || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    name              text not null,
    phone_number      text not null,
    timezone          text not null default 'UTC',
    greeting_template text,
    created_at        text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint organizations_id_check check (length(id) = 36 and id = lower(id)),
    constraint organizations_phone_number_key unique (phone_number),
    constraint organizations_name_check check (trim(name, ' ') <> ''),
    constraint organizations_phone_number_check check (
        phone_number glob '+[1-9]*'
        and length(phone_number) between 3 and 16
        and substr(phone_number, 2) not glob '*[^0-9]*')
);

create table leads (
    id              text not null primary key
                    default (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                        || substr(hex(randomblob(2)), 2) || '-'
                        || substr('89ab', 1 + (random() & 3), 1)
                        || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    -- No cascade: deleting an organization that still has leads must fail.
    organization_id text not null
                    constraint leads_organization_id_fkey references organizations (id),
    phone_number    text not null,
    customer_name   text,
    email           text,
    status          text not null default 'new',
    notes           text,
    metadata        text not null default '{}',
    created_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint leads_id_check check (length(id) = 36 and id = lower(id)),
    -- Also serves lookups by (organization, phone) and the foreign key above.
    constraint leads_organization_id_phone_number_key unique (organization_id, phone_number),
    constraint leads_status_check
        check (status in ('new', 'contacted', 'qualified', 'customer', 'lost')),
    constraint leads_phone_number_check check (
        phone_number glob '+[1-9]*'
        and length(phone_number) between 3 and 16
        and substr(phone_number, 2) not glob '*[^0-9]*'),
    constraint leads_metadata_check check (json_valid(metadata))
);

create table conversations (
    id              text not null primary key
                    default (lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
                        || substr(hex(randomblob(2)), 2) || '-'
                        || substr('89ab', 1 + (random() & 3), 1)
                        || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    lead_id         text not null
                    constraint conversations_lead_id_fkey references leads (id) on delete cascade,
    organization_id text not null
                    constraint conversations_organization_id_fkey references organizations (id),
    channel         text not null,
    external_id     text,
    summary         text,
    transcript      text,
    started_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ended_at        text,
    created_at      text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    constraint conversations_id_check check (length(id) = 36 and id = lower(id)),
    -- The ElevenLabs conversation_id: recording a call is idempotent on it.
    constraint conversations_external_id_key unique (external_id),
    constraint conversations_channel_check check (channel in ('voice', 'sms', 'chat', 'email')),
    constraint conversations_transcript_check check (transcript is null or json_valid(transcript))
);

-- A lead's history, newest first, with a stable tie-break. julianday() orders both timestamp
-- forms correctly; the queries use the same expression so that the index serves them.
create index conversations_lead_id_started_at_idx
    on conversations (lead_id, julianday(started_at) desc, id desc);
-- Recently active leads (cache warming).
create index conversations_started_at_idx on conversations (julianday(started_at) desc);
create index leads_updated_at_idx on leads (julianday(updated_at) desc);
-- The foreign keys: deleting an organization checks conversations and leads by organization.
create index conversations_organization_id_idx on conversations (organization_id);

-- updated_at follows every UPDATE, also those made around the service. A writer that sets
-- updated_at explicitly keeps its value. (Recursive triggers are off: the inner UPDATE does not
-- fire the trigger again.)
create trigger organizations_set_updated_at
    after update on organizations
    for each row when new.updated_at is old.updated_at
begin
    update organizations set updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    where id = new.id;
end;

create trigger leads_set_updated_at
    after update on leads
    for each row when new.updated_at is old.updated_at
begin
    update leads set updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    where id = new.id;
end;
