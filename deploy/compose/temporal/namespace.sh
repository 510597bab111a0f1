#!/bin/sh
# Creates the Temporal namespace MemberOps runs in when it does not exist yet (the server image
# creates none): waits for the cluster to answer, creates it, then waits until the frontend knows
# it (its namespace cache refreshes every few seconds), so `setup` can register attributes in it
# at once. Safe to run again.
set -eu

# Runs "$@" until it succeeds, at most 60 times, 2 s apart; then fails naming what never happened.
retry() {
  what=$1
  shift
  tries=0
  until "$@" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "$what: no success within 60 tries" >&2
      exit 1
    fi
    sleep 2
  done
}

address=${TEMPORAL_ADDRESS:?}
namespace=${TEMPORAL_NAMESPACE:-default}
retention=${TEMPORAL_NAMESPACE_RETENTION:-72h}

retry "Temporal at $address answering" temporal operator cluster health --address "$address"

if temporal operator namespace describe -n "$namespace" --address "$address" >/dev/null 2>&1; then
  echo "namespace $namespace exists already"
else
  temporal operator namespace create -n "$namespace" --retention "$retention" --address "$address"
  echo "namespace $namespace created (retention $retention)"
fi
retry "namespace $namespace usable" temporal operator search-attribute list -n "$namespace" --address "$address"
