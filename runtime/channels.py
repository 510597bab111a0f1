"""Channels to a peer service, balanced over every address its target resolves to.

A target may name several replicas: `ipv4:10.0.0.5:50051,10.0.0.6:50051`, or a DNS name with one
address per replica (a Kubernetes headless Service, a compose service with replicas). gRPC's
default policy (pick_first) sends every call down one connection until it breaks; round_robin keeps
a connection to each address and takes them in turn, skipping those that are down, so the work
spreads over the replicas and a dead one costs only the calls it had in flight. A target with one
address behaves as before.

An address that refuses connections is tried again with gRPC's growing backoff, capped here at a
few seconds (gRPC's default cap is two minutes): a peer that restarts on the same address (compose,
a single replica) is found again within seconds of serving.
"""

from __future__ import annotations

import grpc

from runtime import tracing

OPTIONS = (("grpc.lb_policy_name", "round_robin"), ("grpc.max_reconnect_backoff_ms", 5000))


def peer_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to `target`, balanced round-robin over its addresses."""
    # Traced calls (when tracing is on) send their context along: see runtime/tracing.py.
    return grpc.aio.insecure_channel(target, options=OPTIONS, interceptors=tracing.client_interceptors())
