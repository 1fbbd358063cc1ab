"""What an operator lives with, through the real CLI: configuration, state paths, names, exits."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbctl import CircuitBreakerRegistry, FakeClock
from cbctl.cli import app
from cbctl.stores import open_store

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _refused() -> None:
    raise ConnectionError("connection refused")


def record(path: Path, *, failures: dict[str, int], clock: FakeClock | None = None) -> None:
    store = open_store(str(path), clock=clock)
    registry = CircuitBreakerRegistry(
        default_config={"failure_threshold": 2}, store=store, clock=clock
    )
    for name, count in failures.items():
        registry.get(name).call(lambda: None)
        for _ in range(count):
            with pytest.raises(ConnectionError):
                registry.get(name).call(_refused)
    store.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "circuits.db"
    record(path, failures={"qdrant": 0, "redis": 2})
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cbctl.toml"
    path.write_text(
        "[defaults]\ntimeout = 12\n"
        "[dependencies.redis]\nurl = 'redis://:s3cret@127.0.0.1:1/0'\nfailure_threshold = 3\n"
        "[dependencies.pg]\nkind = 'postgresql'\nurl = 'postgresql://app:pw-secret@127.0.0.1:1/a'\n"
        "[dependencies.pgblack]\nkind = 'tcp'\nurl = 'tcp://127.0.0.1:1'\n"
    )
    return path


# -- my configuration is my configuration ------------------------------------------------------


def test_probe_all_probes_the_file_s_dependencies_only(config: Path, tmp_path: Path) -> None:
    code, out, _ = run(
        "--config", str(config), "--state", str(tmp_path / "s.db"), "probe", "--all", "--json",
        "--call-timeout", "0.5",
    )  # fmt: skip
    assert code == 1
    assert sorted(json.loads(line)["dependency"] for line in out.splitlines()) == [
        "pg", "pgblack", "redis",
    ]  # fmt: skip


def test_config_json_shows_kinds_redacted_urls_settings_and_their_sources(config: Path) -> None:
    code, out, _ = run("--config", str(config), "config", "--json", env={"CBCTL_PG_URL": ""})
    assert code == 0
    assert "s3cret" not in out
    assert "pw-secret" not in out
    resolved = json.loads(out)
    assert resolved["file"] == str(config)
    by_name = {entry["name"]: entry for entry in resolved["dependencies"]}
    assert list(by_name) == ["pg", "pgblack", "redis"]
    redis = by_name["redis"]
    assert (redis["kind"], redis["url"]) == ("redis", "redis://:***@127.0.0.1:1/0")
    assert (redis["failure_threshold"], redis["timeout"], redis["success_threshold"]) == (3, 12, 2)
    assert redis["from"]["failure_threshold"] == "dependencies.redis.failure_threshold"
    assert redis["from"]["timeout"] == "defaults.timeout"
    assert redis["from"]["success_threshold"] == "default"
    assert redis["from"]["kind"] == "built-in"


def test_config_table_names_the_file_once_and_each_value_s_source(config: Path) -> None:
    code, out, _ = run("--config", str(config), "config", env={"COLUMNS": "80"})
    assert code == 0
    assert out.count(str(config)) == 1
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = [line.split() for line in out.splitlines()]
    (row,) = [words for words in rows if words[:2] == ["failure_threshold", "3"]]
    assert row == ["failure_threshold", "3", "file"]
    assert "pw-secret" not in out


def test_config_with_builtins_true_adds_the_four_built_ins(tmp_path: Path) -> None:
    path = tmp_path / "cbctl.toml"
    path.write_text("builtins = true\n[dependencies.search]\nkind = 'tcp'\nurl = 'tcp://h:7700'\n")
    _, out, _ = run("--config", str(path), "config", "--json")
    names = [entry["name"] for entry in json.loads(out)["dependencies"]]
    assert names == ["llamacpp", "postgresql", "qdrant", "redis", "search"]


# -- --debug changes only what is printed ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("reset", "nosuch"),
        ("status", "nosuch"),
        ("--config", "/no/such/cbctl.toml", "probe", "redis"),
        ("--state", "/no/such/dir/x.db", "status"),
    ],
)
def test_debug_shows_a_traceback_but_keeps_the_exit_code(
    args: tuple[str, ...], state: Path
) -> None:
    full = args if "--state" in args else ("--state", str(state), *args)
    code, _, err = run(*full)
    debug_code, _, debug_err = run("--debug", *full)
    assert code == debug_code == 2
    assert "Traceback" not in err
    assert "Traceback" in debug_err
    assert debug_err.endswith(err)


def test_a_global_option_after_the_command_says_where_it_goes(state: Path) -> None:
    code, _, err = run("status", "--state", str(state))
    assert code == 2
    assert err == "cbctl status: `--state` is a global option: put it before the command\n"


# -- state paths and names that mean what was typed --------------------------------------------


@pytest.mark.parametrize(
    "command", [("status",), ("watch", "--once"), ("reset", "redis"), ("forget", "redis")]
)
def test_reading_commands_on_a_state_that_does_not_exist_say_so_and_create_nothing(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "x.db"
    code, _, err = run("--state", str(missing), *command)
    assert code == 2
    assert err.startswith(f"cbctl: no state file at {missing}: nothing has been recorded there")
    assert not (tmp_path / "no").exists()


def test_status_of_named_circuits_with_exit_code_for_cron(state: Path) -> None:
    code, out, _ = run("--state", str(state), "status", "qdrant", "--exit-code")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["qdrant"]
    code, out, _ = run("--state", str(state), "status", "qdrant", "redis", "--exit-code")
    assert code == 1
    assert run("--state", str(state), "status", "redis")[0] == 0  # without --exit-code


def test_status_of_a_configured_but_unrecorded_name_notes_it_and_an_unknown_name_is_exit_2(
    state: Path,
) -> None:
    code, out, err = run("--state", str(state), "status", "llamacpp", "--json")
    assert (code, json.loads(out)) == (0, [])
    assert err == "cbctl: llamacpp: no recorded state yet (never probed or called)\n"
    code, _, err = run("--state", str(state), "status", "nosuch")
    assert code == 2
    assert "unknown circuit 'nosuch'" in err


def test_forget_removes_named_circuits_and_refuses_unknown_ones(state: Path) -> None:
    code, out, _ = run("--state", str(state), "forget", "redis")
    assert code == 0
    assert out == f"forgot redis (open) in {state}\n"
    _, listing, _ = run("--state", str(state), "status", "--json")
    assert [each["name"] for each in json.loads(listing)] == ["qdrant"]
    code, _, err = run("--state", str(state), "forget", "qdrant", "nosuch")
    assert code == 2
    assert "unknown circuit 'nosuch'" in err
    _, listing, _ = run("--state", str(state), "status", "--json")
    assert [each["name"] for each in json.loads(listing)] == ["qdrant"]  # nothing removed


def test_forget_stale_removes_only_circuits_unchanged_for_that_long(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    old = FakeClock(wall=time.time() - 3 * 86400)
    record(path, failures={"old-search": 1}, clock=old)
    record(path, failures={"redis": 1})
    code, out, _ = run("--state", str(path), "forget", "--stale", "2d")
    assert code == 0
    assert out == f"forgot old-search (closed) in {path}\n"
    code, _, err = run("--state", str(path), "forget", "--stale", "2d")
    assert code == 0
    assert "nothing forgotten" in err
    code, _, err = run("--state", str(path), "forget", "--stale", "soon")
    assert code == 2
    assert "--stale must be a duration" in err
    code, _, err = run("--state", str(path), "forget", "--stale", "99999999999999999999d")
    assert code == 2
    assert err.strip() == "cbctl: --stale must be at most 3650d, got '99999999999999999999d'"


# -- tables people can read --------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 120])
def test_status_on_a_terminal_fits_the_width_and_shows_the_source_once(
    width: int, tmp_path: Path
) -> None:
    path = tmp_path / "a-long-directory-name-for-the-state" / "circuits.db"
    path.parent.mkdir()
    record(path, failures={"postgresql": 2, "qdrant": 0})
    code, out, _ = run(
        "--state", str(path), "status", env={"COLUMNS": str(width), "TTY_COMPATIBLE": "1"}
    )
    assert code == 0
    lines = ANSI.sub("", out).splitlines()
    assert max(len(line) for line in lines) <= width
    (caption,) = [line for line in lines if "circuits.db" in line]
    assert caption.startswith("2 circuits, 1 closed, 1 open in ")
    assert caption.endswith("a-long-directory-name-for-the-state/circuits.db")
    (row,) = [line for line in lines if line.startswith("postgresql")]
    assert row.split()[1:2] == ["open"]
    assert "2/2" in row
    assert re.search(r" \ds ago: ConnectionError: connection re", row)
    assert ("ConnectionError: connection refused" in row) == (width == 120)


# -- habits ------------------------------------------------------------------------------------


def test_probe_takes_several_names_and_exits_with_the_worst(config: Path, tmp_path: Path) -> None:
    code, out, _ = run(
        "--config", str(config), "--state", str(tmp_path / "s.db"),
        "probe", "pgblack", "redis", "pgblack", "--json", "--call-timeout", "0.5",
    )  # fmt: skip
    assert code == 1
    assert [json.loads(line)["dependency"] for line in out.splitlines()] == ["pgblack", "redis"]


def test_rounds_of_probe_all_count_are_headed_with_their_number_and_time(
    config: Path, tmp_path: Path
) -> None:
    code, out, _ = run(
        "--config", str(config), "--state", str(tmp_path / "s.db"),
        "probe", "--all", "--count", "2", "--interval", "0", "--call-timeout", "0.5",
    )  # fmt: skip
    assert code == 1
    headings = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(headings) == 2
    assert re.fullmatch(r"round 1/2 at \d\d:\d\d:\d\d", headings[0])
    assert headings[1].startswith("round 2/2 at ")
    assert out.count("pgblack") == 2


@pytest.mark.parametrize("command", ["config", "forget"])
def test_the_new_commands_have_help_with_an_example(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    example = out.split("Example:", 1)[1].split("\n\n")[0]
    assert re.search(rf"cbctl (--\S+ \S+ )*{command}\b", example)


def test_status_on_a_terminal_without_colour_is_still_fitted_to_its_width(tmp_path: Path) -> None:
    path = tmp_path / "circuits.db"
    record(path, failures={"postgresql": 2})
    env = {"COLUMNS": "60", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    code, out, _ = run("--state", str(path), "status", env=env)
    assert code == 0
    assert "\x1b[" not in out
    assert max(len(line) for line in out.splitlines()) <= 60
    assert out.splitlines()[0].split()[:2] == ["circuit", "state"]
