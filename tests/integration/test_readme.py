"""The README's examples, run as typed against a real `hidra up`; only ports (and paths of other hosts) change.

Ports are made free-random with ``--set`` (and, in the client examples, by replacing the default port numbers),
so the examples run beside other tests; everything else is the README's own text.
"""
from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from hidra_proc import consecutive_free_ports, intact, wait_until, write_file
from test_docs import REPO, _fenced
from test_up import _free_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = (REPO / "README.md").read_text()
BLOCKS = _fenced(README)


def _block(lang: str, *needles: str) -> str:
    found = [body for kind, body in BLOCKS if kind == lang and all(n in body for n in needles)]
    assert len(found) == 1, f"the README should have one {lang} block with {needles}"
    return found[0]


def _hidra_argv(line: str) -> list[str]:
    """A README command line as argv, with `.venv/bin/hidra` as this interpreter's `hidra`."""
    argv = shlex.split(line.split("#", 1)[0])
    assert argv[0] == ".venv/bin/hidra", line
    return [sys.executable, "-m", "hidra_core", *argv[1:]]


class QuickStart:
    """The Quick start's first line, `bash scripts/up`, running in its own directory on free ports."""

    def __init__(self, base: Path) -> None:
        self.base = base
        data, conf, status, self.com, self.request = _free_ports(5)
        first = _block("sh", "bash scripts/up", "cmp ").splitlines()[0].split("#", 1)[0].split()
        assert first == ["bash", "scripts/up"]
        ports = {"receiver.data": data, "sender.storage.data": data, "receiver.confirmations": conf,
                 "sender.storage.confirmations": conf, "receiver.status": status, "sender.clients.com": self.com,
                 "sender.clients.request": self.request}
        sets = [a for key, port in ports.items() for a in ("--set", f"{key}=tcp://127.0.0.1:{port}")]
        sets += [a for role in ("sender", "receiver") for a in ("--set", f"{role}.rest.address=127.0.0.1:0")]
        self.log = open(base / "up.log", "wb")
        self.proc = subprocess.Popen(["bash", str(REPO / "scripts" / "up"), *sets], cwd=base, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return (self.base / "up.log").read_text(errors="replace")

    def registrations(self) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "hidra_core", "clients", "--com",
                              f"tcp://127.0.0.1:{self.com}", "--json"], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout)["registrations"] if out.returncode == 0 else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickStart]:
    up = QuickStart(tmp_path_factory.mktemp("readme"))
    try:
        def ready() -> bool:
            assert up.proc.poll() is None, f"bash scripts/up exited with {up.proc.returncode}:\n{up.text()}"
            return "hidra sender ready" in up.text() and "hidra receiver ready" in up.text()

        wait_until(ready, 120, "the ready lines of `bash scripts/up`")
        yield up
    finally:
        up.stop()


def test_quick_start_stores_the_file_as_typed(quick_start: QuickStart) -> None:
    other_terminal = "\n".join(_block("sh", "bash scripts/up", "cmp ").splitlines()[1:])
    result = subprocess.run(["bash", "-c", other_terminal], cwd=quick_start.base, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "stored"


def _python(code: str, base: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # NOTE: KeyboardInterrupt leaves the loop: stream() unregisters
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out


def test_stream_example_gets_a_new_file(quick_start: QuickStart) -> None:
    code = _block("python", "hidra_core.client.stream(").replace("localhost:50000", f"localhost:{quick_start.com}")
    proc = _python(code, quick_start.base)
    try:
        wait_until(lambda: proc.poll() is not None or quick_start.registrations(), 30, "the stream registration")
        assert proc.poll() is None, proc.communicate()[0]
        write_file(quick_start.base / "hidra-data" / "source" / "streamed" / "s1.raw", 70_000)
        lines: list[str] = []

        def printed() -> bool:
            line = proc.stdout.readline() if proc.stdout else ""
            lines.append(line)
            return "s1.raw" in line or proc.poll() is not None

        wait_until(printed, 60, "the example's line for s1.raw")
        assert lines[-1].split() == ["streamed", "s1.raw", "70000"], lines
    finally:
        _finish(proc)


def test_transfer_example_gets_the_next_file_with_a_timeout_in_seconds(quick_start: QuickStart) -> None:
    data_port = _free_ports(1)[0]
    code = _block("python", "Transfer(").replace("50000", str(quick_start.com)).replace(
        "50001", str(quick_start.request)).replace("50101", str(data_port))
    proc = _python(code, quick_start.base)
    try:
        def asked() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            return any(r["open_requests"] for r in quick_start.registrations())

        wait_until(asked, 30, "the example's NEXT")
        write_file(quick_start.base / "hidra-data" / "source" / "queried" / "q1.raw", 5000)
        assert proc.wait(60) == 0
    finally:
        out = _finish(proc)
    assert out.split() == ["q1.raw", "5000"], out


def test_two_host_configs_pass_config_check(tmp_path: Path) -> None:
    paths = {"/gpfs/beamtime/raw": tmp_path / "raw", "/ramdisk/det1": tmp_path / "det1",
             "/var/lib/hidra": tmp_path / "state"}
    for path in paths.values():
        path.mkdir()
    for name in ("receiver.yaml", "sender.yaml"):
        text = _block("yaml", f"# {name}")
        for theirs, ours in paths.items():
            text = text.replace(theirs, str(ours))
        (tmp_path / name).write_text(text)
    lines = [line for line in _block("sh", "config check receiver.yaml").splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        check = line.split("&&")[0]
        result = subprocess.run(_hidra_argv(check), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{check}: {result.stderr}"
        assert re.search(r": OK \((sender|receiver)\)$", result.stdout.strip()), result.stdout


def test_installing_a_plugin_names_the_kernel_too() -> None:
    """`hidra-core` is not on PyPI: a pip line with a plugin directory must install the checkout (`.`) too."""
    lines = [line for _kind, body in BLOCKS for line in body.splitlines() if "pip install" in line]
    plugin_lines = [line for line in lines if "plugins/" in line.split("#", 1)[0]]
    assert plugin_lines, "the README shows how to install the plugins with pip"
    for line in plugin_lines:
        assert "." in shlex.split(line.split("#", 1)[0]), line


def test_the_other_up_commands_use_real_options() -> None:
    """They run forever, so they are not run: each option they use must be one `hidra up` has."""
    for line in _block("sh", "hidra up --source").splitlines():
        argv = _hidra_argv(line)
        help_text = subprocess.run([*argv[:4], "--help"], capture_output=True, text=True, timeout=30).stdout
        for option in (a.split("=")[0] for a in argv[4:] if a.startswith("--")):
            assert option in help_text, f"{line}: {option}"


def _port_sets(data: int, conf: int, status: int, com: int, request: int) -> str:
    """``--set`` options that put an instance's sender and receiver on these loopback ports."""
    return " ".join([*(f"--set {key}=tcp://127.0.0.1:{port}" for key, port in (
        ("receiver.data", data), ("sender.storage.data", data), ("receiver.confirmations", conf),
        ("sender.storage.confirmations", conf), ("receiver.status", status), ("sender.clients.com", com),
        ("sender.clients.request", request))), "--set sender.rest.address=127.0.0.1:0",
        "--set receiver.rest.address=127.0.0.1:0"])


def _run_example(base: Path, script: str, env: dict[str, str] | None = None) -> list[str]:
    """Run a README shell block with `.venv/bin/` as this interpreter's; return the lines it printed.

    NOTE: its own session, so that the example's background jobs (simulator, hidra up) are stopped with it;
    output to files: those jobs keep any pipe open after the script itself has ended."""
    import os

    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    log, out = open(base / "example.log", "w"), open(base / "example.out", "w")
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=base, stdout=out, stderr=log, start_new_session=True,
                            env=env)
    try:
        assert proc.wait(120) == 0, (base / "example.log").read_text()[-3000:]
        return (base / "example.out").read_text().strip().splitlines()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(30)
        log.close()
        out.close()


def test_eiger_example_stores_a_simulated_series_as_hdf5(tmp_path: Path) -> None:
    """The EIGER section as typed: its YAML file, then its shell lines (simulator, `hidra up`, curl, h5py)."""
    import os

    rest, stream, *hidra = _free_ports(7)
    (tmp_path / "eiger.yaml").write_text(_block("yaml", "type: eiger_stream").replace("9999", str(stream)))
    script = _block("sh", "hidra-eiger-sim", "command/arm").replace("8080", str(rest)).replace("9999", str(stream))
    script = script.replace("hidra up --config eiger.yaml", f"hidra up --config eiger.yaml {_port_sets(*hidra)}")
    env = {**os.environ, "BASH_ENV": str(_wait_up(tmp_path, rest, tmp_path / "example.log"))}
    printed = _run_example(tmp_path, script.replace("curl -sf", "wait_up; curl -sf", 1), env)
    assert printed[-1].endswith('<HDF5 dataset "data": shape (100, 1065, 1030), type "<u2">'), printed


def test_eiger_filewriter_example_stores_a_series_and_deletes_it_on_the_dcu_as_typed(tmp_path: Path) -> None:
    """The EIGER FileWriter section as typed: its YAML file, then its shell lines (simulator, `hidra up`, curl)."""
    import os

    rest, *hidra = _free_ports(6)
    (tmp_path / "eiger-files.yaml").write_text(_block("yaml", "type: eiger\n").replace("8080", str(rest)))
    script = _block("sh", "hidra-eiger-sim", "filewriter/api").replace("8080", str(rest))
    script = script.replace("hidra up --config eiger-files.yaml",
                            f"hidra up --config eiger-files.yaml {_port_sets(*hidra)}")
    env = {**os.environ, "BASH_ENV": str(_wait_up(tmp_path, rest, tmp_path / "example.log"))}
    printed = _run_example(tmp_path, script.replace("curl -sf", "wait_up; curl -sf", 1), env)
    assert printed[-4:-1] == ["series_1_data_000002.h5", "series_1_data_000003.h5", "series_1_master.h5"], printed
    assert printed[-5].endswith("series_1_data_000001.h5"), printed  # NOTE: after the curl answers' own text
    assert printed[-1].startswith('{"value":null'), printed


def _wait_up(base: Path, rest: int, log: Path) -> Path:
    """A shell function the example's first curl waits with: the simulator and `hidra up` take a moment to listen
    (a user types the next line later). Not part of the README's text."""
    helper = base / "wait_up.sh"
    helper.write_text(f"""wait_up() {{
  for i in $(seq 600); do
    curl -sf http://127.0.0.1:{rest}/detector/api/version/ >/dev/null && grep -q "hidra sender ready" {log} \\
      && grep -q "hidra receiver ready" {log} && return 0
    sleep 0.1
  done
  return 1
}}
""")
    return helper


def test_databuffer_example_writes_a_pulse_range_as_typed(tmp_path: Path) -> None:
    """The DataBuffer section as typed, with free ports: the bsread simulator, `hidra databuffer up`, the REST
    calls of a run, and the HDF5 file of its 101 pulses."""
    bs, rest, query, output, *hidra = _free_ports(9)
    script = _block("sh", "bsread.cli.bs simulate", "stop_pulse_id")
    for default, port in (("9999", bs), ("8888", rest), ("10300", query)):
        script = script.replace(default, str(port))
    script = script.replace("--audit_file audit.log &", f"--audit_file audit.log --query-port {query} --rest_port"
                            f" {rest} --output_port {output} --api_port 0 {_port_sets(*hidra)} &")
    printed = _run_example(tmp_path, script)
    assert printed[-1].endswith("(101,)"), printed


def test_pilatus_example_streams_images_with_their_header_as_typed(tmp_path: Path) -> None:
    """The PILATUS section as typed: its YAML file, its shell lines (`hidra up`, the camserver simulator, the wait,
    `ls`) and, started once the sender is up, its client, which prints each image's header values."""
    import os
    import threading

    ports = _free_ports(5)
    com = ports[3]
    (tmp_path / "pilatus.yaml").write_text(_block("yaml", "type: pilatus"))
    script = _block("sh", "hidra-pilatus-sim").replace(
        "hidra up --config pilatus.yaml", f"hidra up --config pilatus.yaml {_port_sets(*ports)}")
    ready = tmp_path / "client-registered"
    helper = tmp_path / "wait_client.sh"
    helper.write_text(f"wait_client() {{ for i in $(seq 600); do test -f {ready} && return 0; sleep 0.1; done;"
                      " return 1; }\n")
    script = script.replace(".venv/bin/hidra-pilatus-sim", "wait_client; .venv/bin/hidra-pilatus-sim", 1)
    printed: list[str] = []
    example = threading.Thread(target=lambda: printed.extend(_run_example(
        tmp_path, script, {**os.environ, "BASH_ENV": str(helper)})), daemon=True)
    example.start()
    log = tmp_path / "example.log"
    wait_until(lambda: log.exists() and "hidra sender ready" in log.read_text(errors="replace"), 60,
               "the sender of the example")
    client = _python(_block("python", "m[\"exposure_time_s\"]").replace("localhost:50000", f"localhost:{com}"),
                     tmp_path)
    try:
        def registered() -> bool:
            out = subprocess.run([sys.executable, "-m", "hidra_core", "clients", "--com", f"tcp://127.0.0.1:{com}",
                                  "--json"], capture_output=True, text=True, timeout=30)
            return out.returncode == 0 and bool(json.loads(out.stdout)["registrations"])

        wait_until(lambda: client.poll() is not None or registered(), 30, "the client's registration")
        ready.touch()
        lines = [client.stdout.readline().split() for _ in range(3)] if client.stdout else []
    finally:
        _finish(client)
    example.join(150)
    assert lines == [[f"img_0000{n}.cbf", str(n), "0.097", "0.978", "1231.5"] for n in (1, 2, 3)], lines
    assert printed[-3:] == ["img_00001.cbf", "img_00002.cbf", "img_00003.cbf"], printed

def _wait_up_ready(up: subprocess.Popen, log: Path) -> None:
    def ready() -> bool:
        assert up.poll() is None, log.read_text()
        text = log.read_text(errors="replace")
        return "hidra sender ready" in text and "hidra receiver ready" in text

    wait_until(ready, 60, "the ready lines of `hidra up`")


def test_ingest_example_stores_the_producers_files_as_typed(tmp_path: Path) -> None:
    """The ZeroMQ ingest section as typed: its YAML file, `hidra up` with it, then the Python producer."""
    ingest, *hidra = _free_ports(6)
    (tmp_path / "ingest.yaml").write_text(_block("yaml", "type: zmq_ingest").replace("50300", str(ingest)))
    line = _block("sh", "hidra up --config ingest.yaml").strip()
    argv = [*_hidra_argv(line.replace("&", "")), *_port_sets(*hidra).split()]
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_up_ready(up, tmp_path / "up.log")
        producer = _python(_block("python", "from hidra_core.ingest import Ingest").replace("50300", str(ingest)),
                           tmp_path)
        assert producer.wait(60) == 0, _finish(producer)
        _finish(producer)
        target = tmp_path / "hidra-data" / "target" / "run1"
        expected = {f"frame_{n:05d}.raw": bytes([n]) * 1_000_000 for n in range(10)}
        expected["summary.txt"] = b"10 frames\ndone\n"

        def stored() -> bool:
            return all((target / name).is_file() and (target / name).read_bytes() == data
                       for name, data in expected.items())

        wait_until(stored, 60, "the producer's files in hidra-data/target/run1")
    finally:
        _terminate(up)
        log.close()

@pytest.mark.parametrize("config", ["polling.yaml", "watchdog.yaml"])
def test_watchdog_and_polling_examples_store_a_file_as_typed(tmp_path: Path, config: str) -> None:
    """The watchdog/polling section as typed, with each of its two configs: `hidra up`, a file, `cmp`."""
    (tmp_path / config).write_text(_block("yaml", f"# {config}"))
    script = _block("sh", "hidra up --config polling.yaml")
    ports = _port_sets(*_free_ports(5))
    script = script.replace("hidra up --config polling.yaml", f"hidra up --config {config} {ports}")
    assert _run_example(tmp_path, script)[-1] == "stored"


class GroupExample:
    """The Receiver groups example: its `hidra receiver --workers 3` line as typed with the README's receiver.yaml,
    on free ports (given by --set), and its sender line with the storage host and ports made those."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data, self.conf, status = consecutive_free_ports(3, 3)
        lines = _block("sh", "hidra receiver --workers 3").replace("\\\n", " ").splitlines()
        self.receiver_line = lines[0]
        self.sender_line = next(line for line in lines if "hidra sender" in line)
        for i in range(3):
            self.sender_line = self.sender_line.replace(f"storage01:{50100 + i}", f"127.0.0.1:{self.data + i}")
            self.sender_line = self.sender_line.replace(f"storage01:{50053 + i}", f"127.0.0.1:{self.conf + i}")
        raw, self.source = base / "raw", base / "det1"
        for d in (raw, self.source, base / "state"):
            d.mkdir()
        for name, paths in (("receiver.yaml", {"/gpfs/beamtime/raw": raw}),
                            ("sender.yaml", {"/ramdisk/det1": self.source, "/var/lib/hidra": base / "state"})):
            text = _block("yaml", f"# {name}")
            for theirs, ours in paths.items():
                text = text.replace(theirs, str(ours))
            (base / name).write_text(text)
        self.raw = raw
        ports = [("receiver.data", self.data), ("receiver.confirmations", self.conf), ("receiver.status", status)]
        argv = [*_hidra_argv(self.receiver_line), *(a for k, p in ports for a in ("--set", f"{k}=tcp://127.0.0.1:{p}")),
                "--set", "receiver.rest.address=127.0.0.1:0"]
        self.log = open(base / "group.log", "wb")
        self.proc = subprocess.Popen(argv, cwd=base, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return (self.base / "group.log").read_text(errors="replace")

    def wait_ready(self) -> str:
        def ready() -> bool:
            assert self.proc.poll() is None, self.text()
            return "hidra receiver group ready: 3 workers" in self.text()

        wait_until(ready, 60, "the group's ready line")
        return self.text()

    def stop(self) -> None:
        try:
            assert _terminate(self.proc) == 0, self.text()
        finally:
            self.log.close()


def _terminate(proc: subprocess.Popen) -> int | None:
    """SIGTERM ``proc`` and wait for it (SIGKILL after 30 s); its exit status, None if it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def test_receiver_group_example_runs_as_typed_and_logs_the_senders_options(tmp_path: Path) -> None:
    group = GroupExample(tmp_path)
    try:
        text = group.wait_ready()
        sets = [a for a in _hidra_argv(group.sender_line) if a.startswith("sender.storage.")]
        hint = re.search(r"sender: --set '(.*?)' --set '(.*?)'", text)
        assert hint and [hint.group(1), hint.group(2)] == sets, (sets, text)
        check = subprocess.run([sys.executable, "-m", "hidra_core", "config", "check", "sender.yaml",
                                *(a for s in sets for a in ("--set", s))], cwd=tmp_path, capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    finally:
        group.stop()


def test_receiver_group_example_sender_stores_its_files_through_the_group(tmp_path: Path) -> None:
    group = GroupExample(tmp_path)
    group.wait_ready()
    sender_args = ["--set", "sender.clients.com=tcp://127.0.0.1:0", "--set", "sender.clients.request=tcp://127.0.0.1:0",
                   "--set", "sender.rest.address=127.0.0.1:0"]
    log = open(tmp_path / "sender.log", "wb")
    sender = subprocess.Popen([*_hidra_argv(group.sender_line), *sender_args], cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        # NOTE: files go to the members the sender knows are up; only with all three up may they spread
        wait_until(lambda: (tmp_path / "sender.log").read_text().count(" is up") == 3, 30, "every member up")
        names = [f"img_{n:04d}.raw" for n in range(12)]  # all on one of 3 members: p = 3 ** -11
        for name in names:
            write_file(group.source / name, 10_000)

        def stored() -> bool:
            assert sender.poll() is None, (tmp_path / "sender.log").read_text()
            return all(intact(group.raw, n, 10_000) for n in names)

        wait_until(stored, 60, "the files in raw/")
        assert len({line.split("]")[0] for line in group.text().splitlines() if "stored img_" in line}) > 1
    finally:
        _terminate(sender)
        log.close()
        group.stop()


def test_status_section_curl_lines_show_the_running_instance_and_drain_it_as_typed(tmp_path: Path) -> None:
    """The Status section's curl lines as typed, against `hidra up` with the REST ports made free ones."""
    import requests

    sender_port, receiver_port, *hidra = _free_ports(7)
    argv = [sys.executable, "-m", "hidra_core", "up", *_port_sets(*hidra).split(),
            "--set", f"sender.rest.address=127.0.0.1:{sender_port}",
            "--set", f"receiver.rest.address=127.0.0.1:{receiver_port}"]
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_up_ready(up, tmp_path / "up.log")
        write_file(tmp_path / "hidra-data" / "source" / "scan1" / "img_0001.raw", 4000)

        def counted(port: int, key: str) -> bool:
            return requests.get(f"http://127.0.0.1:{port}/statistics", timeout=10).json()["counters"][key] == 1

        wait_until(lambda: counted(sender_port, "confirmed") and counted(receiver_port, "stored"), 60,
                   "the file stored and confirmed")
        script = _block("sh", "/metrics").replace("50080", str(sender_port)).replace("50081", str(receiver_port))
        # NOTE: line by line: curl prints the JSON answers without a newline of their own
        status, statistics, files, metric, drain = (_run_example(tmp_path, line)[-1] for line in script.splitlines())
        assert (json.loads(status)["role"], json.loads(status)["state"]) == ("sender", "running"), status
        assert json.loads(statistics)["counters"]["confirmed"] == 1, statistics
        assert json.loads(files) == {"files": []}
        assert metric == "hidra_receiver_files_stored_total 1.0"
        assert json.loads(drain) == {"state": "draining"}
        assert up.wait(60) == 0  # the sender drained and stopped, then `hidra up` stopped the receiver
        assert "hidra sender stopped" in (tmp_path / "up.log").read_text()
    finally:
        _terminate(up)
        log.close()
