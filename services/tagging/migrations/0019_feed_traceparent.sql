-- The trace context of the call that wrote each feed entry (W3C `traceparent`), so the journey a
-- first order starts is one trace with the order's call. NULL where the writer was not traced:
-- a nullable column without a default is added without rewriting the table.
ALTER TABLE tagging.feed ADD COLUMN traceparent text;
