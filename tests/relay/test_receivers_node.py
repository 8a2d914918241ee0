"""Real Node.js receivers accept every delivery: the seed document's snippet, which signs
`JSON.stringify(req.body)`, and the npm `standardwebhooks` verifier over the raw body."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import outbox_cmd

from outbox.signing import generate_secret

from . import SEED_TYPES, add_endpoint, deliveries, event_types, relay_env, write_seed_events

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="Node.js and npm are not installed",
    ),
]

Conn = psycopg.Connection[Any]
NODE_DIR = Path(__file__).parent.parent / "node"
# Every kind of text JSON.stringify escapes, or pointedly does not: quotes, backslashes, C0
# controls, DEL, the JavaScript line separators, non-ASCII, astral emoji and a ZWJ sequence.
AWKWARD_TEXT = (
    'Zoë 李 😀 "quoted" back\\slash \x01\x08\x1f\t\n\r \x7f \u2028\u2029 👩\u200d👩\u200d👧'
)
# Written as JSON text so the numbers reach jsonb as a person types them: jsonb then stores 1e21 as
# 1000000000000000000000 and 1e-7 as 0.0000001, and keeps 1000.50 and 2.50 with their zeros.
CUSTOM_FIELDS = """{
    "10": 1, "2": 2, "a": 3,
    "tiny": 1e-7, "huge": 1e21, "amount": 1000.50, "price": 2.50, "negative_zero": -0.0,
    "tenth": 0.1, "third": 0.3333333333333333, "max_safe": 9007199254740992, "e": 1E+2,
    "4294967294": "the last array index", "4294967295": "not an array index",
    "01": "not an array index either",
    "nested": [[1, [2.50, {"x": "y", "1": [], "0": {}}]], [], [null, true, false, 1e-7, 1e21]]
}"""


@dataclass
class NodeReceiver:
    """`node seed_receiver.js` on 127.0.0.1 and the lines it prints, one per answered request."""

    port: int
    webhook_secret: str
    standard_secret: str
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def answers_since(self, mark: int, n: int, deadline_s: float = 20.0) -> list[list[str]]:
        """The first `n` answers after `mark`, each as [verdict, path, status, delivery id]."""
        deadline = time.monotonic() + deadline_s
        with self.cond:
            while len(self.lines) - mark < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"node answered {len(self.lines) - mark} of {n}")
                self.cond.wait(min(left, 0.5))
            return [line.split(" ") for line in self.lines[mark : mark + n]]


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """express and standardwebhooks from the npm registry, installed once and then reused."""
    modules = NODE_DIR / "node_modules"
    wanted = ("express", "standardwebhooks")
    if not all((modules / name / "package.json").is_file() for name in wanted):
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stderr}"
    return modules


@contextmanager
def running_node(log: Path, **secrets: str) -> Iterator[NodeReceiver]:
    """`node seed_receiver.js` with the given secrets (WEBHOOK_SECRET, STANDARD_SECRET,
    WEBHOOK_PREVIOUS_SECRET), until the block ends."""
    env = {**os.environ, **secrets}
    with log.open("ab") as stderr:
        proc = subprocess.Popen(
            ["node", "seed_receiver.js", "0"],
            cwd=NODE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    started = threading.Event()
    receiver = NodeReceiver(
        0, secrets.get("WEBHOOK_SECRET", ""), secrets.get("STANDARD_SECRET", "")
    )

    def read(stream: Any) -> None:
        for line in stream:
            if line.startswith("listening "):
                receiver.port = int(line.split()[1])
                started.set()
                continue
            with receiver.cond:
                receiver.lines.append(line.rstrip("\n"))
                receiver.cond.notify_all()

    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        assert started.wait(30), f"the Node receiver did not start: {log.read_text()}"
        yield receiver
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        proc.stdout.close()


@pytest.fixture(scope="session")
def node_receiver(
    node_modules: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeReceiver]:
    log = tmp_path_factory.mktemp("node") / "stderr.log"
    with running_node(
        log, WEBHOOK_SECRET=generate_secret(), STANDARD_SECRET=generate_secret()
    ) as receiver:
        yield receiver


def write_awkward_payloads(conn: Conn) -> None:
    """Rows and emitted events whose JSON is hard to re-serialise byte for byte."""
    company = conn.execute(
        "insert into stover.companies (name, domain) values (%s, 'ünïcode.test') returning id",
        ['Quote " and backslash \\ Ltd\x01'],
    ).fetchone()
    assert company is not None
    contact = conn.execute(
        "insert into stover.contacts (first_name, last_name, email, company_id, custom_fields) "
        "values (%s, '😀', 'zoë@ünïcode.test', %s, "
        "        %s::jsonb || jsonb_build_object('text', %s::text)) returning id",
        [AWKWARD_TEXT, company[0], CUSTOM_FIELDS, AWKWARD_TEXT],
    ).fetchone()
    assert contact is not None
    conn.execute(
        "update stover.contacts set custom_fields = custom_fields || '{\"tiny\": 2e-7}'::jsonb "
        "where id = %s",
        [contact[0]],
    )
    conn.execute(
        "insert into stover.deals (name, amount, contact_id) values (%s, 1000.50, %s), "
        "('Nines', 999999999999.99, null), ('Dime', 0.10, null)",
        [AWKWARD_TEXT, contact[0]],
    )
    conn.execute(
        "insert into stover.posts (network, content, status, scheduled_at) "
        "values ('x', %s, 'scheduled', now())",
        [AWKWARD_TEXT + "\n\n#launch 🚀"],
    )
    conn.execute(
        "insert into stover.attribution_events (contact_id, source, url) values (%s, %s, %s)",
        [contact[0], "newsletter ✉", 'https://ünïcode.test/a?q="x"&r=\\'],
    )
    conn.execute(
        "select outbox.emit('custom.awkward', jsonb_build_object("
        "'fields', %s::jsonb, 'text', %s::text, 'matrix', '[[1.50, [2, [3e-7]]], [], {}]'::jsonb))",
        [CUSTOM_FIELDS, AWKWARD_TEXT],
    )


def drain(cli_env: dict[str, str]) -> dict[str, int]:
    """`outbox relay --once` with a one-rung ladder, so any refusal is final and visible, and
    no circuit breaker to hold back deliveries to a receiver that refuses them all."""
    done = subprocess.run(
        outbox_cmd("relay", "--once"),
        env={**relay_env(cli_env, ladder="0"), "OUTBOX_BREAKER_AFTER": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    tally: dict[str, int] = json.loads(done.stdout)
    return tally


def test_both_node_receivers_accept_every_delivery(
    conn: Conn, cli_env: dict[str, str], node_receiver: NodeReceiver
) -> None:
    hook = add_endpoint(conn, node_receiver.url("/webhook"), secret=node_receiver.webhook_secret)
    standard = add_endpoint(
        conn, node_receiver.url("/standard"), secret=node_receiver.standard_secret
    )
    mark = node_receiver.mark()
    write_seed_events(conn)
    write_awkward_payloads(conn)
    assert event_types(conn) == {*SEED_TYPES, "custom.awkward"}
    rows = deliveries(conn)

    tally = drain(cli_env)
    answers = node_receiver.answers_since(mark, len(rows))

    assert Counter((verdict, path) for verdict, path, _, _ in answers) == {
        ("ok", "/webhook"): len(rows) // 2,
        ("ok", "/standard"): len(rows) // 2,
    }
    assert tally == {"claimed": len(rows), "delivered": len(rows), "retrying": 0, "failed": 0}
    statuses = Counter((row["endpoint_id"], row["status"]) for row in deliveries(conn))
    half = len(rows) // 2
    assert statuses == {(hook.id, "delivered"): half, (standard.id, "delivered"): half}


def test_a_receiver_holding_the_wrong_secret_refuses_every_delivery(
    conn: Conn, cli_env: dict[str, str], node_receiver: NodeReceiver
) -> None:
    # The database makes these endpoints fresh secrets, which the receiver does not know.
    add_endpoint(conn, node_receiver.url("/webhook"))
    add_endpoint(conn, node_receiver.url("/standard"))
    mark = node_receiver.mark()
    write_seed_events(conn)
    rows = deliveries(conn)

    tally = drain(cli_env)
    answers = node_receiver.answers_since(mark, len(rows))

    assert Counter((verdict, path, status) for verdict, path, status, _ in answers) == {
        ("bad", "/webhook", "401"): len(rows) // 2,
        ("bad", "/standard", "401"): len(rows) // 2,
    }
    assert tally["failed"] == len(rows)
    assert {(row["status"], row["last_status_code"]) for row in deliveries(conn)} == {
        ("failed", 401)
    }


def rotate(cli_env: dict[str, str], endpoint_id: str, overlap: str) -> str:
    done = subprocess.run(
        outbox_cmd("endpoints", "rotate-secret", endpoint_id, "--overlap", overlap, "--json"),
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    secret: str = json.loads(done.stdout)["secret"]
    return secret


def test_a_receiver_following_the_rotation_procedure_never_fails_a_check(
    conn: Conn, cli_env: dict[str, str], node_modules: Path, tmp_path: Path
) -> None:
    """The README's procedure, step by step, with a delivery to each scheme after every step:
    rotate with an overlap; deploy the receiver accepting either secret; the overlap ends;
    deploy it with the new secret alone. Every check passes."""
    log = tmp_path / "node.log"
    old_hook, old_standard = generate_secret(), generate_secret()
    answers: list[list[str]] = []

    def deliver_to(node: NodeReceiver, hook_path: str) -> None:
        for endpoint, path in ((hook, hook_path), (standard, "/standard")):
            conn.execute(
                "update outbox.endpoints set url = %s where id = %s", [node.url(path), endpoint.id]
            )
        mark = node.mark()
        conn.execute("select outbox.emit('test.ping', '{\"n\": 1}'::jsonb)")
        tally = drain(cli_env)
        assert tally["delivered"] == 2, tally
        answers.extend(node.answers_since(mark, 2))

    with running_node(log, WEBHOOK_SECRET=old_hook, STANDARD_SECRET=old_standard) as before:
        hook = add_endpoint(conn, before.url("/webhook"), secret=old_hook)
        standard = add_endpoint(conn, before.url("/standard"), secret=old_standard)
        deliver_to(before, "/webhook")
        # 1. Rotate both, with an overlap. The receiver has not changed yet.
        new_hook = rotate(cli_env, hook.id, "1h")
        new_standard = rotate(cli_env, standard.id, "1h")
        deliver_to(before, "/webhook")
    # 2. Within the overlap, deploy the receiver holding both secrets (the standard scheme
    #    needs only the new one: the header carries a signature by each).
    both = {"WEBHOOK_SECRET": new_hook, "WEBHOOK_PREVIOUS_SECRET": old_hook}
    with running_node(log, **both, STANDARD_SECRET=new_standard) as during:
        deliver_to(during, "/rotating")
        # 3. The overlap ends.
        conn.execute(
            "update outbox.endpoints set previous_secret_until = now() - interval '1 second'"
        )
        deliver_to(during, "/rotating")
    # 4. Deploy it with the new secret alone.
    with running_node(log, WEBHOOK_SECRET=new_hook, STANDARD_SECRET=new_standard) as after:
        deliver_to(after, "/webhook")

    assert len(answers) == 10
    assert {verdict for verdict, *_ in answers} == {"ok"}, answers
