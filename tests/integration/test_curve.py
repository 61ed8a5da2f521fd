"""CURVE on every socket (issue 13): real sender and receiver processes, real clients, real bytes on the wire."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

import hidra_core.client
from hidra_core.client import ClientKeys, CommunicationFailed, Transfer
from hidra_core.security import generate, public_key
from hidra_proc import content, intact, tree, wait_until, write_file

pytestmark = pytest.mark.integration

MARKER = b"UNPUBLISHED-BEAMTIME-DATA-7f3a"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for name in ("sender", "receiver", "client", "intruder"):
        generate(str(folder), name)
    return folder


def curve(keys: Path, *extra: str) -> list[str]:
    return ["security.curve=true", f"security.keys_dir={keys}", *extra]


def pub(keys: Path, name: str) -> str:
    return public_key(str(keys), name).decode()


def com_ports(proc) -> dict[str, int]:
    m = re.search(r"com tcp://127.0.0.1:(\d+), request tcp://127.0.0.1:(\d+)", proc.text())
    assert m, proc.text()
    return {"com_port": int(m.group(1)), "request_port": int(m.group(2))}


class Tap:
    """A TCP proxy on loopback that keeps a copy of every byte it passes, both ways."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream[len("tcp://"):].rpartition(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    self.seen += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def captured(self) -> bytes:
        with self._lock:
            return bytes(self.seen)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for s in self._conns:
            try:  # NOTE: close() alone does not wake a pump blocked in recv() on it; shutdown does
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def tap_factory() -> Iterator[list[Tap]]:
    taps: list[Tap] = []
    yield taps
    for t in taps:
        t.close()


@pytest.mark.parametrize("storage_path", ["single", "group"], indirect=True)  # the layouts of conftest
def test_storage_path_with_curve_on_moves_files_intact(storage_path, keys):
    pair = storage_path
    receiver = pair.start_receiver(*curve(keys))
    sender = pair.start_sender(*curve(keys), "sender.chunksize=65536")
    expected = {"a.raw": 200_000, "sub/b.raw": 0, "sub/deep/c.raw": 65536}
    for rel, size in expected.items():
        write_file(pair.source / rel, size)
    wait_until(lambda: all(intact(pair.target, r, s) for r, s in expected.items()), 30, "files at the target")
    assert tree(pair.target) == expected
    assert f"CURVE on: receiver key {pub(keys, 'receiver')}" in receiver.text()
    assert f"CURVE on: sender key {pub(keys, 'sender')}" in sender.text()


def test_sender_whose_key_is_not_allowed_gets_nothing_stored_and_is_named(storage_path, keys):
    pair = storage_path
    receiver = pair.start_receiver(*curve(keys))  # allow_senders defaults to [sender]
    pair.start_sender(*curve(keys, "security.identity=intruder"))
    write_file(pair.source / "secret.raw", 1000)
    intruder = pub(keys, "intruder")
    wait_until(lambda: f"refused peer with key {intruder}" in receiver.text(), 20, "the refusal naming the key")
    assert tree(pair.target) == {}


@pytest.mark.parametrize("on", [True, False], ids=["curve", "plain"])
def test_wire_capture_shows_file_contents_only_without_curve(storage_path, keys, tap_factory, on):
    pair = storage_path
    security = curve(keys) if on else []
    pair.start_receiver(*security)
    data, confirmations, _status = pair.endpoints[0]
    tap = Tap(data)
    tap_factory.append(tap)
    pair.endpoints[0] = (tap.endpoint, confirmations, _status)  # the sender's data goes through the tap
    pair.start_sender(*security)
    (pair.source / "marked.txt").write_bytes(b"header " + MARKER * 100 + b" trailer")
    wait_until(lambda: (pair.target / "marked.txt").exists() and MARKER in (pair.target / "marked.txt").read_bytes(),
               30, "the marked file at the target")
    assert len(tap.captured()) > 100 * len(MARKER)  # the file went through the tap
    assert (MARKER in tap.captured()) is not on


@pytest.fixture
def clients_sender(storage_path, keys):
    pair = storage_path
    pair.start_receiver(*curve(keys))
    pair.keys = keys
    return pair


def start_clients_sender(pair, *extra: str):
    proc = pair.start_sender(*curve(pair.keys, "security.allow_clients=[client]", *extra))
    pair.ports = com_ports(proc)
    return proc


def writer(pair, files: dict[str, int], registered: str) -> threading.Thread:
    """Write ``files`` once the sender logs that ``registered`` connected, from a thread."""
    def run() -> None:
        wait_until(lambda: re.search(rf"client target \S+:{registered}: connected", pair.sender.text()), 20,
                   "the client's data connection")
        for rel, size in files.items():
            write_file(pair.source / rel, size)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def receive(pair, n: int, port: int, **kwargs) -> dict[str, bytes]:
    got = {}
    for meta, data in hidra_core.client.stream("127.0.0.1", port=port, timeout=20, **pair.ports, **kwargs):
        got[meta["filename"]] = data
        if len(got) == n:
            break
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_allowed_analysis_client_with_keys_receives_files(clients_sender):
    pair = clients_sender
    start_clients_sender(pair)
    files = {"a.cbf": 100_000, "b.cbf": 10}
    port = free_port()
    thread = writer(pair, files, str(port))
    got = receive(pair, 2, port, keys=ClientKeys.from_dir(str(pair.keys), "client", "sender"))
    thread.join(5)
    assert got == {rel: content(rel, size) for rel, size in files.items()}


def test_client_with_unknown_key_is_refused_and_gets_nothing(clients_sender):
    pair = clients_sender
    sender = start_clients_sender(pair)
    intruder = ClientKeys.from_dir(str(pair.keys), "intruder", "sender")
    with Transfer("STREAM", "127.0.0.1", signal_timeout=2, keys=intruder, **pair.ports) as transfer:
        port = free_port()
        with pytest.raises(CommunicationFailed):
            transfer.initiate(["127.0.0.1", port, 1])
        key = pub(pair.keys, "intruder")
        wait_until(lambda: f"refused peer with key {key}" in sender.text(), 20, "the refusal naming the key")
    assert "registered for app" not in sender.text()


def test_4x_client_without_keys_is_refused_where_com_is_not_plain(clients_sender):
    pair = clients_sender
    start_clients_sender(pair)
    with Transfer("STREAM", "127.0.0.1", signal_timeout=2, **pair.ports) as transfer:
        with pytest.raises(CommunicationFailed):
            transfer.initiate(["127.0.0.1", free_port(), 1])
    wait_until(lambda: re.search(r"WARNING .*CURVE: the com socket \(tcp://127.0.0.1:\d+\) refused a peer that"
                                 r" failed the CURVE handshake: it speaks plain", pair.sender.text()), 20,
               "the refusal in the log")
    assert "registered for app" not in pair.sender.text()


def test_4x_client_without_keys_works_where_com_and_request_are_plain_and_the_log_says_so(clients_sender):
    pair = clients_sender
    sender = start_clients_sender(pair, "security.plain=[com, request]")
    for name in ("com", "request"):
        assert re.search(rf"WARNING .*security.plain: the {name} socket accepts plain ZeroMQ", sender.text())
    files = {"x.cbf": 5000}
    port = free_port()
    thread = writer(pair, files, str(port))
    got = receive(pair, 1, port)
    thread.join(5)
    assert got == {"x.cbf": content("x.cbf", 5000)}
    # ... while the storage path stays encrypted
    assert "security.plain: the data socket" not in sender.text()


def check(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "tgt").mkdir(exist_ok=True)
    config = tmp_path / "c.yaml"
    config.write_text(f"sender:\n  source: {{type: inotify, inotify: {{path: {tmp_path / 'src'}}}}}\n"
                      f"receiver:\n  target: {tmp_path / 'tgt'}\n")
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "hidra_core", "config", "check", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_config_errors_name_the_missing_key_file_the_bad_z85_key_and_the_unknown_plain_name(tmp_path, keys):
    missing = check(tmp_path, *curve(keys, "security.identity=nobody"))
    assert missing.returncode == 2 and "security.identity" in missing.stderr
    assert f"{keys / 'nobody.key_secret'} does not exist" in missing.stderr
    bad = "x" * 39 + "~"
    z85 = check(tmp_path, *curve(keys, f"security.allow_senders=['{bad}']"))
    assert z85.returncode == 2 and f"security.allow_senders[0]: '{bad}' is not a valid Z85 key" in z85.stderr
    plain = check(tmp_path, *curve(keys, "security.plain=[com, telnet]"))
    assert plain.returncode == 2 and "security.plain.1" in plain.stderr and "telnet" in plain.stderr
    assert check(tmp_path, *curve(keys)).returncode == 0


def test_hidra_clients_talks_curve_with_its_key_and_an_unknown_key_gets_no_answer(clients_sender):
    pair = clients_sender
    start_clients_sender(pair)
    base = [sys.executable, "-m", "hidra_core", "clients", "--com", f"tcp://127.0.0.1:{pair.ports['com_port']}",
            *(a for o in curve(pair.keys) for a in ("--set", o))]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "0 registrations" in ok.stdout, ok.stderr
    refused = subprocess.run([*base, "--key", "intruder", "--timeout", "1"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "no answer" in refused.stderr


def test_readme_security_example_runs_as_typed(tmp_path):
    """The README's Security section as typed: keys, the receiver and sender configs, the client; only paths, the
    storage host's name and ports change."""
    from test_readme import _block, _hidra_argv, _terminate
    from test_up import _free_ports

    places = {"/etc/hidra/keys": tmp_path / "keys", "/gpfs/beamtime/raw": tmp_path / "raw",
              "/ramdisk/det1": tmp_path / "det1"}
    for path in list(places.values())[1:]:
        path.mkdir()
    data, conf, status, com, request = _free_ports(5)
    ports = {"50100": data, "50053": conf, "storage01": "127.0.0.1", "detpc01:50000": f"127.0.0.1:{com}"}

    def typed(text: str) -> str:
        for theirs, ours in [*places.items(), *ports.items()]:
            text = text.replace(theirs, str(ours))
        return text

    for line in _block("sh", "hidra keys generate receiver").splitlines():
        run = subprocess.run(_hidra_argv(typed(line)), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    assert run.stdout.count("\tsecret") == 3
    for name in ("receiver-secure.yaml", "sender-secure.yaml"):
        (tmp_path / name).write_text(typed(_block("yaml", f"# {name}")))
    extra = [f"receiver.status=tcp://127.0.0.1:{status}", f"sender.clients.com=tcp://127.0.0.1:{com}",
             f"sender.clients.request=tcp://127.0.0.1:{request}", f"sender.ledger.path={tmp_path / 'l.sqlite'}",
             "receiver.rest.address=127.0.0.1:0", "sender.rest.address=127.0.0.1:0"]
    procs, logs, files = [], [], []
    try:
        for line in _block("sh", "--config receiver-secure.yaml").splitlines():
            role = line.split()[1]
            logs.append(tmp_path / f"{role}.log")
            files.append(open(logs[-1], "wb"))
            procs.append(subprocess.Popen(
                [*_hidra_argv(line), *(a for e in extra if e.startswith(role) for a in ("--set", e))],
                cwd=tmp_path, stdout=files[-1], stderr=subprocess.STDOUT))
            wait_until(lambda: f"hidra {role} ready" in logs[-1].read_text(), 30, f"the {role}'s ready line")
        out = tmp_path / "client.out"
        files.append(open(out, "wb"))
        procs.append(subprocess.Popen([sys.executable, "-c", typed(_block("python", "ClientKeys.from_dir"))],
                                      cwd=tmp_path, stdout=files[-1], stderr=subprocess.STDOUT))
        wait_until(lambda: "connected" in logs[1].read_text(), 30, "the client's data connection")
        write_file(places["/ramdisk/det1"] / "hello.raw", 5000)
        wait_until(lambda: "hello.raw 5000" in out.read_text(), 30, "the client's line for the file")
        wait_until(lambda: intact(places["/gpfs/beamtime/raw"], "hello.raw", 5000), 30, "the stored file")
        assert "CURVE on" in logs[0].read_text() and "CURVE on" in logs[1].read_text()
    finally:
        for proc in reversed(procs):
            _terminate(proc)
        for f in files:
            f.close()


def test_up_curve_makes_throwaway_keys_in_the_run_dir_and_moves_files(tmp_path):
    from test_readme import _terminate
    from test_up import _free_ports

    data, conf, status = _free_ports(3)
    ports = {"data": data, "confirmations": conf}
    sets = [f"receiver.{k}=tcp://127.0.0.1:{p}" for k, p in ports.items()]
    sets += [f"sender.storage.{k}=tcp://127.0.0.1:{p}" for k, p in ports.items()]
    sets += [f"receiver.status=tcp://127.0.0.1:{status}", "sender.clients.com=tcp://127.0.0.1:0",
             "sender.clients.request=tcp://127.0.0.1:0", "sender.rest.address=127.0.0.1:0",
             "receiver.rest.address=127.0.0.1:0"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "hidra_core", "up", "--curve", *(a for s in sets for a in
                               ("--set", s))], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: up.poll() is None and log.read_text().count("ready:") == 2, 30, "both ready")
        keys = tmp_path / "hidra-data" / "keys"
        assert log.read_text().count("CURVE on:") == 2
        assert sorted(p.name for p in keys.iterdir()) == sorted(
            f"{n}.{ext}" for n in ("client", "receiver", "sender") for ext in ("key", "key_secret"))
        write_file(tmp_path / "hidra-data" / "source" / "f.raw", 3000)
        wait_until(lambda: intact(tmp_path / "hidra-data" / "target", "f.raw", 3000), 30, "the stored file")
    finally:
        assert _terminate(up) == 0


def test_receiver_with_only_status_plain_answers_4x_status_checks_and_keeps_data_encrypted(storage_path, keys):
    """All three sockets on port 0 (one endpoint string): each is still secured by its own name."""
    import zmq

    receiver = storage_path.start_receiver(*curve(keys, "security.plain=[status]"))
    data, _conf, status = receiver.endpoints()
    assert re.search(r"WARNING .*security.plain: the status socket accepts plain ZeroMQ", receiver.text())
    context = zmq.Context()
    try:
        req = context.socket(zmq.REQ)
        req.linger = 0
        req.connect(status)
        req.send(b"STATUS_CHECK")
        assert req.poll(10_000) and req.recv_multipart() == [b"OK"]
        push = context.socket(zmq.PUSH)
        push.linger = 0
        push.connect(data)
        wait_until(lambda: re.search(r"CURVE: the data socket \(\S+\) refused a peer that failed the CURVE handshake",
                                     receiver.text()), 20, "the plain peer refused on data")
    finally:
        context.destroy(linger=0)


def test_client_with_keys_and_a_whitelist_takes_data_only_from_the_senders_key(clients_sender):
    pair = clients_sender
    start_clients_sender(pair)
    keys = ClientKeys.from_dir(str(pair.keys), "client", "sender")
    port = free_port()
    with Transfer("QUERY_NEXT", "127.0.0.1", keys=keys, **pair.ports) as transfer:
        transfer.initiate([socket.getfqdn(), port, 1])
        transfer.start(port, whitelist=["localhost"])
        thread = writer(pair, {"w.raw": 777}, str(port))
        meta, data = transfer.get(timeout_s=20)
        thread.join(5)
    assert (meta["filename"], data) == ("w.raw", content("w.raw", 777))
