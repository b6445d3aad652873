-- Writes made around hotline (the Supabase dashboard, SQL scripts, other services) must reach
-- every instance's cache: each statement on these tables notifies `hotline_invalidate` with the
-- rows it changed (ids and phone numbers, nothing else), or, past 20 rows, one `bulk` message
-- naming the table. Every instance LISTENs and invalidates what the rows touch. Deletes of leads
-- and conversations are never summarised: their rows go out in chunks of 40 (under NOTIFY's
-- 8000-byte payload limit), because each deleted lead's data must leave Redis at once. TRUNCATE
-- sends one `truncate` message.

create or replace function hotline_notify_organizations() returns trigger
language plpgsql as $$
declare
    n bigint;
begin
    if tg_op = 'DELETE' then
        select count(*) into n from old_rows;
    else
        select count(*) into n from new_rows;
    end if;
    if n > 20 then
        perform pg_notify('hotline_invalidate', '{"t":"bulk","table":"organizations"}');
    elsif tg_op = 'INSERT' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'organization', 'id', r.id, 'phone', r.phone_number)::text)
        from new_rows r;
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'organization', 'id', r.id, 'phone', r.phone_number,
            'old_phone', o.phone_number)::text)
        from new_rows r join old_rows o on o.id = r.id;
    else
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'organization', 'id', o.id, 'old_phone', o.phone_number)::text)
        from old_rows o;
    end if;
    return null;
end
$$;

create or replace function hotline_notify_leads() returns trigger
language plpgsql as $$
declare
    n bigint;
begin
    if tg_op = 'DELETE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'lead_rows', 'rows', json_agg(json_build_object(
                'id', id, 'org', organization_id, 'phone', phone_number)))::text)
        from (select o.*, (row_number() over ()) / 40 as chunk from old_rows o) c
        group by chunk;
        return null;
    end if;
    select count(*) into n from new_rows;
    if n > 20 then
        perform pg_notify('hotline_invalidate', '{"t":"bulk","table":"leads"}');
    elsif tg_op = 'INSERT' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'lead', 'id', r.id, 'org', r.organization_id, 'phone', r.phone_number)::text)
        from new_rows r;
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'lead', 'id', r.id, 'org', r.organization_id, 'phone', r.phone_number,
            'old_org', o.organization_id, 'old_phone', o.phone_number)::text)
        from new_rows r join old_rows o on o.id = r.id;
    end if;
    return null;
end
$$;

create or replace function hotline_notify_conversations() returns trigger
language plpgsql as $$
declare
    n bigint;
begin
    if tg_op = 'DELETE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            't', 'conversation_leads', 'leads', json_agg(l))::text)
        from (select l, (row_number() over ()) / 100 as chunk
              from (select distinct lead_id as l from old_rows) d) c
        group by chunk;
        return null;
    end if;
    select count(distinct lead_id) into n from new_rows;
    if n > 20 then
        perform pg_notify('hotline_invalidate', '{"t":"bulk","table":"conversations"}');
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object('t', 'conversation', 'lead', l)::text)
        from (select lead_id as l from new_rows union select lead_id from old_rows) d;
    else
        perform pg_notify('hotline_invalidate', json_build_object('t', 'conversation', 'lead', l)::text)
        from (select distinct lead_id as l from new_rows) d;
    end if;
    return null;
end
$$;

create trigger organizations_notify_insert after insert on organizations
    referencing new table as new_rows for each statement execute function hotline_notify_organizations();
create trigger organizations_notify_update after update on organizations
    referencing old table as old_rows new table as new_rows for each statement execute function hotline_notify_organizations();
create trigger organizations_notify_delete after delete on organizations
    referencing old table as old_rows for each statement execute function hotline_notify_organizations();

create trigger leads_notify_insert after insert on leads
    referencing new table as new_rows for each statement execute function hotline_notify_leads();
create trigger leads_notify_update after update on leads
    referencing old table as old_rows new table as new_rows for each statement execute function hotline_notify_leads();
create trigger leads_notify_delete after delete on leads
    referencing old table as old_rows for each statement execute function hotline_notify_leads();

create trigger conversations_notify_insert after insert on conversations
    referencing new table as new_rows for each statement execute function hotline_notify_conversations();
create trigger conversations_notify_update after update on conversations
    referencing old table as old_rows new table as new_rows for each statement execute function hotline_notify_conversations();
create trigger conversations_notify_delete after delete on conversations
    referencing old table as old_rows for each statement execute function hotline_notify_conversations();

create or replace function hotline_notify_truncate() returns trigger
language plpgsql as $$
begin
    perform pg_notify('hotline_invalidate',
        json_build_object('t', 'truncate', 'table', tg_table_name)::text);
    return null;
end
$$;

create trigger organizations_notify_truncate after truncate on organizations
    for each statement execute function hotline_notify_truncate();
create trigger leads_notify_truncate after truncate on leads
    for each statement execute function hotline_notify_truncate();
create trigger conversations_notify_truncate after truncate on conversations
    for each statement execute function hotline_notify_truncate();
