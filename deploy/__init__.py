"""Deployment: the dev stack behind `make up`, the code generator behind `make proto`, and the
image's entry point (`python -m deploy.cli`) with the compose file, Kubernetes manifests and
Prometheus rules it is deployed with (docs/deploying.md)."""
