"""Three hosts on one machine: network namespaces for the detector PC, the storage host and the analysis host,
each joined by a veth pair to a bridge in a fourth namespace (the switch). Names are unique per run, and
everything is torn down at the end, even after a failure.

Packet loss comes from ``tc netem`` where the kernel has it; otherwise from an nftables rule that drops a random
5 % of each host's outgoing packets (``numgen random mod 100 < 5``). nftables cannot delay packets, so without
netem there is no delay.
"""
from __future__ import annotations

import secrets
import subprocess

SUBNET = "10.13.0"
ADDRESSES = {"detector": f"{SUBNET}.1", "storage": f"{SUBNET}.2", "analysis": f"{SUBNET}.3"}


class NamespaceError(RuntimeError):
    """A namespace or link could not be made (not root, no veth or bridge support)."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NamespaceError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (probed on a throw-away namespace's loopback)."""
    probe = f"hprobe{secrets.token_hex(3)}"
    if run("ip", "netns", "add", probe, check=False).returncode != 0:
        return False
    try:
        return run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                   check=False).returncode == 0
    finally:
        run("ip", "netns", "del", probe, check=False)


class Hosts:
    """The namespaces ``<token>-detector``, ``-storage``, ``-analysis`` and ``-switch``; ``exec(host)`` is the
    command prefix that runs a program on a host (``ip netns exec`` execs it: signals reach the program)."""

    def __init__(self) -> None:
        self.token = f"h{secrets.token_hex(3)}"
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return f"{self.token}-{host}"

    def nic(self, host: str) -> str:
        """The host's interface (in its namespace); its switch port is ``nic + 'p'`` in the switch's."""
        return f"{self.token}{host[0]}"

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def _build(self) -> None:
        switch = self.ns("switch")
        for host in (*ADDRESSES, "switch"):
            run("ip", "netns", "add", self.ns(host))
            self.made.append(self.ns(host))
            run("ip", "-n", self.ns(host), "link", "set", "lo", "up")
        run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", switch, "link", "set", "br0", "up")
        for host, address in ADDRESSES.items():
            nic = self.nic(host)
            run("ip", "link", "add", nic, "netns", self.ns(host), "type", "veth", "peer", "name", nic + "p", "netns",
                switch)
            run("ip", "-n", switch, "link", "set", nic + "p", "master", "br0")
            run("ip", "-n", switch, "link", "set", nic + "p", "up")
            run("ip", "-n", self.ns(host), "addr", "add", f"{address}/24", "dev", nic)
            run("ip", "-n", self.ns(host), "link", "set", nic, "up")

    def lossy(self, percent: int, delay_ms: int, netem: bool) -> None:
        """Every host loses ``percent`` % of the packets it sends (and delays them by ``delay_ms`` with netem)."""
        for host in ADDRESSES:
            if netem:
                run(*self.exec(host), "tc", "qdisc", "add", "dev", self.nic(host), "root", "netem", "loss",
                    f"{percent}%", "delay", f"{delay_ms}ms")
            else:
                self._nft(host, f"numgen random mod 100 < {percent} drop")

    def _nft(self, host: str, rule: str) -> None:
        nft = [*self.exec(host), "nft"]
        run(*nft, "add", "table", "inet", "hidra_test")
        run(*nft, "add", "chain", "inet", "hidra_test", "out", "{ type filter hook output priority 0; }")
        run(*nft, "add", "rule", "inet", "hidra_test", "out", "oifname", self.nic(host), *rule.split())

    def cut(self, host: str, down: bool) -> None:
        """Pull (or put back) the cable of ``host``: its switch port goes down, as at a real switch."""
        run("ip", "-n", self.ns("switch"), "link", "set", self.nic(host) + "p", "down" if down else "up")

    def close(self) -> None:
        # NOTE: deleting a namespace deletes its veth ends, and with them their peers in the switch.
        for name in reversed(self.made):
            run("ip", "netns", "del", name, check=False)
        self.made.clear()


def cannot_build() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    probe = f"hprobe{secrets.token_hex(3)}"
    try:
        done = run("ip", "netns", "add", probe, check=False)
    except OSError as exc:
        return f"cannot run ip: {exc}"
    if done.returncode != 0:
        return f"cannot make network namespaces (needs root): {done.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None
