"""Progress of a long command (``put``, ``replay``), told one way on stderr.

On a terminal: rich's live bar (done/total, rate, ETA), redrawn in place. Anywhere else
(a pipe, a log file, CI) no carriage return is written: a plain line every few seconds and
a final one, so a log keeps a readable history instead of kilobytes of redraws. With
``--progress json`` the same samples are JSON lines, for scripts.

The rate is measured over a sliding window and evaluated when drawn, so a stall shows as
a falling rate rather than the last good one (the worker's own meter uses the same window).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TextIO

Unit = Literal["bytes", "events"]
Clock = Callable[[], float]
MODES = ("auto", "plain", "json", "none")
#: seconds between plain lines: often enough to show movement, rare enough for a log
PLAIN_INTERVAL = 2.0
#: seconds between JSON lines: scripts want fresher numbers than a human reading a log
JSON_INTERVAL = 1.0
MiB = 1024 * 1024
GiB = 1024 * MiB


class RateWindow:
    """Throughput over the last ``window`` seconds of cumulative samples.

    A window rather than the average since the start: the rate is the current one (a
    burst of parts, then a stall, reads as a stall). The base is the newest sample at or
    before the window's start, so a rate always spans at least one real interval."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()  # rich reads the rate from its refresh thread

    def reset(self, done: int, now: float) -> None:
        """Start over at ``done`` (a new phase counts from its own start)."""
        with self._lock:
            self._samples.clear()
            self._samples.append((now, done))

    def add(self, done: int, now: float) -> None:
        with self._lock:
            self._samples.append((now, done))
            cutoff = now - self.window
            while len(self._samples) > 1 and self._samples[1][0] <= cutoff:
                self._samples.popleft()

    def rate(self, now: float) -> float:
        """Units per second over the window ending ``now`` (0 before two samples span time
        or when nothing moved within the window)."""
        with self._lock:
            if not self._samples:
                return 0.0
            cutoff = now - self.window
            base_t, base_done = self._samples[0]
            for t, d in self._samples:
                if t > cutoff:
                    break
                base_t, base_done = t, d
            last = self._samples[-1][1]
        dt = now - base_t
        return max(0.0, (last - base_done) / dt) if dt > 0 else 0.0


def amount(n: float, unit: Unit) -> str:
    if unit == "events":
        return f"{n:,.0f} events"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def rate_text(per_second: float, unit: Unit) -> str:
    """Bytes as decimal MB/s (the unit of network links and of the benchmarks)."""
    if unit == "events":
        return f"{per_second:,.0f} events/s"
    return f"{per_second / 1e6:.1f} MB/s"


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressDisplay:
    """The shared bookkeeping (phase, done, total, rate); subclasses draw. This base draws
    nothing: it is the display of ``--progress none``."""

    def __init__(
        self,
        label: str,
        unit: Unit,
        *,
        stream: TextIO | None = None,
        phase: str = "",
        total: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.label, self.unit, self.stream, self.clock = label, unit, stream, clock
        self.phase, self.total, self.done = phase, total, 0
        self.started = clock()
        self.window = RateWindow()
        self.window.reset(0, self.started)
        self.finished = False

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def update(self, done: int, total: int | None = None, *, phase: str | None = None) -> None:
        """``done`` is cumulative within ``phase``; a new phase restarts the rate."""
        if self.finished:
            return
        now = self.clock()
        changed = False
        if phase is not None and phase != self.phase:
            self.phase, changed = phase, True
            self.window.reset(done, now)
        else:
            self.window.add(done, now)
        self.done = done
        if total is not None:
            self.total = total
        self._draw(now, changed)

    def finish(
        self,
        done: int | None = None,
        total: int | None = None,
        *,
        phase: str | None = None,
        note: str = "",
    ) -> None:
        """The last word (always shown): the outcome, the amount and the average rate."""
        if self.finished:
            return
        self.finished = True
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if phase is not None:
            self.phase = phase
        self._final(self.clock(), note)

    def tick(self) -> None:
        """Nothing new was reported: redraw if due, so a stall shows as a falling rate."""
        if not self.finished:
            self._draw(self.clock(), False)

    def close(self) -> None:
        """Stop drawing (a display not finished, e.g. on an error, says nothing more)."""
        self.finished = True

    # --- what a line says ------------------------------------------------------------------
    def rate(self, now: float | None = None) -> float:
        """The current rate; once finished, the average over the whole run."""
        now = self.clock() if now is None else now
        if self.finished:
            return self.done / max(now - self.started, 1e-9)
        return self.window.rate(now)

    def eta(self, now: float | None = None) -> float | None:
        r = self.rate(now)
        if not self.total or r <= 0:
            return None
        return max(0, self.total - self.done) / r

    def progress_text(self, now: float) -> str:
        if not self.done and not self.total:
            return ""  # nothing counted yet (waiting): the phase says it all
        if self.total:
            frac = min(1.0, self.done / self.total)
            shown = self._same_scale(self.done, self.total)
            return (
                f"{shown} ({frac:.0%}) at {rate_text(self.rate(now), self.unit)}, "
                f"ETA {clock_text(self.eta(now))}"
            )
        return f"{amount(self.done, self.unit)} at {rate_text(self.rate(now), self.unit)}"

    def final_text(self, now: float, note: str) -> str:
        shown = self._same_scale(self.done, self.total)
        average = rate_text(self.rate(now), self.unit)
        return f"{self.label}: {self.phase} {shown} in {now - self.started:.1f}s ({average}){note}"

    def _same_scale(self, done: int, total: int | None) -> str:
        """``12.0/48.0 MiB``: both numbers in the total's unit."""
        if total is None:
            return amount(done, self.unit)
        if self.unit == "events":
            return f"{done:,}/{total:,} events"
        scale, name, digits = (GiB, "GiB", 2) if total >= GiB else (MiB, "MiB", 1)
        return f"{done / scale:.{digits}f}/{total / scale:.{digits}f} {name}"

    # --- drawing, per mode --------------------------------------------------------------------
    def _draw(self, now: float, phase_changed: bool) -> None:
        """Show the new state, if this mode shows it now."""

    def _final(self, now: float, note: str) -> None:
        """Show the outcome."""


class PlainLines(ProgressDisplay):
    """For a pipe or a log: a line every ``interval`` seconds (a stall too: its rate falls),
    then a final line; never a carriage return."""

    interval = PLAIN_INTERVAL

    def __init__(self, label: str, unit: Unit, **kw: Any) -> None:
        super().__init__(label, unit, **kw)
        self._last_line = self.started

    def _draw(self, now: float, phase_changed: bool) -> None:
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        return f"{self.label}: {self.phase} {self.progress_text(now)}".rstrip()

    def _final(self, now: float, note: str) -> None:
        self._write(self.final_text(now, note))

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()


class JsonLines(PlainLines):
    """One JSON object per line (``{"progress": label, "phase", "done", "total", "rate",
    "elapsed", "final"}``), for scripts; the rate is per second, in bytes or events."""

    interval = JSON_INTERVAL

    def line(self, now: float, *, final: bool = False, note: str = "") -> str:
        elapsed = now - self.started
        body: dict[str, object] = {
            "progress": self.label,
            "phase": self.phase,
            "unit": self.unit,
            "done": self.done,
            "total": self.total,
            "rate": round(self.rate(now), 1),
            "elapsed": round(elapsed, 2),
            "final": final,
        }
        if note:
            body["note"] = note.strip(" ()")
        return json.dumps(body)

    def _final(self, now: float, note: str) -> None:
        self._write(self.line(now, final=True, note=note))


class RichBar(ProgressDisplay):
    """For a terminal: rich's live progress bar, redrawn in place 4 times a second."""

    def __init__(self, label: str, unit: Unit, **kw: Any) -> None:
        super().__init__(label, unit, **kw)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            Task,
            TextColumn,
        )
        from rich.text import Text

        display = self

        class RateColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(rate_text(display.rate(), display.unit), style="progress.data.speed")

        class EtaColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                if display.finished:
                    return Text(clock_text(display.clock() - display.started), "progress.elapsed")
                return Text(f"ETA {clock_text(display.eta())}", style="progress.remaining")

        amount_column = (
            DownloadColumn(binary_units=True) if unit == "bytes" else MofNCompleteColumn()
        )
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            amount_column,
            RateColumn(),
            EtaColumn(),
            console=Console(file=self.stream or sys.stderr),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task(self._describe(), total=self.total)
        self._bar.start()

    def _describe(self) -> str:
        return f"{self.label} {self.phase}".strip()

    def _draw(self, now: float, phase_changed: bool) -> None:
        if phase_changed:
            self._bar.reset(self._task, completed=self.done, description=self._describe())
        self._bar.update(self._task, completed=self.done, total=self.total)

    def _final(self, now: float, note: str) -> None:
        total = self.total or self.done or 1
        self._bar.update(
            self._task, completed=self.done, total=total, description=self._describe() + note
        )
        self._bar.stop()

    def close(self) -> None:
        super().close()
        self._bar.stop()


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=MODES,
        default=None,
        help="progress on stderr: auto (a live bar on a terminal, a plain line every few "
        "seconds otherwise), plain, json (one object per line), none; "
        "default auto, or none with --json",
    )


def progress_mode(mode: str | None, *, as_json: bool = False) -> str:
    """``--progress`` as given, else ``auto``; with ``--json`` ``none``, so stdout and
    stderr stay quiet for scripts unless they ask for JSON progress lines."""
    return mode or ("none" if as_json else "auto")


def open_display(
    label: str,
    unit: Unit,
    mode: str = "auto",
    *,
    stream: TextIO | None = None,
    phase: str = "",
    total: int | None = None,
) -> ProgressDisplay:
    """The display for ``mode`` (see :func:`progress_mode`): ``auto`` draws rich's bar
    when ``stream`` (stderr) is a terminal and plain lines otherwise."""
    out = stream or sys.stderr
    kw: dict[str, Any] = {"stream": out, "phase": phase, "total": total}
    if mode == "none":
        return ProgressDisplay(label, unit, **kw)
    if mode == "json":
        return JsonLines(label, unit, **kw)
    if mode == "auto" and out.isatty():
        return RichBar(label, unit, **kw)
    return PlainLines(label, unit, **kw)
