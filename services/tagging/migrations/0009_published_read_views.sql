-- The published read-only views: the one contract through which another service (audience) reads
-- tagging's data. They live in their own schema, `tagging_read`, so a reader is granted that schema
-- alone and the contract can be served from a read replica; tagging's tables may change shape as
-- long as these views keep their columns and meaning.
--
-- Every view is `security_invoker`: it is read with the caller's rights, so the row-level security
-- of the tables below (`tenant_id = current_setting('memberops.tenant_id')`) still applies and a
-- tenant sees only its own rows through them. Contact data (phone, e-mail) is not published.
CREATE SCHEMA IF NOT EXISTS tagging_read;

-- Members: profile facts and attributes.
CREATE VIEW tagging_read.members WITH (security_invoker = true) AS
SELECT tenant_id, member_id, gender, birthday, city, city_tier, register_time, register_channel,
       level, attributes, create_time, update_time
FROM tagging.members;

-- Orders with what was refunded of them: `net_amount_minor` is the amount paid minus refunds.
CREATE VIEW tagging_read.orders WITH (security_invoker = true) AS
SELECT tenant_id, order_id, member_id, paid_time, amount_minor, refunded_amount_minor,
       amount_minor - refunded_amount_minor AS net_amount_minor, store, payment_method
FROM tagging.orders;

-- Order lines (member and paid time repeated from the order); `net_quantity` is net of returns.
CREATE VIEW tagging_read.order_lines WITH (security_invoker = true) AS
SELECT tenant_id, order_id, line_id, member_id, paid_time, sku, category, brand, quantity,
       unit_price_minor, refunded_quantity, quantity - refunded_quantity AS net_quantity
FROM tagging.order_lines;

-- Behaviour events; `kind` is the number of memberops.tagging.v1.EventKind.
CREATE VIEW tagging_read.events WITH (security_invoker = true) AS
SELECT tenant_id, event_id, member_id, kind, occur_time, sku, category, brand, channel
FROM tagging.events;

-- The tags members hold now (one row per member and value; history stays with tagging).
CREATE VIEW tagging_read.current_member_tags WITH (security_invoker = true) AS
SELECT tenant_id, member_id, dimension, value, definition_version, source, valid_from
FROM tagging.member_tags
WHERE valid_to IS NULL;

-- The catalog's dimensions at their current version: `state` 1 active, 2 retired; `kind` and
-- `cardinality` as in memberops.tagging.v1.TagKind / Cardinality; `tag_values` the values the
-- definition lists, empty when they come from the data (e.g. categories bought).
CREATE VIEW tagging_read.tag_dimensions WITH (security_invoker = true) AS
SELECT d.tenant_id, d.dimension, d.current_version AS version, d.state,
       (v.body ->> 'kind')::smallint AS kind, (v.body ->> 'cardinality')::smallint AS cardinality,
       ARRAY(SELECT item ->> 'value' FROM jsonb_array_elements(v.body -> 'values') AS item) AS tag_values
FROM tagging.tag_definitions d
JOIN tagging.tag_definition_versions v
  ON v.tenant_id = d.tenant_id AND v.dimension = d.dimension AND v.version = d.current_version;

GRANT USAGE ON SCHEMA tagging_read TO memberops_app;
GRANT SELECT ON ALL TABLES IN SCHEMA tagging_read TO memberops_app;
