"""The dispatcher's last line of defence: every failure of a subcommand ends as one line
on stderr and an exit status, never as a bare traceback."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from blobledger.infra import cli
from blobledger.schemas.errors import ConflictError

FAILURES: dict[str, BaseException] = {
    "bug": ZeroDivisionError("division by zero"),
    "missing_dir": FileNotFoundError(errno.ENOENT, "No such file or directory", "out/x.bin"),
    "disk_full": OSError(errno.ENOSPC, "No space left on device"),
    "conflict": ConflictError("object 'docs/a' is at version 2", current_version=2),
    "interrupt": KeyboardInterrupt(),
}


def fail(argv: list[str]) -> int:
    """A subcommand that raises what its first argument names."""
    raise FAILURES[argv[0]]


@pytest.fixture(autouse=True)
def fake_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "fake", (f"{__name__}:fail", "fails on purpose"))
    monkeypatch.delenv("BLOBLEDGER_DEBUG", raising=False)


@pytest.mark.parametrize(
    ("failure", "status", "line"),
    [
        (
            "bug",
            1,
            "blobledger fake: internal error: ZeroDivisionError: division by zero "
            "(run with -v / BLOBLEDGER_DEBUG=1 for the traceback)",
        ),
        ("missing_dir", 1, "blobledger fake: No such file or directory: 'out/x.bin'"),
        ("disk_full", 1, "blobledger fake: No space left on device"),
        ("conflict", 1, "blobledger fake: object 'docs/a' is at version 2"),
        ("interrupt", 130, "blobledger fake: interrupted"),
    ],
)
def test_each_failure_is_one_line_and_a_status(
    capsys: pytest.CaptureFixture[str], failure: str, status: int, line: str
) -> None:
    assert cli.main(["fake", failure]) == status
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


def test_json_callers_get_a_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fake", "conflict", "--json"]) == 1
    assert cli.main(["fake", "bug", "--json"]) == 1
    out, _ = capsys.readouterr()
    conflict, bug = (json.loads(line) for line in out.splitlines())
    assert conflict == {"error": "conflict", "message": "object 'docs/a' is at version 2"}
    assert bug["error"] == "internal" and "ZeroDivisionError" in bug["message"]


@pytest.mark.parametrize("how", ["-v", "env"])
def test_verbose_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv("BLOBLEDGER_DEBUG", "1")
    assert cli.main(["-v", "fake", "bug"] if how == "-v" else ["fake", "bug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1] == (
        "blobledger fake: internal error: ZeroDivisionError: division by zero"
    )


@pytest.mark.parametrize("lines", ["10**9", "1"])
def test_a_closed_stdout_ends_quietly(lines: str) -> None:
    """``blobledger ... | head``: the reader went away, while the command wrote or at its
    final flush; no message, no "Exception ignored"."""
    code = (
        "import sys; from blobledger.infra import cli\n"
        "def spew(argv):\n"
        f"    for _ in range({lines}): print('x' * 1000)\n"
        "cli.COMMANDS['spew'] = ('__main__:spew', '')\n"
        "sys.exit(cli.main(['spew']))\n"
    )
    r, w = os.pipe()
    os.close(r)  # nobody will read
    p = subprocess.run(
        [sys.executable, "-c", code], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60
    )
    os.close(w)
    assert (p.returncode, p.stderr) == (141, "")
