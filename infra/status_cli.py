"""``blobledger status [--json] [--watch [SECONDS]]``.

Exit status for monitoring scripts: 0 healthy, 1 degraded, 2 down (see
:func:`blobledger.infra.status.classify`). ``--watch`` redraws in place on a terminal
(rich) and prints one report per interval otherwise (one JSON line each with ``--json``),
until Ctrl+C; it then exits with the last report's status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from blobledger.infra import logging as blog
from blobledger.infra.settings import Settings
from blobledger.infra.status import (
    StatusReport,
    Verdict,
    classify,
    gather,
)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render(report: StatusReport, verdict: Verdict) -> str:
    """The report as text for a person."""
    at = time.strftime("%H:%M:%S", time.localtime(report.taken_at))
    lines = [f"blobledger {verdict.state.upper()} (exit {verdict.exit_code})  {at}  "
             f"data dir {report.data_dir}"]
    lines += [f"  ! {reason}" for reason in verdict.reasons]
    lines.append("\nservices")
    for s in report.services:
        pid = f"pid {s.pid}" if s.pid else ("external" if not s.embedded else "-")
        lines.append(
            f"  {s.name:<10} {'healthy' if s.healthy else 'DOWN':<8} {pid:<11} {s.endpoint}"
        )
    if report.supervisor_pid:
        lines.append(f"\nprocesses (`blobledger up`, supervisor pid {report.supervisor_pid})")
        for p in report.processes:
            pid = f"pid {p.pid}" if p.pid else "-"
            when = f"up {_age(p.seconds)}" if p.state == "running" else f"in {_age(p.seconds)}"
            lines.append(
                f"  {p.name:<12} {p.state:<8} {pid:<11} {when:<8} restarts {p.restarts:<3} {p.log}"
            )
    else:
        lines.append("\nprocesses: no `blobledger up` supervisor runs")
    if report.groups:
        lines.append("\nconsumers")
    for g in report.groups:
        about = f"{g.members} member(s)" if g.members else g.detail
        lines.append(
            f"  {g.role:<10} {g.verdict:<10} {g.group}"
            + (f"  ({about})" if g.verdict != "none" else "")
        )
        if g.partitions:
            lines.append(
                f"    {g.topic}: lag {g.lag}, oldest unprocessed {_age(g.oldest_age)}; "
                + " ".join(f"p{p.partition}={p.position}/{p.end}" for p in g.partitions)
            )
        else:
            lines.append(f"    {g.topic}: lag unknown")
    rm = report.read_model
    if rm is not None and rm.exists:
        fold = rm.checkpoints
        last = min((c.age for c in fold), default=None)
        lines.append("\nread model")
        lines.append(
            "  checkpoints  "
            + (" ".join(f"p{c.partition}={c.next_offset}" for c in fold) or "none yet")
            + (f"  (last fold {_age(last)} ago)" if last is not None else "")
        )
        lines.append(
            f"  last minute  {_count(rm.events_last_minute)} events folded, "
            f"{_count(rm.uploads_last_minute)} uploads stored "
            f"({_bytes(rm.bytes_last_minute or 0)}, {_rate(rm.bytes_last_minute)})"
        )
        done = ", ".join(f"{k} {v}" for k, v in sorted(rm.finished_last_hour.items())) or "none"
        lines.append(
            f"  uploads      pending {rm.pending_uploads} (oldest {_age(rm.oldest_pending_age)},"
            f" past deadline {rm.past_deadline}); finished last hour: {done}"
        )
    elif rm is not None:
        lines.append("\nread model: not created yet (no projector has run)")
    if report.dead_letters is not None:
        d = report.dead_letters
        lines.append(f"\ndead letters  {d.count} in {d.topic} (oldest {_age(d.oldest_age)})")
    lines += [f"\nerror: {e}" for e in report.errors if e not in verdict.reasons]
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def _rate(n: int | None) -> str:
    return "?" if n is None else f"{_bytes(n // 60)}/s"


def _body(report: StatusReport, verdict: Verdict) -> dict[str, object]:
    return {
        "state": verdict.state,
        "exit_code": verdict.exit_code,
        "reasons": list(verdict.reasons),
        **report.to_json(),
    }


def _once(settings: Settings) -> tuple[StatusReport, Verdict]:
    report = gather(settings)
    return report, classify(report)


def _watch(settings: Settings, interval: float, as_json: bool) -> int:
    code = 0
    try:
        if sys.stdout.isatty() and not as_json:
            from rich.live import Live
            from rich.text import Text

            with Live(Text("gathering ..."), auto_refresh=False, screen=False) as live:
                while True:
                    report, verdict = _once(settings)
                    code = verdict.exit_code
                    live.update(Text(render(report, verdict)), refresh=True)
                    time.sleep(interval)
        while True:
            report, verdict = _once(settings)
            code = verdict.exit_code
            print(json.dumps(_body(report, verdict), default=str) if as_json else
                  render(report, verdict) + "\n", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return code


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="blobledger status",
        description="Health of the services, consumers (lag), uploads and dead letters. "
        "Exit status: 0 healthy, 1 degraded, 2 down.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl+C",
    )
    args = p.parse_args(argv)
    blog.configure()
    settings = Settings.from_env()
    if args.watch is not None:
        return _watch(settings, max(0.5, args.watch), args.json)
    report, verdict = _once(settings)
    if args.json:
        print(json.dumps(_body(report, verdict), default=str))
    else:
        print(render(report, verdict))
    return verdict.exit_code
