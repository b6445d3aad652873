-- A counter of the statements that changed the cached tables, for the listeners to tell whether
-- every change was heard: each statement on organizations, leads or conversations (and each
-- TRUNCATE) takes the next value. A listener's heartbeat carries the counter's value; a
-- listener that connects after changes no live instance heard (every instance was down, or
-- none could reach Redis) invalidates everything instead of trusting Redis.

create sequence if not exists hotline_change_seq;

create or replace function hotline_change_seq_value() returns bigint
language sql volatile as $$
    select case when is_called then last_value else 0 end from hotline_change_seq
$$;

create or replace function hotline_count_change() returns trigger
language plpgsql as $$
begin
    perform nextval('hotline_change_seq');
    return null;
end
$$;

-- Other roles write these tables too (the Supabase dashboard, other services): the trigger runs
-- with their privileges, and a listener may connect as yet another role. Advancing or reading
-- the counter must never fail their statements.
grant usage, select on sequence hotline_change_seq to public;

create trigger organizations_change_count after insert or update or delete or truncate
    on organizations for each statement execute function hotline_count_change();
create trigger leads_change_count after insert or update or delete or truncate
    on leads for each statement execute function hotline_count_change();
create trigger conversations_change_count after insert or update or delete or truncate
    on conversations for each statement execute function hotline_count_change();
