"""DataBuffer recording benchmark: the real bsread sender -> `hidra databuffer buffer` (bsread source -> hidra
sender -> hidra receiver with the `databuffer` writer), at several pulse rates.

    .venv/bin/python benchmarks/databuffer.py [--seconds 10] [--rates 100,400,1000,2000] [--image none|bitshuffle_lz4]

For each rate and each channel set (four float64 scalars; the same plus one 512 x 512 uint16 image) a bsread
sender process sends for --seconds, paced against absolute deadlines; the buffer's processes (the `hidra up`
parent, its sender and its receiver) are measured for CPU over that window. Then the buffer's own status says
how many pulses it took (held, or evicted since by its bounds) and whether it saw a gap. "no gap" means every
pulse sent reached the buffer.
Writing a pulse range to HDF5 is measured by plugins/hidra-databuffer/benchmarks/dbwriter_write.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import psutil  # noqa: E402

from _harness import Child, stop_all  # noqa: E402

HIDRA = [sys.executable, "-m", "hidra_core"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def send(port: int, rate: float, count: int, image: str) -> None:
    """The bsread sender (child process): ``count`` pulses at ``rate`` Hz, then a result line."""
    import numpy as np
    from bsread.sender import PUSH, Sender

    frame = (np.arange(512 * 512, dtype="uint16") % 4096).reshape(512, 512)
    with Sender(port=port, mode=PUSH, block=True) as sender:
        for name in ("S:A", "S:B", "S:C", "S:D"):
            sender.add_channel(name, metadata={"type": "float64"})
        if image != "off":
            sender.add_channel("S:IMG", metadata={"type": "uint16", "shape": [512, 512], "compression": image})
        print("ready", flush=True)
        time.sleep(1.0)  # NOTE: a benchmark: the buffer's PULL connects meanwhile
        start = time.monotonic()
        for i in range(count):
            values = {"S:A": float(i), "S:B": i * 0.5, "S:C": -float(i), "S:D": 1.0}
            if image != "off":
                values["S:IMG"] = frame
            sender.send(data=values, pulse_id=1_000_000 + i, check_data=False)
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        wall = time.monotonic() - start
    print("result", json.dumps({"rate": count / wall}), flush=True)


def status(query_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{query_port}/status", timeout=10) as reply:
        return json.loads(reply.read())


def run(work: str, rate: float, seconds: float, image: str) -> dict:
    stream, query, data, conf, stat = _free_ports(5)
    sets = {"receiver.data": data, "sender.storage.data": data, "receiver.confirmations": conf,
            "sender.storage.confirmations": conf, "receiver.status": stat}
    argv = [*HIDRA, "databuffer", "buffer", "--source", f"tcp://127.0.0.1:{stream}", "--query-port", str(query)]
    for key, port in sets.items():
        argv += ["--set", f"{key}=tcp://127.0.0.1:{port}"]
    argv += ["--set", "sender.clients.enabled=false", "--set", f"receiver.target={work}/buffer",
             "--set", f"sender.ledger.path={work}/ledger-{rate}-{image}.sqlite", "--set", "sender.summary_interval_s=0",
             "--set", "sender.rest.address=127.0.0.1:0", "--set", "receiver.rest.address=127.0.0.1:0"]
    buffer = Child(argv, os.path.join(work, f"buffer-{rate}-{image}.log"))
    buffer.wait_for("databuffer query API ready", 60)
    count = int(rate * seconds)
    sender = Child([sys.executable, os.path.abspath(__file__), "_send", str(stream), str(rate), str(count), image],
                   os.path.join(work, f"send-{rate}-{image}.log"))
    sender.wait_for("ready", 30)
    procs = [buffer.ps, *buffer.ps.children(recursive=True)]
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    t0 = time.monotonic()
    sent = json.loads(sender.wait_for(r"result (\{.*\})", seconds * 20 + 60).group(1))
    deadline = time.monotonic() + 30
    while _taken(status(query)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    wall = time.monotonic() - t0
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running()) - cpu0
    st = status(query)
    buffer.stop()
    sender.stop()
    return {"asked": rate, "sent_rate": sent["rate"], "pulses": _taken(st), "count": count,
            "evicted": st["evictions"], "gaps": st["gaps"], "cpu": 100 * cpu / wall}


def _taken(st: dict) -> int:
    """Pulses the buffer took: those it holds and those its bounds evicted since (a 2 GiB buffer holds ~4000
    pulses with a 512 KiB image)."""
    return int(st["pulses"]) + int(st["evictions"])


def main() -> int:
    if sys.argv[1:2] == ["_send"]:
        send(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="100,400,1000,2000")
    parser.add_argument("--image", choices=("none", "bitshuffle_lz4"), default="none",
                        help="compression of the 512 x 512 image channel")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = tempfile.mkdtemp(prefix="hidra-databuffer-bench-")
    rows = []
    try:
        for image in ("off", args.image):
            for rate in (float(r) for r in args.rates.split(",")):
                rows.append((image, run(work, rate, args.seconds, image)))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# DataBuffer recording, {args.seconds:.0f} s per row, {os.cpu_count()} CPUs"
          f" ({psutil.cpu_freq().current if psutil.cpu_freq() else '?'} MHz)")
    print("| channels | asked Hz | sent Hz | pulses taken / sent (evicted by the bounds) | gaps |"
          " CPU of the buffer (% of one core) |")
    print("|---|---|---|---|---|---|")
    for image, r in rows:
        what = "4 float64 scalars" if image == "off" else f"4 scalars + 512x512 uint16 ({image})"
        ok = "no gap" if r["pulses"] == r["count"] and not r["gaps"] else f"{r['gaps']} gaps"
        print(f"| {what} | {r['asked']:.0f} | {r['sent_rate']:.0f} | {r['pulses']} / {r['count']} ({r['evicted']})"
              f" | {ok} |"
              f" {r['cpu']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
