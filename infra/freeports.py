"""Free loopback ports for services we start ourselves, picked below the ephemeral range.

Why not ``bind(("127.0.0.1", 0))``: the kernel hands those out of the ephemeral range,
the same pool every outgoing connection draws its local port from. Between picking a
port and the service binding it (seconds, for a stack that starts in chains), one of the
process's own client connections can take it, and the service dies with "address already
in use". Below the range only listeners ever hold a port, and those we can see.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

#: lowest port handed out; below it sit well-known and registered services
FLOOR = 10000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default if unknown)."""
    try:
        low, high = _RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def bindable(port: int) -> bool:
    """Whether nothing holds ``port`` on 127.0.0.1 right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(
    count: int,
    *,
    partner: Callable[[int], int] | None = None,
    with_partner: int = 0,
    avoid: Iterable[int] = (),
) -> list[int]:
    """``count`` distinct free ports below the ephemeral range, in random order.

    The first ``with_partner`` also get ``partner(port)`` checked free and kept out of the
    rest (SeaweedFS pairs each HTTP port with a gRPC one). ``avoid`` is never returned.
    Another listener may still bind one first; the service then fails fast naming it."""
    ceiling = ephemeral_range()[0] - 1
    if ceiling - FLOOR < 4 * (count + with_partner):
        raise RuntimeError(
            f"too few ports below the ephemeral range ({FLOOR}..{ceiling}); "
            "lower net.ipv4.ip_local_port_range's start or set the ports explicitly"
        )
    rng = random.SystemRandom()
    taken = set(avoid)
    chosen: list[int] = []
    for _ in range(200 * count):
        if len(chosen) == count:
            break
        port = rng.randint(FLOOR, ceiling)
        pair = partner(port) if partner is not None and len(chosen) < with_partner else None
        if port in taken or not bindable(port):
            continue
        if pair is not None and (
            pair in taken or pair == port or not FLOOR <= pair <= ceiling or not bindable(pair)
        ):
            continue
        chosen.append(port)
        taken.add(port)
        if pair is not None:
            taken.add(pair)
    if len(chosen) < count:
        raise RuntimeError(f"found only {len(chosen)} of {count} free ports in {FLOOR}..{ceiling}")
    return chosen
