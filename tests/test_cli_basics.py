"""The cbctl command exists from day one: version, help, and one-line errors."""

from typer.testing import CliRunner

from cbctl import __version__
from cbctl.cli import app

runner = CliRunner()


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cbctl {__version__}"


def test_help_lists_the_global_options() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in ("--state", "--config", "--debug", "--version"):
        assert option in result.stdout


def test_an_unknown_command_is_a_usage_error_with_exit_code_2() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_a_bad_option_value_is_one_line_naming_the_command_and_option() -> None:
    result = runner.invoke(app, ["simulate", "outage", "--mode", "sideways"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("cbctl simulate outage: ")
    assert "--mode" in result.stderr
    assert "sideways" in result.stderr


def test_an_unknown_global_option_is_one_line_with_exit_code_2() -> None:
    result = runner.invoke(app, ["--no-such-flag", "status"])
    assert result.exit_code == 2
    assert result.stderr == "cbctl: No such option: --no-such-flag\n"
