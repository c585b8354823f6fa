"""One chaos run, start to verdict: processes up, load and faults for ``seconds``, drain,
then every check (see ``checks``) and a replay compared with the live read model.

The summary is what the issue note quotes: one line plus the same data as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blobledger.infra.dlq import list_dead_letters
from blobledger.infra.kafka import end_offsets
from blobledger.infra.settings import Settings
from blobledger.infra.stack._process import wait_until
from blobledger.infra.testing import RunningStack
from blobledger.projectors.rebuild import replay
from blobledger.schemas.errors import TimeoutExpired
from tests.integration.support import child_env

from . import checks
from .faults import SERVICES, Monkey, plan
from .load import Actor, Ledger, MetadataActor, Uploader
from .processes import Supervisor
from .sources import MiB, Catalog, Origin

#: the deadline clients give uploads: an attach whose publish timed out but landed has no
#: command behind it, so only the reaper ends it, once this has passed
UPLOAD_DEADLINE = 60
#: how long a client waits for the broker's ack or for the outcome (then: unknown outcome)
CLIENT_WAIT = 10.0
METADATA_ACTORS = ("alice", "bob", "carol")
UPLOADERS = ("dave", "erin")
PROCESSES = {
    "projector": ("projector",),
    "worker-1": ("worker",),
    "worker-2": ("worker", "--local-files", "stream"),
    "reaper": ("reaper", "--interval", "5"),
}
KILLABLE = ["projector", "worker-1", "worker-2"]


@dataclass
class Summary:
    seed: int
    seconds: float
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: not broken invariants, but worth a look (unexpected exits, slow stops)
    findings: list[str] = field(default_factory=list)

    def line(self) -> str:
        c = self.counts
        kills = c.get("kills", {})
        outages = c.get("outages", {})
        return (
            f"chaos seed={self.seed} load={self.seconds:g}s "
            f"kills={sum(kills.values())} {_kv(kills)} "
            f"outages={sum(outages.values())} {_kv(outages)} "
            f"commands={c.get('commands')} accepted={c.get('accepted')} "
            f"rejected={c.get('rejected')} refused={c.get('refused')} "
            f"unknown-outcome={c.get('unknown_outcome')} "
            f"(applied={c.get('unknown_publish_applied')} "
            f"absent={c.get('unknown_publish_absent')} "
            f"published-unanswered={c.get('unknown_published_no_answer')}) "
            f"uploads={c.get('uploads')} {_kv(c.get('uploads_by_state', {}))} "
            f"lost={c.get('lost')} duplicated={c.get('duplicated')} "
            f"mismatched={c.get('mismatched')} replay={c.get('replay')} "
            f"blobs-checked={c.get('blobs_checked')} open-multipart={c.get('open_multipart')} "
            f"unexpected-exits={c.get('unexpected_exits')} problems={len(self.problems)} "
            f"wall={c.get('wall_seconds')}s"
        )

    def as_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "seconds": self.seconds,
                **self.counts,
                "problems": self.problems,
                "findings": self.findings,
            },
            indent=2,
            sort_keys=True,
        )


def _kv(d: dict[str, Any]) -> str:
    return "(" + " ".join(f"{k}={v}" for k, v in sorted(d.items())) + ")"


class ChaosRun:
    def __init__(
        self, stack: RunningStack, settings: Settings, *, seconds: float, seed: int, workdir: Path
    ) -> None:
        self.stack = stack
        self.seconds = seconds
        self.seed = seed
        self.workdir = workdir
        # what the projector, workers and reaper run with: several parts per larger blob,
        # the local origin allowed, a stalled source given up after 3 s
        self.settings = settings.with_(
            min_part_size=5 * MiB,
            source_allow_networks="127.0.0.1/32",
            http_timeout_seconds=3.0,
            upload_deadline_seconds=UPLOAD_DEADLINE,
        )
        self.client_settings = self.settings.with_(wait_timeout_seconds=CLIENT_WAIT)
        self.summary = Summary(seed, seconds)
        self.t0 = time.monotonic()
        self._last_drain_error = ""
        self._end_offsets_failed = False

    # --- phases ------------------------------------------------------------------------
    def execute(self, summary_file: Path) -> Summary:
        """Run every phase; the summary is written to ``summary_file`` whatever happens
        (a failed phase becomes a problem; a pytest timeout still leaves the file)."""
        origin = Origin(self.workdir / "blobs")
        catalog = Catalog(self.workdir / "blobs", origin.url)
        self.supervisor = Supervisor(child_env(self.settings), self.workdir / "logs")
        for name, args in PROCESSES.items():
            self.supervisor.add(name, *args)
        try:
            self.supervisor.start()
            ledger = self._load(catalog)
            self._drain()
            self._verify(ledger)
        except Exception as e:  # the summary still gets written, with what failed
            self.summary.problems.append(
                f"the run failed: {''.join(traceback.format_exception(e))[-3000:]}"
            )
        except BaseException:
            self.summary.problems.append("the run was interrupted (a pytest timeout?)")
            raise
        finally:
            self.summary.counts["wall_seconds"] = round(time.monotonic() - self.t0, 1)
            summary_file.write_text(self.summary.as_json())
            self.supervisor.stop()
            origin.close()
        return self.summary

    def _load(self, catalog: Catalog) -> Ledger:
        ledger, stop = Ledger(), threading.Event()
        actors: list[Actor] = [
            MetadataActor(
                name,
                self.client_settings,
                ledger,
                self.seed,
                stop,
                others=[o for o in METADATA_ACTORS if o != name],
            )
            for name in METADATA_ACTORS
        ]
        actors += [
            Uploader(name, self.client_settings, ledger, self.seed, stop, catalog=catalog)
            for name in UPLOADERS
        ]
        faults = plan(self.seed, self.seconds, KILLABLE)
        monkey = Monkey(self.stack, self.supervisor, faults)
        monkey.start()
        try:
            for a in actors:
                a.start()
            stop.wait(self.seconds)
        finally:
            stop.set()
            monkey.stop()  # every service is up again once it returns
        for a in actors:
            a.join(120)
            if a.is_alive() or a.error is not None:
                self.summary.problems.append(f"client thread {a.actor}: {a.error or 'hung'}")
        c = self.summary.counts
        c["load_seconds"] = round(time.monotonic() - self.t0, 1)
        done = [d for d in monkey.done if d.effective]
        c["kills"] = dict(Counter(d.fault.target for d in done if d.fault.kind == "kill"))
        c["outages"] = dict(Counter(d.fault.target for d in done if d.fault.kind == "outage"))
        c["outage_seconds"] = round(
            sum(d.ended - d.began for d in done if d.fault.kind == "outage"), 1
        )
        c["client_reconnects"] = ledger.reconnects
        for d in monkey.done:
            if d.error:  # the stack must be able to stop and start each service
                self.summary.problems.append(f"outage of {d.fault.target}: {d.error}")
        return ledger

    def _caught_up(self) -> bool:
        """The projector has folded the whole events log and no upload is pending."""
        try:
            rm = checks.read_model(self.settings)
            end = self._log_end()
        except Exception as e:  # a service still coming back, or a broken one: reported
            self._last_drain_error = f"{type(e).__name__}: {e}"
            return False
        self._last_drain_error = (
            f"checkpoints at {rm.checkpoint_total} of {end} events, "
            f"{sum(u[0] == 'pending' for u in rm.uploads.values())} uploads pending"
        )
        return rm.checkpoint_total >= end and all(u[0] != "pending" for u in rm.uploads.values())

    def _log_end(self) -> int:
        """How many events the log holds: ``end_offsets``, or where it fails (a finding,
        reported once), a scan of the whole log."""
        if not self._end_offsets_failed:
            try:
                return sum(end_offsets(self.settings, self.settings.events_topic).values())
            except TimeoutExpired as e:
                self._end_offsets_failed = True
                self.summary.findings.append(
                    f"end_offsets failed ({e}); the drain scans the log instead; partitions: "
                    f"{checks.partition_state(self.settings)}"
                )
        scan = checks.scan_log(self.settings)
        if scan.stuck:
            raise TimeoutExpired(f"the log could not be read to its end: {scan.stuck}")
        return sum(scan.ends.values())

    def _wait_caught_up(self, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        self._last_drain_error = ""
        while time.monotonic() < deadline:
            if self._caught_up():
                return True
            time.sleep(2.0)
        self.summary.problems.append(
            f"not drained within {timeout:.0f}s ({what}): {self._last_drain_error}; "
            f"partitions: {checks.partition_state(self.settings)}"
        )
        return False

    def _drain(self) -> None:
        t = time.monotonic()
        for service in SERVICES:  # the monkey restarted them; make sure they answer
            self.stack.start(service)
        if not wait_until(self.supervisor.all_alive, timeout=30):
            self.summary.problems.append("supervised processes not all running after the load")
        # pending uploads end by their worker or, past the deadline, by the reaper
        self._wait_caught_up(UPLOAD_DEADLINE + 90, "after the load")
        stops = self.supervisor.stop(["worker-1", "worker-2", "reaper"])
        self._note_stops(stops)
        left = checks.open_multipart_uploads(self.settings)
        self.summary.counts["open_multipart_before_reap"] = len(left)
        if left:
            self.summary.findings.append(f"multipart uploads left open by workers: {left[:5]}")
        # one reaper pass, as a deployment runs it: with no worker left running, every
        # multipart upload is abandoned
        reaper = ["reaper", "--once", "--multipart-older-than", "0"]
        reap = subprocess.run(
            [sys.executable, "-m", "blobledger.infra.cli", *reaper],
            env=child_env(self.settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if reap.returncode != 0:
            self.summary.problems.append(f"reaper pass failed: {reap.stderr[-2000:]}")
        self._wait_caught_up(60, "after the reaper pass")
        self._note_stops(self.supervisor.stop(["projector"]))
        self.summary.counts["drain_seconds"] = round(time.monotonic() - t, 1)

    def _note_stops(self, stops: dict[str, str]) -> None:
        for name, how in stops.items():
            if how != "exit 0":
                tail = self.supervisor.procs[name].tail(10)
                self.summary.findings.append(f"{name} on SIGTERM: {how}; log tail:\n{tail}")

    def _verify(self, ledger: Ledger) -> None:
        t = time.monotonic()
        s, c, problems = self.settings, self.summary.counts, self.summary.problems
        records = list(ledger.records)
        scan = checks.scan_log(s)
        rm = checks.read_model(s)
        c["log_events"] = sum(scan.counts.values())
        for name, check in (
            ("commands", lambda: checks.check_commands(records, rm, scan)),
            ("uploads", lambda: checks.check_uploads(records, rm)),
            ("blobs", lambda: checks.check_blobs(s, rm)),
            ("multipart", lambda: self._check_multipart()),
            ("replay", lambda: self._check_replay()),
            ("dead letters", lambda: self._check_dead_letters()),
        ):
            try:
                counts, found = check()
            except Exception as e:  # the other checks still run; the summary says why
                counts, found = {}, [f"the {name} check failed: {type(e).__name__}: {e}"]
            c.update(counts)
            problems += found
        exits = [e for m in self.supervisor.procs.values() for e in m.exits]
        c["starts"] = {m.name: m.starts for m in self.supervisor.procs.values()}
        c["unexpected_exits"] = len(exits)
        for e in exits:
            self.summary.findings.append(
                f"{e.name} exited by itself (status {e.returncode}) after {e.uptime:.1f}s; "
                f"log tail:\n{e.tail}"
            )
        c["tracebacks_in_logs"] = {
            m.name: m.log_path.read_text(errors="replace").count("Traceback")
            for m in self.supervisor.procs.values()
        }
        c["verify_seconds"] = round(time.monotonic() - t, 1)

    def _check_multipart(self) -> checks.Findings:
        still_open = checks.open_multipart_uploads(self.settings)
        problems = (
            [f"multipart uploads open after the reaper: {still_open[:5]}"] if still_open else []
        )
        return {"open_multipart": len(still_open)}, problems

    def _check_replay(self) -> checks.Findings:
        report = replay(self.settings, verify=True, swap=False, progress=False, workers=1)
        counts = {
            "replay": "verified" if report.verified else "DIFFERS",
            "replay_events": report.events,
        }
        if report.verified:
            return counts, []
        return counts, [f"read model differs from a fresh replay: {report.differences}"]

    def _check_dead_letters(self) -> checks.Findings:
        dead = list_dead_letters(self.settings)
        return {"dead_letters": len(dead)}, [
            f"{len(dead)} dead letters, e.g. {dead[0]}"
        ] if dead else []
