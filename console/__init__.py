"""The operations console: a web front end over the four services' gRPC APIs (no SQL of its own)."""
