# syntax=docker/dockerfile:1
# The MemberOps image: one image for every process, the command picks which
# (`docker run ghcr.io/memberops/memberops:0.1.0 tagging|audience|tasks|journeys|worker|console|dispatcher|migrate|setup`;
# see deploy/cli.py and docs/deploying.md). Validated offline by tests/deploy/test_image.py (hadolint and
# structural checks); no Docker engine is needed to keep it honest.
#
# Base: python:3.11-slim-bookworm (Python 3.11, as pyproject.toml and CI; Debian bookworm ships tzdata, which
# the schedules' and journeys' IANA time zones need). Pinned by digest so a rebuild gets the same bits. The
# digest is the one a public decision record noted after checking Docker Hub for that tag; this machine has
# no registry access to re-resolve it. To move to a newer patch release, take the digest from
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and change both FROM lines together.

# --- builder: the pinned runtime dependencies of pyproject.toml in a virtual environment ----------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS builder

WORKDIR /build
COPY pyproject.toml deploy/image-constraints.txt ./
# Only [project].dependencies: not the `local` extra (embedded PostgreSQL, Temporal dev and test servers for
# `make up` and the tests) nor `dev` (linters, type checkers, pytest). What they require in turn is held to
# the versions the tests ran against (deploy/image-constraints.txt, from `python -m deploy.image_lock`), so
# two builds of one commit install the same. Every one has a wheel, so no compiler is installed.
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
        -r requirements.txt -c image-constraints.txt

# --- runtime: the virtual environment and the code that runs, nothing else --------------------------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS runtime

LABEL org.opencontainers.image.title="memberops" \
      org.opencontainers.image.description="MemberOps: tagging, audience, tasks and journeys services, the Temporal worker, the operators' console and their one-shot jobs" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric id, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 memberops \
    && useradd --system --uid 10001 --gid memberops --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin memberops

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only to the process: it writes nothing to its own code.
COPY runtime/ runtime/
COPY services/ services/
COPY workflows/ workflows/
# The console's package holds its page templates (console/templates) beside its code.
COPY console/ console/
COPY deploy/ deploy/
COPY gen/ gen/
RUN python -m compileall -q /app

USER 10001:10001
# gRPC: tagging 50051, audience 50052, tasks 50053, journeys 50054; /metrics and /healthz: 9100; the console
# (HTTP, its own /healthz): 8088.
EXPOSE 50051 50052 50053 50054 9100 8088
ENTRYPOINT ["python", "-m", "deploy.cli"]
CMD ["--help"]
