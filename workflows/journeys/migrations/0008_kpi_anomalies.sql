-- The daily KPI anomaly check (workflows/anomalies/): the days whose KPI left its same-weekday
-- history, one row per tenant, KPI and day (a re-run of the check rewrites its days' rows), read
-- by ListAnomalies and the memberops_kpi_anomalies metric. And the message log by the time its
-- rows were written, which GetDailySends and the check's send failure rate read by day: the
-- column never changes, so the rows' outcome updates stay HOT (migration 0003).

CREATE TABLE kpi_anomalies (
    tenant_id    text             NOT NULL,
    kpi          text             NOT NULL
                 CHECK (kpi IN ('orders', 'gmv', 'new_members', 'send_failure_rate', 'sign_ins')),
    day          date             NOT NULL,
    value        double precision NOT NULL,
    baseline     double precision NOT NULL,
    robust_z     double precision NOT NULL,
    direction    text             NOT NULL CHECK (direction IN ('high', 'low')),
    history_days integer          NOT NULL CHECK (history_days > 0),
    detect_time  timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, kpi, day)
);
CREATE INDEX kpi_anomalies_day ON kpi_anomalies (tenant_id, day, kpi);

CREATE INDEX messages_create_time ON messages (tenant_id, create_time);

ALTER TABLE kpi_anomalies ENABLE ROW LEVEL SECURITY;
ALTER TABLE kpi_anomalies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kpi_anomalies
    USING (tenant_id = current_setting('memberops.tenant_id'))
    WITH CHECK (tenant_id = current_setting('memberops.tenant_id'));
