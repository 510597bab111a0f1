"""Plumbing every service shares: configuration, logs, database, migrations, auth, gRPC bootstrap."""
