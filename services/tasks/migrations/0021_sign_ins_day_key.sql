-- A sign-in is looked up by its key (tenant, task, member, day): "signed in today?" and "yesterday's
-- streak" in tasks.sign_in (0019), the streak reads in signin_store. sign_ins_day (0012) led with
-- (tenant, day) for GetDailyKpis, and a planner whose statistics show no sign-ins for the day
-- (a new table, or today's date past the histogram) costs both indexes at one row and may take it:
-- it then filters every sign-in of the day for the task and member, a cost that grows all day
-- (1.2 ms at 12,000 sign-ins of the day, and SignIn fell from about 1,000 to 590 a second as the
-- day filled). With the task and the member in its key, either index is an exact probe; the
-- KPI read still scans it by day, index only.
DROP INDEX sign_ins_day;
CREATE INDEX sign_ins_day ON sign_ins (tenant_id, day, task_id, member_id);
