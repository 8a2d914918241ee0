"""`outbox bench`: every scenario runs end to end in --quick mode and reports its figures, its
targets with met flags and the machine, on a scratch database it drops afterwards. Nothing here
looks at how fast anything was or whether a target was met."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from support import env_without_outbox, outbox_cmd

from outbox.bench import SCENARIOS, fairness, latency, soak
from outbox.bench.harness import Target, interleave, rotate
from outbox.bench.writer import arrivals, percentile
from outbox.commands.bench import ALL_SOAK_MINUTES

TARGETS = {
    "capture": {
        f"{case}_{name}"
        for case in ("1_client", "4_clients", "8_clients", "100_row")
        for name in (
            "ratio_1_endpoint",
            "ratio_10_endpoints",
            "10_endpoints_vs_1",
            "account_vs_none",
        )
    },
    "fanout": {"deliveries_per_s"},
    "accounts": {
        "many_over_one",
        "many_over_same_width",
        "b_p99_ms_a_draining",
        "b_p99_ratio",
        "a_drain_ratio",
        "b_p99_ms_a_importing",
    },
    "deliver": {
        "deliveries_per_s",
        "ratio_to_aiohttp",
        "ratio_to_pyreqwest",
        "relay_cpu_us_per_delivery",
        "cpu_ratio_to_aiohttp",
    },
    "ordering": {"ordered_vs_unordered", "one_failing_vs_none"},
    "peer": {"ratio_to_pgqueuer"},
    "latency": {"p50_ms", "p99_ms"},
    "backlog": {"ratio_big_to_small", "relay_peak_rss_mb", "relay_peak_rss_mb_1mb_events"},
    "isolation": {"ratio"},
    "soak": {"throughput_decay", "p99_trend", "dead_tuples_growth"},
}


def test_every_scenario_is_covered_here() -> None:
    assert set(TARGETS) == set(SCENARIOS)


def _bench(server_url: str, cwd: Path, *args: str) -> tuple[int, str, str, int]:
    env = env_without_outbox()
    env.update(DATABASE_URL=server_url, OUTBOX_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        outbox_cmd("bench", *args),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=170)
    return proc.returncode, out, err, proc.pid


def _bench_databases(server_url: str, pid: int) -> list[str]:
    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like %s", [f"outbox_bench_%_{pid}"]
        ).fetchall()
    return [row[0] for row in rows]


def _check_target(name: str, target: dict[str, Any]) -> None:
    assert set(target) >= {"value", "target", "met"}, name
    assert isinstance(target["met"], bool), name
    assert isinstance(target["target"], int | float), name
    assert target["value"] is None or isinstance(target["value"], int | float), name


@pytest.mark.parametrize("scenario", sorted(TARGETS))
def test_quick_run_prints_one_json_report_and_drops_its_database(
    scenario: str, server_url: str, tmp_path: Path
) -> None:
    code, out, err, pid = _bench(server_url, tmp_path, scenario, "--quick", "--json")

    assert code == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    report = json.loads(lines[0])
    assert report["scenario"] == scenario
    assert report["figures"]
    for name, value in report["figures"].items():
        assert value is None or isinstance(value, int | float | str), name
    assert set(report["targets"]) == TARGETS[scenario]
    if scenario == "capture":  # each case beside the reference and floor triggers', same rounds
        for case in ("1_client", "4_clients", "8_clients", "100_row"):
            assert report["figures"][f"{case}_ratio_reference"] > 0
            assert report["figures"][f"{case}_ratio_floor"] > 0
            assert report["figures"][f"{case}_ratio_no_account"] > 0
    for name, target in report["targets"].items():
        _check_target(name, target)
    if scenario == "fanout":  # a step of known records' updates beside one of new records'
        assert report["figures"]["step_ms_new_records"] > 0
        assert report["figures"]["step_ms_known_records"] > 0
    if scenario == "deliver":  # the contract floor delivered and recorded every one of its own
        figures = report["figures"]
        assert figures["floor_recorded_delivered"] == figures["deliveries"]
        assert figures["floor_attempts"] == figures["deliveries"]
        assert figures["floor_cpu_us_per_delivery"] > 0
    if scenario == "ordering":  # each failing record's first delivery failed; the rest wait
        figures = report["figures"]
        assert figures["failing_attempts"] >= figures["rounds"]
        assert figures["failing_records_held"] == figures["rounds"] * figures["updates_per_record"]
    if scenario == "accounts":  # the join floor wrote what the steps wrote; B's path in stages
        figures = report["figures"]
        assert figures["floor_many_accounts_deliveries"] == figures["many_accounts_deliveries"]
        assert figures["many_accounts_deliveries"] == 2 * figures["events"]
        assert figures["floor_many_over_one"] > 0
        assert figures["floor_many_over_same_width"] > 0
        for stage in fairness.STAGES:
            assert report["figures"][f"b_{stage}_p99_ms_a_idle"] >= 0, stage
            # A's quick drain is over in a moment: B may have had no event inside it.
            busy = report["figures"][f"b_{stage}_p99_ms_a_draining"]
            assert busy is None or busy >= 0, stage
    if scenario == "latency":  # the way from commit to arrival in stages, each a time in ms
        for stage in latency.STAGES:
            assert isinstance(report["figures"][f"{stage}_p50_ms"], float), stage
        assert report["figures"]["step_to_attempt_p50_ms"] >= 0
        assert report["figures"]["attempt_to_arrival_p50_ms"] >= 0
    if scenario == "soak":  # seconds long: far short of the autovacuum visits growth needs
        assert report["targets"]["dead_tuples_growth"]["value"] is None
        assert any("dead-tuple growth not judged" in note for note in report["notes"])
    machine = report["machine"]
    assert machine["cpus"] >= 1
    assert machine["pg_version"]
    assert machine["python"]
    assert f"bench {scenario}:" in err  # progress goes to stderr
    assert _bench_databases(server_url, pid) == []


def test_table_output_lists_each_target_with_its_verdict(server_url: str, tmp_path: Path) -> None:
    code, out, err, _ = _bench(server_url, tmp_path, "latency", "--quick")

    assert code == 0, err[-3000:]
    assert out.startswith("latency: ")
    lines = [line.strip() for line in out.splitlines()]
    rows = lines[next(i for i, line in enumerate(lines) if line.startswith("target ")) + 1 :]
    for name in TARGETS["latency"]:
        row = next(line for line in rows if line.startswith(name + " "))
        assert row.endswith(("yes", "NO"))
    assert "machine: " in out


@pytest.mark.parametrize(
    "args", [("nonsense",), ("soak", "--minutes", "0"), ("soak", "--minutes", "soon")]
)
def test_bad_arguments_fail_in_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    done = subprocess.run(
        outbox_cmd("bench", *args),
        env=env_without_outbox(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


def test_interleave_alternates_which_side_goes_first() -> None:
    order: list[str] = []

    def side(name: str) -> Callable[[int], int]:
        def run(index: int) -> int:
            order.append(f"{name}{index}")
            return index

        return run

    a, b = interleave(3, side("a"), side("b"))

    assert order == ["a0", "b0", "b1", "a1", "a2", "b2"]
    assert a == b == [0, 1, 2]


def test_rotate_starts_each_round_one_side_later() -> None:
    order: list[str] = []

    def side(name: str) -> Callable[[int], str]:
        def run(index: int) -> str:
            order.append(f"{name}{index}")
            return f"{name}{index}"

        return run

    a, b, c = rotate(4, [side("a"), side("b"), side("c")])

    assert order == ["a0", "b0", "c0", "b1", "c1", "a1", "c2", "a2", "b2", "a3", "b3", "c3"]
    assert (a, b, c) == (
        ["a0", "a1", "a2", "a3"],
        ["b0", "b1", "b2", "b3"],
        ["c0", "c1", "c2", "c3"],
    )


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([5.0], 0.99, 5.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0), (list(range(1, 101)), 0.99, 99)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_arrivals_match_events_to_commits_by_contact_and_keep_first_arrival() -> None:
    commits = [(1, 100.0), (2, 100.5)]
    records = [("evt_b", 100.75), ("evt_a", 100.25), ("evt_a", 101.0), ("evt_x", 100.0)]

    found = arrivals(commits, records, {"evt_a": 1, "evt_b": 2})

    assert found == [(100.0, 0.25), (100.5, 0.25)]


def test_stages_split_each_measured_event_at_its_delivery_written_and_its_first_start() -> None:
    path = [
        ("evt_a", 10.0, 10.002, 10.005),  # fan-out 2 ms, claim 3 ms, send 1 ms
        ("evt_b", 11.0, 11.004, 11.010),  # 4, 6, 5
        ("evt_c", 12.0, 12.001, None),  # not attempted yet: left out
        ("evt_d", 13.0, 13.5, 13.6),  # not among those measured: left out
    ]
    records = [("evt_a", 10.006), ("evt_b", 11.015), ("evt_a", 12.0), ("evt_d", 13.7)]

    got = fairness.stages(path, records, {"evt_a", "evt_b", "evt_c"})

    assert got.fan_out == pytest.approx(4.0)
    assert got.claim == pytest.approx(6.0)
    assert got.send == pytest.approx(5.0)  # evt_a's first arrival, not its second
    assert math.isnan(fairness.stages(path, [], {"evt_a"}).send)  # nothing arrived


def test_latency_stages_run_from_the_writers_commit_and_add_up_to_its_latency() -> None:
    commits = [(1, 10.0), (2, 11.0), (3, 9.0), (4, 12.0)]
    contacts = {"evt_a": 1, "evt_b": 2, "evt_c": 3, "evt_d": 4}
    path = [  # (event, its transaction began, delivery written, first attempt started)
        ("evt_a", 9.99, 10.002, 10.005),  # commit -> step 2 ms, -> attempt 3 ms, -> arrival 1 ms
        ("evt_b", 10.99, 10.999, 11.010),  # the step began before the writer read its clock
        ("evt_c", 8.99, 9.001, 9.002),  # committed before the measured window: left out
        ("evt_d", 11.99, 12.001, None),  # not attempted yet: left out
    ]
    records = [("evt_a", 10.006), ("evt_b", 11.015), ("evt_a", 12.0), ("evt_c", 9.003)]

    got = latency.stages(commits, contacts, path, records, since=9.5)

    assert got["commit_to_step"] == pytest.approx([2.0, -1.0])
    assert got["step_to_attempt"] == pytest.approx([3.0, 11.0])
    assert got["attempt_to_arrival"] == pytest.approx([1.0, 5.0])
    for index, (_, arrived) in enumerate(records[:2]):
        commit = commits[index][1]
        total = sum(got[stage][index] for stage in latency.STAGES)
        assert total == pytest.approx((arrived - commit) * 1000.0)


def test_soak_windows_take_whole_windows_of_commits_after_the_start() -> None:
    # (commit time, seconds to arrival): two whole 10 s windows from t=2, then a partial one.
    timed = (
        [(1.0, 9.0)]
        + [(2.0 + i, 0.010) for i in range(10)]
        + [(12.0 + i, 0.020) for i in range(10)]
    )
    timed += [(22.5, 5.0)]

    assert soak._p99_by_window(timed, 2.0, 23.0, 10.0) == [10.0, 20.0]


@pytest.mark.parametrize(
    ("p99s", "trend"),
    [
        ([10, 10, 10, 90, 10, 10, 10, 10, 10], 1.0),  # one slow window: not a trend
        ([10, 90, 10, 10, 10, 10, 10, 10, 90], 1.0),
        ([10, 12, 14, 20, 30, 40, 50, 60, 70], 5.0),  # a tail that keeps growing
        ([20, 40], 2.0),
    ],
)
def test_soak_trend_compares_the_last_third_of_windows_with_the_first(
    p99s: list[float], trend: float
) -> None:
    assert soak._trend(p99s) == trend


@pytest.mark.parametrize(
    ("seconds", "naptime", "judged"),
    [(60.0, 60.0, False), (179.0, 60.0, False), (180.0, 60.0, True), (600.0, 60.0, True)],
)
def test_soak_judges_dead_tuple_growth_only_across_three_autovacuum_visits(
    seconds: float, naptime: float, judged: bool
) -> None:
    assert soak.dead_tuples_judged(seconds, naptime) is judged


def test_all_runs_the_soak_long_enough_to_judge_dead_tuple_growth() -> None:
    assert soak.dead_tuples_judged(ALL_SOAK_MINUTES * 60.0, 60.0)


@pytest.mark.parametrize(
    ("target", "met"),
    [
        (Target(0.8, 0.8, ">="), True),
        (Target(0.79, 0.8, ">="), False),
        (Target(25.0, 25.0, "<="), True),
        (Target(float("nan"), 25.0, "<="), False),
    ],
)
def test_a_target_is_met_only_by_a_measured_value_on_its_side(target: Target, met: bool) -> None:
    assert target.met is met


# asyncpg comes with the bench extra alone; a None in sys.modules is how Python reports a module
# that is not installed.
WITHOUT_ASYNCPG = (
    "import sys; sys.modules['asyncpg'] = None; "
    "from outbox.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("scenario", ["peer", "all"])
def test_the_peer_without_asyncpg_says_how_to_install_it_and_runs_nothing(
    scenario: str, tmp_path: Path
) -> None:
    env = env_without_outbox()
    env.update(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x", PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_ASYNCPG, "bench", scenario, "--quick"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "outbox: error: the peer benchmark needs asyncpg: pip install 'stover-outbox[bench]'"
    ]
