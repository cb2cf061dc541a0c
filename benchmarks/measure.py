"""Resident memory of a process and all its descendants (Ray's processes included), read from /proc.

Shared by the benchmarks: :class:`PeakMemory` samples a process tree while in use and keeps the
peak total and, at that moment, how it splits between the driver, Flower's client actors and
Ray's own processes (GCS, raylet, dashboard, agents, log monitor). Resident memory counts shared
library pages in every process that maps them, so the total overstates what the machine gives up.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, resident bytes, command line) of every readable process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            rss = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, rss, cmdline)
    return found


def kind(cmdline: str, is_root: bool) -> str:
    """What a process of the tree is: the driver, a client actor (Flower's ``ClientAppActor``), or Ray's own."""
    if is_root:
        return "driver"
    return "actors" if "ClientAppActor" in cmdline else "ray"


def tree_memory(root_pid: int) -> dict[str, int]:
    """Resident bytes of ``root_pid``'s tree by :func:`kind`, with ``total``, the actor count ``n_actors``
    and the largest actor ``actor_max``."""
    procs = _processes()
    split = {"total": 0, "driver": 0, "actors": 0, "ray": 0, "n_actors": 0, "actor_max": 0}
    for pid, (_, rss, cmdline) in procs.items():
        p = pid
        while p and p != root_pid:
            p = procs.get(p, (0, 0, ""))[0]
        if p == root_pid:
            what = kind(cmdline, pid == root_pid)
            split[what] += rss
            split["total"] += rss
            if what == "actors":
                split["n_actors"] += 1
                split["actor_max"] = max(split["actor_max"], rss)
    return split


class PeakMemory:
    """Samples the tree of ``root_pid`` (default: this process) every 0.2 s while in use.

    ``peak`` is the largest total seen, ``at_peak`` its split (:func:`tree_memory`), and
    ``actor_peak`` the most one client actor held at any sample.
    """

    def __init__(self, root_pid: int | None = None) -> None:
        self.root_pid = root_pid or os.getpid()

    def __enter__(self):
        self.peak, self.at_peak, self.actor_peak = 0, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self) -> None:
        split = tree_memory(self.root_pid)
        if split["total"] > self.peak:
            self.peak, self.at_peak = split["total"], split
        self.actor_peak = max(self.actor_peak, split["actor_max"])

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
