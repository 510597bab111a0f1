#!/bin/sh
# Temporal's two databases and their schemas in PostgreSQL, set up the way Temporal's own compose
# files do it: temporal-sql-tool from the admin-tools image, run once before the server starts.
# Safe to run again on every `up`: setup-schema leaves a schema that is past 0.0 alone and
# update-schema applies only the versions a database lacks.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
SCHEMAS=/etc/temporal/schema/postgresql/v12

sql() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" --port "${DB_PORT:-5432}" \
    --user "$POSTGRES_USER" "$@"
}

for pair in temporal:temporal visibility:temporal_visibility; do
  kind=${pair%%:*}
  database=${pair#*:}
  # `create` fails when the database exists, as it does from the second `up` on; any other
  # failure (password, network) makes the next command fail too, and this container with it.
  sql --db "$database" create || echo "database $database exists already"
  sql --db "$database" setup-schema -v 0.0
  sql --db "$database" update-schema -d "$SCHEMAS/$kind/versioned"
done
echo "Temporal schemas are up to date"
