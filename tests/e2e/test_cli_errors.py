"""Clear errors everywhere: each bad invocation of the CLI exits 2 (usage) or 1 (anything
else) with a short message naming what the user typed, and never with a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from blobledger.infra.settings import Settings
from tests.integration.support import child_env

pytestmark = pytest.mark.e2e

LIVE = "errs/live.txt"  # created by the tests that need an object
MISSING = "errs/missing.txt"  # never created


def cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobledger.infra.cli", *args],
        env=child_env(settings, BLOBLEDGER_ACTOR="erin", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Bad(NamedTuple):
    args: tuple[str, ...]
    status: int  # 2 usage, 1 anything else
    says: str  # in the message (a regex)
    env: dict[str, str] | None = None


def bad_invocations(tmp: Path) -> list[Bad]:
    a_file = tmp / "a-file.txt"
    a_file.write_text("x")
    out = str(tmp / "out.bin")
    return [
        # usage: argparse's own short message
        Bad(("object", "frobnicate"), 2, r"usage: blobledger object"),
        Bad(("object", "get"), 2, r"required: object"),
        Bad(("object", "list", "--limit", "lots"), 2, r"--limit: takes a whole number"),
        Bad(("object", "audit", "--limit", "-5"), 2, r"--limit: takes a whole number"),
        Bad(("object", "get", LIVE, "--at", "yesterday"), 2, r"--at: takes an ISO-8601 time"),
        Bad(("object", "update", LIVE, "-e", "two", "--set", "a=1"), 2, r"invalid int"),
        Bad(("get", LIVE, "--expires", "60"), 2, r"--expires is the lifetime of a --url"),
        Bad(("dlq", "retry", "--offset", "seven"), 2, r"PARTITION:OFFSET"),
        Bad(("objekt", "list"), 2, r"unknown command 'objekt'; did you mean 'object'\?"),
        Bad(("key", "create", "mallory", "--name", "../x"), 2, r"'\.\./x' is not a plain file"),
        Bad(("key", "retire", "no-such-key"), 1, r"no key no-such-key in .*keyring"),
        # the object named as typed, whatever the command
        Bad(("object", "get", MISSING), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "history", MISSING), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "update", MISSING, "--set", "a=1"), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "tag", MISSING, "--add", "x"), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "acl", MISSING, "bob", "read"), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "delete", MISSING), 1, rf"object '{MISSING}' not found"),
        Bad(("get", MISSING, "-o", out), 1, rf"object '{MISSING}' not found"),
        Bad(("get", MISSING, "--url"), 1, rf"object '{MISSING}' not found"),
        Bad(("put", MISSING, str(a_file), "--no-follow"), 1, rf"object '{MISSING}' not found"),
        Bad(("object", "get", LIVE, "--version", "9"), 1, rf"object '{LIVE}' has no version 9"),
        Bad(("get", LIVE, "-o", out), 1, rf"object '{LIVE}' \(version 1\) has no committed blob"),
        Bad(("object", "create", "a/../b"), 1, r"'\.\.'"),
        Bad(("object", "list", "--cursor", "not-a-cursor"), 1, r"invalid cursor"),
        Bad(("get", LIVE, "--range", "ten-twenty"), 1, r"bad byte range 'ten-twenty'"),
        Bad(("get", LIVE, "--url", "--expires", "0"), 1, r"lifetime must be between 1"),
        # local files: said before anything is fetched or published
        Bad(
            ("get", LIVE, "-o", str(tmp / "missing_dir" / "file")),
            1,
            r"directory '.*missing_dir' does not exist",
        ),
        Bad(("get", LIVE, "-o", str(tmp)), 1, r"is a directory; name a file in it"),
        Bad(("get", LIVE, "-o", str(a_file / "file")), 1, r"'.*a-file\.txt' is not a directory"),
        Bad(("put", LIVE, str(tmp / "nope.bin")), 1, r"'.*nope\.bin' does not exist"),
        Bad(("put", LIVE, str(tmp)), 1, r"is a directory; put attaches one file"),
        # settings
        Bad(
            ("object", "get", LIVE),
            1,
            r"BLOBLEDGER_MAX_KEY_LENGTH='many' is not a valid int",
            {"BLOBLEDGER_MAX_KEY_LENGTH": "many"},
        ),
        Bad(
            ("object", "list"),
            1,
            r"cannot read settings file .*nope\.toml",
            {"BLOBLEDGER_CONFIG": str(tmp / "nope.toml")},
        ),
    ]


def test_bad_invocations_fail_clearly(settings: Settings, projector, tmp_path: Path) -> None:
    created = cli(settings, "object", "create", LIVE)
    assert created.returncode == 0, created.stderr
    problems = []
    for bad in bad_invocations(tmp_path):
        p = cli(settings, *bad.args, env=bad.env)
        lines = p.stderr.splitlines()
        # usage errors: argparse's usage block and one error line; others: one line
        short = len(lines) <= 6 if bad.status == 2 else len(lines) == 1
        if (
            p.returncode != bad.status
            or "Traceback" in p.stderr
            or not short
            or not re.search(bad.says, p.stderr)
        ):
            problems.append(f"blobledger {' '.join(bad.args)} -> {p.returncode}:\n{p.stderr}")
    assert not problems, "\n\n".join(problems)
    assert not (tmp_path / "out.bin").exists()


def test_json_errors_stay_machine_readable(settings: Settings, projector) -> None:
    p = cli(settings, "object", "get", MISSING, "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout) == {
        "error": "not_found",
        "message": f"object '{MISSING}' not found (or not yet projected)",
    }


def test_a_deleted_object_says_deleted(settings: Settings, projector, tmp_path: Path) -> None:
    key = "errs/gone.txt"
    assert cli(settings, "object", "create", key).returncode == 0
    assert cli(settings, "object", "delete", key).returncode == 0
    deleted = (
        rf"object '{re.escape(key)}' was deleted \(version 2, by erin at [0-9-]+ [0-9:]+ UTC\)"
    )
    for args in (
        ("object", "get", key),
        ("object", "update", key, "--set", "a=1"),
        ("object", "tag", key, "--add", "x"),
        ("object", "delete", key),
        ("get", key, "-o", str(tmp_path / "out.bin")),
        ("put", key, __file__, "--no-follow"),
    ):
        p = cli(settings, *args)
        assert p.returncode == 1, p.stderr
        assert re.fullmatch(rf"blobledger \w+: {deleted}\n", p.stderr), p.stderr
    as_json = cli(settings, "object", "get", key, "--json")
    assert json.loads(as_json.stdout)["error"] == "deleted"
    history = cli(settings, "object", "history", key, "--json")  # the past stays readable
    assert [h["version"] for h in json.loads(history.stdout)] == [1, 2]
