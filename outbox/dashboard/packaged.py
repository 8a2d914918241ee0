"""`python -m outbox.dashboard.packaged`: renders every template and finds the static files, so
a wheel that left them out fails `just wheel-check` instead of a user's first page."""

from __future__ import annotations

import sys

from outbox.dashboard.app import STATIC, template_environment


def main() -> int:
    env = template_environment()
    names = sorted(env.list_templates())
    missing = {"base.html", "endpoints.html", "endpoint.html", "delivery.html"} - set(names)
    missing |= {f for f in ("dashboard.css", "dashboard.js") if not (STATIC / f).is_file()}
    for name in names:
        env.get_template(name)  # parses, so a broken template fails here too
    if missing:
        print(f"outbox dashboard: not installed: {sorted(missing)}", file=sys.stderr)
        return 1
    print(f"dashboard: {len(names)} templates and the static files are installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
