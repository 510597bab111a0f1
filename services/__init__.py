"""MemberOps gRPC services: tagging, audience and tasks, on shared plumbing in `runtime`."""
