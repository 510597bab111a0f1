"""The daily KPI anomaly check: a scheduled workflow per tenant that flags days whose KPI left its
same-weekday history (see `stats`), stored for ListAnomalies and the memberops_kpi_anomalies metric."""
