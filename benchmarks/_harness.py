"""Helpers of storage_path.py: child processes, the arrival watcher, data sets and the result record."""
from __future__ import annotations

import fcntl
import filecmp
import os
import re
import resource
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil
from inotify_simple import INotify, flags

MiB = 1 << 20

_children: list[Child] = []  # every child still running; stop_all() ends them
_our_pids: set[int] = {os.getpid()}  # this benchmark and every child it ever started


@dataclass(frozen=True)
class DataSet:
    name: str
    count: int
    size: int

    @property
    def total(self) -> int:
        return self.count * self.size

    def names(self) -> list[str]:
        return [f"f{i:05d}.bin" for i in range(self.count)]


@dataclass
class Result:
    set: str
    mode: str
    files_s: float | None = None
    mib_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rss: tuple[int | None, int | None] = (None, None)  # sender / receiver (or push / pull) peak RSS
    cpu: tuple[float | None, float | None] = (None, None)  # sender / receiver CPU %, 100 = one core
    threads: str = ""  # CPU per thread of sender and receiver
    spread: tuple[float, float] | None = None  # lowest and highest MiB/s over the repeats
    other_cpu: float | None = None  # CPU % of other users' processes during the run (a shared machine)
    status: str = "ok"
    notes: list[str] = field(default_factory=list)
    n: int = 1  # --scale: HiDRA streams and receivers, raw zmq pairs or cp processes in parallel


class Child:
    """A child process in its own session (Ctrl-C reaches only us), its output in a log file."""

    def __init__(self, argv: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, env=env)
        _children.append(self)
        _our_pids.add(self.popen.pid)
        self.ps = psutil.Process(self.popen.pid)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` in the output; raises if the child exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.output()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.popen.poll() is not None:
                raise RuntimeError(f"{os.path.basename(self.log_path)}: exited with {self.popen.returncode}: "
                                   f"{self.output()[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{os.path.basename(self.log_path)}: no {pattern!r} within {timeout:.0f} s: "
                                   f"{self.output()[-800:]}")
            time.sleep(0.02)

    def descendants(self) -> list[psutil.Process]:
        """The child's live descendants (a receiver group's workers), counted as this benchmark's from now on
        (see OtherLoad)."""
        try:
            procs = self.ps.children(recursive=True)
        except psutil.Error:
            return []
        _our_pids.update(p.pid for p in procs)
        return procs

    def cpu_seconds(self) -> float:
        """User + system time of the child, of its live descendants and of those it has reaped."""
        total = 0.0
        for proc in [self.ps, *self.descendants()]:
            try:
                times = proc.cpu_times()
            except psutil.Error:  # a worker that just exited: its parent's children_* has it once reaped
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds per thread: "main" (tid = pid), libzmq's "ZMQbg/..." threads, other threads "py-<tid>";
        the threads of the child's descendants are summed over all of them under "workers <label>", "py" for
        every other thread.

        Threads of the same name are summed: a process that sent with copy=False has a second ZMQ context
        (pyzmq's garbage collector) with its own, nearly idle, "ZMQbg/IO/0" thread.
        """
        out: dict[str, float] = {}
        for pid in [self.popen.pid, *(p.pid for p in self.descendants())]:
            prefix = "" if pid == self.popen.pid else "workers "
            for tid, name, seconds in _threads(pid):
                label = "main" if tid == pid else name if name.startswith("ZMQ") else "py" if prefix else f"py-{tid}"
                out[prefix + label] = out.get(prefix + label, 0.0) + seconds
        return out

    def peak_rss(self) -> int | None:
        """VmHWM: the true peak resident set size since the process started; with descendants, the sum of
        theirs and its own (what the group needed at most)."""
        pids = [self.popen.pid, *(p.pid for p in self.descendants())]
        peaks = [peak for peak in map(_peak_rss, pids) if peak is not None]
        return sum(peaks) if peaks else None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; descendants (a receiver group's workers) that outlive the child
        are killed."""
        left: list[psutil.Process] = []
        if self.popen.poll() is None:
            left = self.descendants()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for orphan in psutil.wait_procs(left, timeout=5)[1]:  # NOTE: psutil checks the pid was not reused
            orphan.kill()
        self._log.close()
        if self in _children:
            _children.remove(self)
        return self.popen.returncode


def _threads(pid: int) -> list[tuple[int, str, float]]:
    """(tid, name, CPU seconds) of each thread of ``pid``."""
    ticks, out = os.sysconf("SC_CLK_TCK"), []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        out.append((int(tid), name, (int(fields[11]) + int(fields[12])) / ticks))
    return out


def _peak_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> str:
    """"N cores, <CPU model>, M GiB RAM": what a benchmark's figures were measured on."""
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores, {model}, {total / (1 << 30):.0f} GiB RAM"


def thread_share(before: dict[str, float], after: dict[str, float], wall: float) -> str:
    """"name 57%, ..." for the threads that used at least 1% of a core between two ``thread_cpu`` samples."""
    shares = {name: 100 * (after[name] - before.get(name, 0.0)) / wall for name in after}
    return ", ".join(f"{name} {pct:.0f}%" for name, pct in sorted(shares.items(), key=lambda x: -x[1]) if pct >= 1)


def _cpu_ticks() -> tuple[int, int, int]:
    """Machine-wide user + system ticks, those of kernel threads, and those of this benchmark and its children."""
    with open("/proc/stat") as stat:
        user, nice, system = (int(x) for x in stat.readline().split()[1:4])
    kernel = ours = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(fields[6]) & 0x00200000:  # PF_KTHREAD: writeback and the like, partly on our behalf
            kernel += ticks
        elif int(entry) in _our_pids:
            ours += ticks
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # children already reaped (cp, sync, ...)
    ours += round((children.ru_utime + children.ru_stime) * os.sysconf("SC_CLK_TCK"))
    return user + nice + system, kernel, ours


class OtherLoad:
    """CPU used by processes that are not this benchmark's (short-lived ones included): on a shared machine,
    what competed with a run. Interrupt and softirq time (loopback TCP) is not counted."""

    def __init__(self) -> None:
        self._start, self._t0 = _cpu_ticks(), time.monotonic()

    def percent(self) -> float:
        end, wall = _cpu_ticks(), time.monotonic() - self._t0
        busy, kernel, ours = (e - s for e, s in zip(end, self._start))
        return max(0.0, 100 * (busy - kernel - ours) / os.sysconf("SC_CLK_TCK") / wall)


def stop_all() -> None:
    for child in list(_children):
        try:
            child.stop(timeout=5)
        except Exception:  # keep going: every other child must still be stopped
            pass


class ArrivalWatcher(threading.Thread):
    """Timestamps (time.monotonic) each expected name renamed into ``root`` (IN_MOVED_TO, not *.part)."""

    def __init__(self, root: str, names: list[str]) -> None:
        super().__init__(name="arrival-watcher", daemon=True)
        self.root = root
        self.expected = set(names)
        self.arrivals: dict[str, float] = {}
        self.overflowed = False
        self._done = threading.Event()
        self._closing = False
        self._inotify = INotify()
        self._inotify.add_watch(root, flags.MOVED_TO)

    def run(self) -> None:
        try:
            while not self._closing and not self._done.is_set():
                events = self._inotify.read(timeout=50)
                now = time.monotonic()
                for event in events:
                    if event.mask & flags.Q_OVERFLOW:
                        self.overflowed = True
                    elif event.name in self.expected and event.name not in self.arrivals:
                        self.arrivals[event.name] = now
                if self.overflowed:  # events were lost: fall back to listing the directory
                    for name in self.expected.intersection(os.listdir(self.root)).difference(self.arrivals):
                        self.arrivals[name] = now
                if len(self.arrivals) >= len(self.expected):
                    self._done.set()
        finally:
            self._inotify.close()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def close(self) -> None:
        self._closing = True
        self.join(5)


def generate(directory: str, ds: DataSet) -> None:
    """``ds.count`` files of random bytes (written in pieces of at most 8 MiB)."""
    os.makedirs(directory, exist_ok=True)
    for name in ds.names():
        with open(os.path.join(directory, name), "wb") as out:
            left = ds.size
            while left:
                piece = min(left, 8 * MiB)
                out.write(os.urandom(piece))
                left -= piece


def move_all(names: list[str], src: str, dst: str) -> None:
    for name in names:
        os.rename(os.path.join(src, name), os.path.join(dst, name))


def verify(names: list[str], reference: str, copy: str, size: int, samples: int = 4) -> str | None:
    """None if every copy has the right size and a few sampled ones are byte-identical, else the problem."""
    wrong = [n for n in names if not os.path.exists(os.path.join(copy, n))
             or os.path.getsize(os.path.join(copy, n)) != size]
    if wrong:
        return f"{len(wrong)} files missing or of the wrong size, e.g. {wrong[0]}"
    leftovers = [n for n in os.listdir(copy) if n.endswith(".part")]
    if leftovers:
        return f"{len(leftovers)} *.part files left in the target"
    step = max(1, len(names) // samples)
    for name in names[::step][:samples] + names[-1:]:
        if not filecmp.cmp(os.path.join(reference, name), os.path.join(copy, name), shallow=False):
            return f"{name} differs from the source"
    return None


def _mem_free() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemFree:"))


class Ballast:
    """Keeps free RAM near ``keep_free`` bytes by reading a growing sparse file into the page cache.

    On a VM whose balloon driver reports freed memory to the host, the first write to a free page faults on the
    host: page-cache writes into free memory run at ~400 MiB/s, into recycled page cache at several GiB/s.
    With free memory kept low, as on a long-running file server, new file data recycles clean cache pages
    (the ballast's first: read once, they are the first reclaimed) and every run sees the same, warm memory.
    The ballast is clean page cache that the kernel drops whenever anybody needs the memory; it uses no disk."""

    def __init__(self, directory: str, keep_free: int) -> None:
        self.path, self.keep_free, self.size = os.path.join(directory, "ballast.sparse"), keep_free, 0
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._buf = bytearray(8 * MiB)

    def top_up(self) -> None:
        """Cache as much more of the file as there is free memory above ``keep_free``."""
        need = _mem_free() - self.keep_free
        if need < 64 * MiB:
            return
        offset, self.size = self.size, self.size + need
        os.ftruncate(self._fd, self.size)
        while offset < self.size:
            got = os.preadv(self._fd, [self._buf], offset)
            if got <= 0:
                break
            offset += got

    def close(self) -> None:
        os.close(self._fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # the work directory went away under us
            pass


def warm_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of RAM (at most a third of what is available), so that the next allocations get
    pages the host has backed; the effect lasts seconds (see Ballast, which storage_path.py uses instead)."""
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    buf = bytearray(min(nbytes, available // 3))  # zero-filled: every page is written once
    del buf


def read_all(directory: str) -> None:
    """Read every file of ``directory`` (from the page cache, which marks it recently used)."""
    buf = bytearray(8 * MiB)
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)


def set_topdir(path: str) -> bool:
    """``chattr +T path``: ext4's Orlov allocator then spreads the subdirectories of ``path`` over block groups."""
    get_flags, set_flags, topdir = 0x80086601, 0x40086602, 0x00020000  # FS_IOC_GETFLAGS/SETFLAGS, FS_TOPDIR_FL
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = struct.unpack("l", fcntl.ioctl(fd, get_flags, struct.pack("l", 0)))[0]
            fcntl.ioctl(fd, set_flags, struct.pack("l", flags | topdir))
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
