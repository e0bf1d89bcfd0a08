# ops-pipeline in one container: supervisord is PID 1 and runs every process.
#
#   docker build -t ops-pipeline .
#   docker run ops-pipeline                  # the demo: embedded Postgres + simulator
#
# For real accounts: mount a config, set OPS_CONFIG, OPS_DATABASE_URL (RDS) and the AWS
# credentials provider's environment, and run `ops up --foreground` (no --demo).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPS_HOME=/var/lib/ops \
    OPS_CONFIG=/app/conf/ops.toml

WORKDIR /app
# Only what the package needs: no venv, no tests, no local state from a dev checkout.
COPY pyproject.toml README.md ./
COPY ops ./ops
COPY tui ./tui
COPY conf ./conf
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/ops ops

# Non-root: the embedded Postgres then runs as this user too (it refuses to run as root).
USER ops

# `ops status` exits 0 healthy, 1 degraded, 2 down; Docker wants 0 or 1.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ops status > /dev/null || exit 1

# `ops up --foreground` migrates the schema, then execs `supervisord -n` (same PID).
# `docker stop -t 60` sends SIGTERM to supervisord, which stops every program in order
# (roles finish in-flight work within 10 s, Postgres last); the default 10 s is too short.
CMD ["ops", "up", "--demo", "--foreground"]
