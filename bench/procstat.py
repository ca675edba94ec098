"""CPU time and memory of a process tree, read from /proc (Linux only).

``TreeWatch`` samples a root process and all its descendants every ``interval`` seconds, so
a prefork server's workers are counted too, including workers that start after the load
began. CPU is utime+stime per process (children's cutime/cstime are not added: a worker
that dies and is reaped would then be counted twice). A worker that dies between two
samples loses at most ``interval`` seconds of its CPU.
"""
from __future__ import annotations

import os
import threading

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, in seconds; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 (proc(5) fields 14 and 15).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int | None:
    """A 'kB' line of /proc/PID/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def find_pids(*names: str) -> list[int]:
    """Processes whose comm is one of names (e.g. the MariaDB server)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as fh:
                if fh.read().strip() in names:
                    pids.append(int(name))
        except OSError:
            continue
    return pids


class TreeWatch:
    """Samples CPU and peak RSS of a process tree in a background thread."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root = root
        self.interval = interval
        self.base: dict[int, float] = {}      # CPU seconds at mark() (0 for later processes)
        self.last: dict[int, float] = {}      # CPU seconds at the latest sample
        self.hwm_kb: dict[int, int] = {}      # VmHWM per process, largest seen
        self.rss_kb: dict[int, int] = {}      # VmRSS per process, latest
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="treewatch", daemon=True)

    def start(self) -> "TreeWatch":
        self.sample()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for pid in descendants(self.root):
            cpu = cpu_seconds(pid)
            hwm = status_kb(pid, "VmHWM")
            rss = status_kb(pid, "VmRSS")
            with self.lock:
                if cpu is not None:
                    self.last[pid] = cpu
                    self.base.setdefault(pid, 0.0)
                if hwm is not None:
                    self.hwm_kb[pid] = max(hwm, self.hwm_kb.get(pid, 0))
                if rss is not None:
                    self.rss_kb[pid] = rss

    def mark(self) -> None:
        """Start counting CPU from now."""
        self.sample()
        with self.lock:
            self.base = dict(self.last)

    def cpu_since_mark(self) -> float:
        with self.lock:
            return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.last.items())

    def peak_rss_kb(self) -> int:
        """The largest VmHWM of any one process in the tree (per worker)."""
        with self.lock:
            return max(self.hwm_kb.values(), default=0)

    def rss_now_kb(self) -> int:
        """Current VmRSS summed over the live tree."""
        self.sample()
        live = set(descendants(self.root))
        with self.lock:
            return sum(kb for pid, kb in self.rss_kb.items() if pid in live)

    def processes(self) -> int:
        with self.lock:
            return len(self.last)
