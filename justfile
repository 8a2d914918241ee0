# stover-outbox: every command people and CI run. `just --list` explains each recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Recipes run the project's virtual environment, activated or not.
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")

# list the recipes
default:
    @just --list

# run the test suite (DATABASE_URL if set, else an embedded PostgreSQL)
[positional-arguments]
test *args:
    python -m pytest "$@"

# run the suite against the machine's PostgreSQL and then the embedded one
[positional-arguments]
test-both *args:
    DATABASE_URL="${LOCAL_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}" python -m pytest "$@"
    env -u DATABASE_URL python -m pytest "$@"

# static checks: ruff lint, ruff format check, mypy strict
lint:
    ruff check outbox tests
    ruff format --check outbox tests
    mypy

# format the code
fmt:
    ruff format outbox tests
    ruff check --fix outbox tests

# the demo: rows written, events captured, signed deliveries, retries, the audit trail
demo *args:
    outbox demo {{args}}

# the benchmark scenarios (capture, deliver, peer, latency, backlog, isolation, soak, all)
bench scenario="all" *args:
    outbox bench {{scenario}} {{args}}

# build the wheel and run it from outside the source tree, as a user who installed it would
wheel-check:
    rm -rf dist && pip wheel --quiet --no-deps -w dist .
    d="$(mktemp -d)" && python -m venv "$d/venv" && "$d/venv/bin/pip" install --quiet dist/*.whl && cd "$d" && env -u DATABASE_URL "$d/venv/bin/outbox" migrate && env -u DATABASE_URL "$d/venv/bin/outbox" migrate --check && env -u DATABASE_URL "$d/venv/bin/outbox" endpoints list && "$d/venv/bin/python" -m outbox.dashboard.packaged && cd / && rm -rf "$d"
