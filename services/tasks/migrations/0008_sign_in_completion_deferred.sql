-- A sign-in row names the completion that paid it. Checked at commit instead of at once, the row
-- can be written before the completion, so the completion (which takes the task's budget row) is
-- the last write of a sign-in, and every sign-in of the task holds that row for one round trip
-- less.
ALTER TABLE sign_ins ALTER CONSTRAINT sign_ins_tenant_id_completion_id_fkey DEFERRABLE INITIALLY DEFERRED;
