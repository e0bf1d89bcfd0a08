# ops-pipeline in one container: supervisord is PID 1 and runs every process.
#
#   docker build -t ops-pipeline .
#
# Production (the default): Alpaca keys from AWS Secrets Manager (credentials provider
# "aws"; the container's AWS identity, e.g. an ECS task role, needs
# secretsmanager:GetSecretValue on ops-pipeline/alpaca*), the config and the runtime
# directory as volumes, Postgres from OPS_DATABASE_URL (RDS; unset = embedded Postgres in
# $OPS_HOME):
#
#   docker run -d --name ops -v /etc/ops-pipeline:/etc/ops:ro -v ops-home:/var/lib/ops \
#       -e OPS_DATABASE_URL ops-pipeline
#
# /etc/ops/ops.toml defaults to conf/production.example.toml, whose CHANGE-ME account
# numbers make every role refuse to trade until a real config is mounted there.
#
# The demo (embedded Postgres + simulator, throwaway keys in a 0600 file):
#
#   docker run --rm -e OPS_CONFIG=/app/conf/ops.toml ops-pipeline ops up --demo --foreground
#
# One role per container instead (ECS/Kubernetes): same image, command
# `ops run ROLE --account TIER`; see docs/scaling.md and deploy/ecs/.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPS_HOME=/var/lib/ops \
    OPS_CONFIG=/etc/ops/ops.toml

WORKDIR /app
# The dependencies first, exactly as locked (versions and hashes; scripts/lock.sh writes
# the lock): a layer that survives source changes. Python 3.11 brings pgserver's Postgres
# for the embedded mode; from 3.13 that would need the system's (apt install postgresql).
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
# Only what the package needs: no venv, no tests, no local state from a dev checkout.
COPY pyproject.toml README.md ./
COPY ops ./ops
COPY tui ./tui
COPY conf ./conf
COPY conf/production.example.toml /etc/ops/ops.toml
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/ops ops \
    && chmod 0755 /etc/ops && chmod 0644 /etc/ops/ops.toml

# Config (read-only for the processes; hot reload watches this directory) and runtime
# state: the SQLite outage buffer, logs, sockets, the embedded Postgres. Declared after
# the files exist so a fresh volume starts with them (and owned by `ops`).
VOLUME ["/etc/ops", "/var/lib/ops"]

# Non-root: the embedded Postgres then runs as this user too (it refuses to run as root).
USER ops

# `ops status` exits 0 healthy, 1 degraded, 2 down; Docker wants 0 or 1.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ops status > /dev/null || exit 1

# `ops up --foreground` migrates the schema, then execs `supervisord -n` (same PID).
# `docker stop -t 60` sends SIGTERM to supervisord, which stops every program in order
# (roles finish in-flight work within 10 s, Postgres last); the default 10 s is too short.
CMD ["ops", "up", "--foreground"]
