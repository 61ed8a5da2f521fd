"""Eiger stream benchmark: hidra-eiger-sim -> `hidra sender` (eiger_stream) -> `hidra receiver` (hdf5) + one
STREAM client, against raw pyzmq PUSH/PULL of messages of the same size and the simulator read directly.

    .venv/bin/python benchmarks/eiger_stream.py [--frames 2000] [--rate 1000] [--flux 0.01] [--format v1|v2]
                                                [--size 2068x2162] [--no-client] [--workdir DIR] [--keep]

EIGER 4M frames (2068 x 2162 uint16, bslz4, diffraction-like content from the simulator; ``--flux`` scales the
photons per pixel: 1.0 is a bright ~0.1 s exposure, 0.01 what a 1 kHz frame holds). Rows:

- raw pyzmq: one PUSH process sends --frames messages of the mean compressed frame size to one PULL process;
- sim -> PULL: the simulator's series read by a bare PULL socket (what the producer itself sustains);
- HiDRA: the same series through sender and receiver into one HDF5 file, plus a STREAM client. The run lasts
  from the trigger until the HDF5 file is at its final name; then every frame is checked present in the file
  and the client's count is reported.

Frames/s and MiB/s of compressed data, CPU per frame (ms) and peak RSS (VmHWM) per process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import MiB, Child, stop_all, thread_share  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HIDRA = [sys.executable, "-m", "hidra_core"]
BIN = os.path.dirname(sys.executable)


class Sim:
    def __init__(self, work: str, size: str) -> None:
        self.child = Child([os.path.join(BIN, "hidra-eiger-sim"), "--size", size, "--stream-hwm", "1000"],
                           os.path.join(work, "sim.log"))
        info = json.loads(self.child.wait_for(r"(\{.*\"rest\".*\})", 60).group(1))
        self.rest, self.stream, self.version = info["rest"], info["stream"], info["api_version"]

    def put(self, module: str, param: str, value: Any) -> None:
        body = json.dumps({"value": value}).encode()
        req = urllib.request.Request(f"{self.rest}/{module}/api/{self.version}/config/{param}", data=body,
                                     method="PUT", headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()

    def command(self, name: str) -> Any:
        req = urllib.request.Request(f"{self.rest}/detector/api/{self.version}/command/{name}", method="PUT")
        raw = urllib.request.urlopen(req, timeout=120).read()
        return json.loads(raw) if raw else None

    def arm(self, frames: int) -> int:
        self.put("detector", "nimages", frames)
        return int(self.command("arm")["sequence id"])

    def trigger(self) -> None:
        threading.Thread(target=self.command, args=("trigger",), daemon=True).start()

    def series(self, frames: int) -> int:
        series = self.arm(frames)
        self.trigger()
        return series


def configure(sim: Sim, args: argparse.Namespace) -> None:
    sim.put("stream", "mode", "enabled")
    sim.put("stream", "format", "legacy" if args.format == "v1" else "cbor")
    sim.put("stream", "header_detail", "basic")
    sim.put("detector", "compression", "bslz4")
    sim.put("detector", "bit_depth_image", 16)
    sim.put("detector", "frame_time", 1.0 / args.rate)
    sim.put("detector", "count_time", 0.9 / args.rate)
    sim.put("simulator", "flux", args.flux)


def raw_pyzmq(work: str, size: int, count: int) -> dict[str, Any]:
    worker = [sys.executable, os.path.join(HERE, "_rawzmq.py")]
    pull = Child([*worker, "pull", str(size), str(count)], os.path.join(work, "raw-pull.log"))
    endpoint = pull.wait_for(r"ready (\S+)", 30).group(1)
    push = Child([*worker, "push", endpoint, str(size), str(count)], os.path.join(work, "raw-push.log"))
    out = json.loads(pull.wait_for(r"result (\{.*\})", 600).group(1))
    sent = json.loads(push.wait_for(r"result (\{.*\})", 60).group(1))
    cpu = (push.cpu_seconds(), pull.cpu_seconds())
    push.stop(), pull.stop()
    wall = out["last"] - sent["start"]
    return {"frames_s": count / wall, "mib_s": out["bytes"] / wall / MiB,
            "cpu_ms": {"push": 1000 * cpu[0] / count, "pull": 1000 * cpu[1] / count},
            "rss": {"push": sent["peak_rss"], "pull": out["peak_rss"]}}


def raw_forward(sim: Sim, work: str, frames: int, client: bool) -> dict[str, Any]:
    """sim -> one raw pyzmq forwarder -> one sink (storage) [+ one sink (client)], zero-copy, nothing else."""
    worker = [sys.executable, os.path.join(HERE, "_rawforward.py")]
    count = frames + 2  # header, images, end
    sinks = [Child([*worker, "sink", str(count)], os.path.join(work, f"fwd-sink{i}.log")) for i in range(1 + client)]
    endpoints = [s.wait_for(r"ready (\S+)", 30).group(1) for s in sinks]
    forwarder = Child([*worker, "forward", sim.stream, *endpoints], os.path.join(work, "fwd.log"))
    forwarder.wait_for("ready", 30)
    sim.arm(frames)
    time.sleep(0.5)  # NOTE: a benchmark, not a test: lets the forwarder's connections settle before the trigger
    cpu0 = forwarder.cpu_seconds()
    sim.trigger()
    results = [json.loads(s.wait_for(r"result (\{.*\})", 600).group(1)) for s in sinks]
    cpu = forwarder.cpu_seconds() - cpu0
    forwarder.stop()
    for s in sinks:
        s.stop()
    wall = max(r["last"] for r in results) - min(r["first"] for r in results)
    return {"frames_s": frames / wall, "cpu_ms": 1000 * cpu / frames}


def h5py_from_memory(work: str, size: str, flux: float, frames: int, fsync: bool) -> dict[str, Any]:
    """The disk's limit for the same data: h5py writes the same bslz4 chunks from memory with direct chunk writes,
    flushing (and fsyncing) every 8 frames, as the writer does per commit; no network, no SWMR bookkeeping."""
    import bitshuffle
    import h5py
    import hdf5plugin

    from hidra_eiger.sim.frames import FrameGenerator

    x, y = (int(v) for v in size.split("x"))
    gen = FrameGenerator((y, x), "uint16", flux=flux)
    head = lambda raw: (raw.nbytes).to_bytes(8, "big") + (8192).to_bytes(4, "big")  # noqa: E731
    chunks = [head(f) + bitshuffle.compress_lz4(f).tobytes() for f in (gen.frame(i) for i in range(16))]
    path = os.path.join(work, "h5py-from-memory.h5")
    start = time.monotonic()
    with h5py.File(path, "w", libver="latest") as f:
        data = f.create_dataset("data", shape=(frames, y, x), chunks=(1, y, x), dtype="uint16",
                                **hdf5plugin.Bitshuffle(cname="lz4"))
        fd = os.open(path, os.O_RDONLY)
        for i in range(frames):
            data.id.write_direct_chunk((i, 0, 0), chunks[i % len(chunks)])
            if i % 8 == 7 or i == frames - 1:
                f.flush()
                if fsync:
                    os.fsync(fd)
        os.close(fd)
    wall = time.monotonic() - start
    os.unlink(path)
    return {"frames_s": frames / wall}


def sim_direct(sim: Sim, frames: int) -> dict[str, Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.rcvhwm = 1000
    sock.connect(sim.stream)
    cpu0 = sim.child.cpu_seconds()
    sim.series(frames)
    got, nbytes, first = 0, 0, None
    while got < frames + 2:
        if not sock.poll(60_000):
            raise TimeoutError(f"the simulator sent {got} of {frames + 2} messages")
        parts = sock.recv_multipart(copy=False)
        first = first or time.monotonic()
        nbytes += sum(len(p) for p in parts)
        got += 1
    wall = time.monotonic() - first
    sock.close(linger=0)
    ctx.term()
    return {"frames_s": frames / wall, "mib_s": nbytes / wall / MiB, "mean_bytes": nbytes / (frames + 2),
            "cpu_ms": {"sim": 1000 * (sim.child.cpu_seconds() - cpu0) / frames}}


class Client:
    """A STREAM client: a PULL socket registered on the sender's com port, counting frames in a thread."""

    def __init__(self, com: str) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.rcvhwm = 100
        port = self.pull.bind_to_random_port("tcp://0.0.0.0")
        req = self.ctx.socket(zmq.REQ)
        req.connect(com)
        req.send_multipart([b"4.4.3", b"bench", b"START_STREAM",
                            json.dumps([[f"{socket.getfqdn()}:{port}", 1, ".*"]]).encode()])
        assert req.poll(10_000), "no answer from the sender's com port"
        req.recv_multipart()
        req.close(linger=0)
        self.frames = 0
        self.starts: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.pull.poll(100):
                head, _payload = self.pull.recv_multipart(copy=False)
                if b'"hidra-frame-1.0"' in head.bytes:
                    self.frames += 1
                elif b'"hidra-series-start-1.0"' in head.bytes:
                    self.starts.add(json.loads(head.bytes)["series"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.pull.close(linger=0)
        self.ctx.term()


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.002)
    return time.monotonic()


def wait_file(path: str, timeout: float) -> float:
    return wait_for(lambda: os.path.exists(path), timeout, path)


def hidra(sim: Sim, work: str, args: argparse.Namespace) -> dict[str, Any]:
    target = os.path.join(work, "target")
    os.makedirs(target)
    receiver = Child([*HIDRA, "receiver", "--set", f"receiver.target={target}", "--set",
                      'receiver.writers=["hdf5"]', "--set", f"receiver.hdf5.fsync={str(args.fsync).lower()}",
                      "--set", "receiver.data=tcp://127.0.0.1:0", "--set",
                      "receiver.confirmations=tcp://127.0.0.1:0", "--set", "receiver.status=tcp://127.0.0.1:0",
                      "--set", "receiver.rest.address=127.0.0.1:0"],
                     os.path.join(work, "receiver.log"))
    ready = receiver.wait_for(r"data (\S+), confirmations (\S+), status", 60)
    sender = Child([*HIDRA, "sender", "--set", "sender.source.type=eiger_stream", "--set",
                    f"sender.source.eiger_stream.endpoint={sim.stream}", "--set",
                    f"sender.storage.data={ready.group(1)}", "--set", f"sender.storage.confirmations={ready.group(2)}",
                    "--set", f"sender.ledger.path={os.path.join(work, 'ledger.sqlite')}", "--set",
                    "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
                    "--set", "sender.rest.address=127.0.0.1:0"],
                   os.path.join(work, "sender.log"))
    com = sender.wait_for(r"com (\S+), request", 60).group(1)
    client = Client(com) if args.client else None
    try:
        # a short warm-up series: connections up, the client connected, the writer's first file made
        warm = sim.series(20)
        wait_file(os.path.join(target, f"series_{warm}.h5"), 120)
        procs = {"sim": sim.child, "sender": sender, "receiver": receiver}
        seen0 = client.frames if client else 0
        # NOTE: the simulator compresses its distinct frames at arm, before it sends the header: the clock
        # starts at the trigger, once the header went through (the series' temp file or the client's copy)
        series = sim.arm(args.frames)
        partial = os.path.join(target, ".hidra-partial")
        wait_for(lambda: (client is not None and f"series_{series}" in client.starts) or (
            client is None and any(f"series_{series}" in name for _d, _s, names in os.walk(partial)
                                   for name in names)), 120, "the series header at the receiver")
        cpu0 = {name: p.cpu_seconds() for name, p in procs.items()}
        threads0 = {name: p.thread_cpu() for name, p in procs.items()}
        start = time.monotonic()
        sim.trigger()
        path = os.path.join(target, f"series_{series}.h5")
        end = wait_file(path, 600)
        cpu = {name: 1000 * (p.cpu_seconds() - cpu0[name]) / args.frames for name, p in procs.items()}
        threads = {name: thread_share(threads0[name], p.thread_cpu(), end - start) for name, p in procs.items()}
        rss = {name: p.peak_rss() for name, p in procs.items()}
        stored = count_frames(path)
        lost = re.findall(r"(\d+) events lost", sender.output())
        return {"frames_s": args.frames / (end - start), "stored": stored, "frames": args.frames,
                "client": (client.frames - seen0) if client else None, "cpu_ms": cpu, "rss": rss,
                "lost": sum(map(int, lost)), "bytes": os.path.getsize(path), "threads": threads}
    finally:
        if client is not None:
            client.close()
        sender.stop()
        receiver.stop()


def count_frames(path: str) -> int:
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(path, "r") as f:
        return f["/entry/data/data"].id.get_num_chunks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="frames/s the simulator is asked for")
    parser.add_argument("--flux", type=float, default=0.01, help="photons per pixel, relative (see above)")
    parser.add_argument("--format", choices=("v1", "v2"), default="v1")
    parser.add_argument("--size", default="2068x2162")
    parser.add_argument("--no-client", dest="client", action="store_false")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="receiver.hdf5.fsync=false: what the pipeline does when the disk is not the limit")
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="hidra-eiger-bench-", dir=args.workdir)
    try:
        sim = Sim(work, args.size)
        configure(sim, args)
        direct = sim_direct(sim, args.frames)
        raw = raw_pyzmq(work, int(direct["mean_bytes"]), args.frames)
        forward = raw_forward(sim, work, args.frames, args.client)
        disk = h5py_from_memory(work, args.size, args.flux, args.frames, args.fsync)
        run = hidra(sim, work, args)
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    mean_mib = direct["mean_bytes"] / MiB
    print(f"# Eiger stream, {args.size} uint16 bslz4, flux {args.flux}, {args.format}, {args.frames} frames at"
          f" {args.rate:.0f} Hz asked; mean frame {direct['mean_bytes'] / 1e6:.2f} MB; {os.cpu_count()} CPUs;"
          f" HDF5 {'with' if args.fsync else 'without'} fsync")
    print("| path | frames/s | MiB/s | stored / client | CPU ms per frame | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    print(f"| raw pyzmq PUSH/PULL | {raw['frames_s']:.0f} | {raw['mib_s']:.0f} | - | "
          f"push {raw['cpu_ms']['push']:.2f}, pull {raw['cpu_ms']['pull']:.2f} | "
          f"push {raw['rss']['push'] / MiB:.0f}, pull {raw['rss']['pull'] / MiB:.0f} |")
    print(f"| sim -> PULL | {direct['frames_s']:.0f} | {direct['mib_s']:.0f} | - | sim {direct['cpu_ms']['sim']:.2f}"
          " | - |")
    sinks = "storage + client sinks" if args.client else "a storage sink"
    print(f"| sim -> raw pyzmq forwarder -> {sinks} | {forward['frames_s']:.0f} |"
          f" {forward['frames_s'] * mean_mib:.0f} | - | forwarder {forward['cpu_ms']:.2f} | - |")
    print(f"| h5py from memory, same chunks{', fsync' if args.fsync else ''} | {disk['frames_s']:.0f} |"
          f" {disk['frames_s'] * mean_mib:.0f} | - | - | - |")
    client = "-" if run["client"] is None else str(run["client"])
    print(f"| sim -> HiDRA -> HDF5 + client | {run['frames_s']:.0f} | {run['frames_s'] * mean_mib:.0f} | "
          f"{run['stored']} of {run['frames']} / {client} | "
          + ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_ms"].items()) + " | "
          + ", ".join(f"{k} {(v or 0) / MiB:.0f}" for k, v in run["rss"].items()) + " |")
    print("\nCPU per thread during the HiDRA run (100 % = one core): " + "; ".join(
        f"{name}: {share}" for name, share in run["threads"].items()))
    if run["lost"] or run["stored"] != run["frames"]:
        print(f"LOST FRAMES: {run['frames'] - run['stored']} missing in the file, {run['lost']} reported lost")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
