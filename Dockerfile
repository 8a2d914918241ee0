# The relay as a sidecar image: `outbox` is the entrypoint, so any verb runs as the command
# (relay, migrate, listen, endpoints ...). Configure it with DATABASE_URL and the OUTBOX_* variables.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OUTBOX_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY outbox ./outbox
COPY sql ./sql
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin outbox

# Never root at run time; the relay needs no file system writes (DATABASE_URL is always set here,
# so the embedded PostgreSQL and its ./.outbox folder are never used).
USER outbox
EXPOSE 9090
ENTRYPOINT ["outbox"]
CMD ["relay", "--metrics-port", "9090"]
