-- Each change notification names the session that made it (`"a"`, its application_name), so
-- that an instance can skip the notifications of its own writes: it invalidated those itself,
-- before it answered. Writes made around hotline (other application names) are applied by
-- every instance as before. Only the payloads change; the triggers stay.

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
        perform pg_notify('hotline_invalidate', json_build_object('a', current_setting('application_name', true), 't', 'bulk', 'table', 'organizations')::text);
    elsif tg_op = 'INSERT' then
        perform pg_notify('hotline_invalidate', json_build_object(
            'a', current_setting('application_name', true), 't', 'organization', 'id', r.id, 'phone', r.phone_number)::text)
        from new_rows r;
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            'a', current_setting('application_name', true), 't', 'organization', 'id', r.id, 'phone', r.phone_number,
            'old_phone', o.phone_number)::text)
        from new_rows r join old_rows o on o.id = r.id;
    else
        perform pg_notify('hotline_invalidate', json_build_object(
            'a', current_setting('application_name', true), 't', 'organization', 'id', o.id, 'old_phone', o.phone_number)::text)
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
            'a', current_setting('application_name', true), 't', 'lead_rows', 'rows', json_agg(json_build_object(
                'id', id, 'org', organization_id, 'phone', phone_number)))::text)
        from (select o.*, (row_number() over ()) / 40 as chunk from old_rows o) c
        group by chunk;
        return null;
    end if;
    select count(*) into n from new_rows;
    if n > 20 then
        perform pg_notify('hotline_invalidate', json_build_object('a', current_setting('application_name', true), 't', 'bulk', 'table', 'leads')::text);
    elsif tg_op = 'INSERT' then
        perform pg_notify('hotline_invalidate', json_build_object(
            'a', current_setting('application_name', true), 't', 'lead', 'id', r.id, 'org', r.organization_id, 'phone', r.phone_number)::text)
        from new_rows r;
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object(
            'a', current_setting('application_name', true), 't', 'lead', 'id', r.id, 'org', r.organization_id, 'phone', r.phone_number,
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
            'a', current_setting('application_name', true), 't', 'conversation_leads', 'leads', json_agg(l))::text)
        from (select l, (row_number() over ()) / 100 as chunk
              from (select distinct lead_id as l from old_rows) d) c
        group by chunk;
        return null;
    end if;
    select count(distinct lead_id) into n from new_rows;
    if n > 20 then
        perform pg_notify('hotline_invalidate', json_build_object('a', current_setting('application_name', true), 't', 'bulk', 'table', 'conversations')::text);
    elsif tg_op = 'UPDATE' then
        perform pg_notify('hotline_invalidate', json_build_object('a', current_setting('application_name', true), 't', 'conversation', 'lead', l)::text)
        from (select lead_id as l from new_rows union select lead_id from old_rows) d;
    else
        perform pg_notify('hotline_invalidate', json_build_object('a', current_setting('application_name', true), 't', 'conversation', 'lead', l)::text)
        from (select distinct lead_id as l from new_rows) d;
    end if;
    return null;
end
$$;

create or replace function hotline_notify_truncate() returns trigger
language plpgsql as $$
begin
    perform pg_notify('hotline_invalidate',
        json_build_object('a', current_setting('application_name', true), 't', 'truncate', 'table', tg_table_name)::text);
    return null;
end
$$;
