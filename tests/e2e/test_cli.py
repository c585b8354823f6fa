"""The blobledger CLI as a user runs it: subprocesses, exit codes, --json output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.support import child_env

pytestmark = pytest.mark.e2e


def cli(
    settings, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", *args],
        env=child_env(settings, BLOBLEDGER_ACTOR="erin"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"blobledger {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        )
    return p


def test_help_and_unknown_command(settings):
    assert "usage: blobledger" in cli(settings, "--help").stdout
    bad = cli(settings, "frobnicate", check=False)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_object_lifecycle_from_the_shell(settings, projector):
    created = json.loads(
        cli(
            settings, "object", "create", "cli/a.txt", "--set", "color=red", "--tag", "x", "--json"
        ).stdout
    )
    assert created["status"] == "accepted" and created["version"] == 1
    updated = json.loads(
        cli(
            settings, "object", "update", "cli/a.txt", "--set", "size=3", "-e", "1", "--json"
        ).stdout
    )
    assert updated["version"] == 2
    conflict = cli(
        settings,
        "object",
        "update",
        "cli/a.txt",
        "--set",
        "size=4",
        "-e",
        "1",
        "--json",
        check=False,
    )
    assert conflict.returncode == 1 and "version 2" in conflict.stderr
    assert json.loads(conflict.stdout)["error"] == "conflict"
    got = json.loads(cli(settings, "object", "get", "cli/a.txt", "--json").stdout)
    assert got["metadata"] == {"color": "red", "size": 3} and got["tags"] == ["x"]
    old = json.loads(cli(settings, "object", "get", "cli/a.txt", "--version", "1", "--json").stdout)
    assert old["snapshot"]["metadata"] == {"color": "red"}
    listed = json.loads(cli(settings, "object", "list", "--prefix", "cli/", "--json").stdout)
    assert [o["key"] for o in listed["items"]] == ["cli/a.txt"]
    history = json.loads(cli(settings, "object", "history", "cli/a.txt", "--json").stdout)
    assert [h["version"] for h in history] == [1, 2]
    audit = json.loads(cli(settings, "object", "audit", "--json").stdout)
    assert [a["status"] for a in audit] == ["accepted", "accepted", "rejected"]
    deleted = json.loads(cli(settings, "object", "delete", "cli/a.txt", "--json").stdout)
    assert deleted["version"] == 3
    gone = cli(settings, "object", "get", "cli/a.txt", check=False)
    assert gone.returncode == 1 and "'cli/a.txt' was deleted (version 3" in gone.stderr


def test_bad_input_gets_a_clear_error(settings):
    bad_key = cli(settings, "object", "create", "a/../b", check=False)
    assert bad_key.returncode == 1 and "'..'" in bad_key.stderr
    bad_meta = cli(settings, "object", "create", "ok", "--meta", "[1,2]", check=False)
    assert bad_meta.returncode == 1 and "JSON object" in bad_meta.stderr


def test_text_the_read_model_cannot_hold_is_one_line_not_a_traceback(settings):
    """Found by testers: a lone surrogate in --meta ended in a UnicodeEncodeError traceback;
    a NUL reached the log. Both are refused before anything is published."""
    for meta in ('{"a":"\\ud800"}', '{"a":"x\\u0000y"}'):
        p = cli(settings, "object", "create", "k", "--meta", meta, check=False)
        assert p.returncode == 1, p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        assert "$.a" in p.stderr and ("lone surrogate" in p.stderr or "NUL" in p.stderr)


def test_replay_and_dlq_commands(settings, projector):
    cli(settings, "object", "create", "cli/r")
    out = json.loads(cli(settings, "replay", "--verify", "--json").stdout.strip().splitlines()[-1])
    assert out["verified"] is True and out["swapped"] is True and out["events"] == 1
    assert cli(settings, "dlq", "list", "--json").stdout == ""
