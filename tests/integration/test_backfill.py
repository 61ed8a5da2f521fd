"""`hidra backfill DIR`: files already in the source tree that the running sender never sent (written while it
was down, its source set not to scan at start) go through it, intact, once; resumable; refused outside the tree."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hidra_core.sender.backfill import MAX_PENDING
from hidra_proc import intact, tree, wait_until, write_file

pytestmark = pytest.mark.integration

NO_SCAN = "sender.source.inotify.scan_at_start=false"


def _backfill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hidra_core", "backfill", *args], capture_output=True, text=True,
                          timeout=120)


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return json.loads(answer.read())


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _written_while_down(source: Path, n: int) -> dict[str, int]:
    """``n`` files in run1/ (two levels), written before the sender starts."""
    files = {f"run1/{'deep/' if i % 3 == 0 else ''}f{i:03d}.dat": 1000 + 37 * i for i in range(n)}
    for rel, size in files.items():
        write_file(source / rel, size)
    return files


def _running_without_scan(pair: Any) -> Any:
    """A sender that sends what is written from now on (proven by one file), not what was there before."""
    sender = pair.start_sender(NO_SCAN)
    write_file(pair.source / "live.dat", 500)
    wait_until(lambda: intact(pair.target, "live.dat", 500), 30, "a file written while the sender runs")
    return sender


def _sent(sender: Any, n: int) -> int:
    """The sender's count of files sent, once it reached ``n`` (its statistics are up to half a second old)."""
    def sent() -> int:
        return int(_get(f"{sender.rest_url()}/statistics")["counters"]["sent"])

    wait_until(lambda: sent() >= n, 10, f"{n} files sent")
    return sent()


def test_backfill_sends_files_written_while_the_sender_was_down_once_and_again_nothing(storage_path):
    pair = storage_path
    files = _written_while_down(pair.source, 30)
    pair.start_receiver()
    sender = _running_without_scan(pair)
    assert not (pair.target / "run1").exists()  # NOTE: the gap a backfill is for
    done = _backfill(str(pair.source / "run1"), "--url", sender.rest_url(), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "30 files" in done.stdout and "30 sent and stored, 0 problems" in done.stdout
    assert tree(pair.target) == {**files, "live.dat": 500}
    assert all(intact(pair.target, rel, size) for rel, size in files.items())
    again = _backfill(str(pair.source / "run1"), "--url", sender.rest_url(), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "30 stored before, 0 sent and stored" in again.stdout
    assert _get(f"{sender.rest_url()}/backfill")["queued"]["files"] == 0  # NOTE: nothing went to the router
    assert _sent(sender, 31) == 31  # each file once, and live.dat


def test_backfill_interrupted_by_sigkill_of_the_cli_completes_when_run_again(storage_path):
    pair = storage_path
    files = _written_while_down(pair.source, 40)
    pair.start_receiver().stop()  # NOTE: its ports are the sender's; it comes back on them below
    sender = pair.start_sender(NO_SCAN)
    url = sender.rest_url()
    cli = subprocess.Popen([sys.executable, "-m", "hidra_core", "backfill", str(pair.source / "run1"), "--url", url],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # NOTE: storage is down, so nothing can be stored: the CLI is in the middle of its progress bar
        wait_until(lambda: _get(f"{url}/backfill")["queued"]["files"] == 40, 30, "the backfill queued every file")
        assert cli.poll() is None
        cli.send_signal(signal.SIGKILL)
        cli.wait(10)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    pair.start_receiver()
    done = _backfill(str(pair.source / "run1"), "--url", url)
    assert done.returncode == 0, done.stderr
    assert all(intact(pair.target, rel, size) for rel, size in files.items())
    # NOTE: the command joins the sender's backfill, or (when that already ended) finds every file stored
    report = _get(f"{url}/backfill")
    assert report["state"] == "finished" and report["already"]["files"] + report["stored"]["files"] == 40
    assert _sent(sender, 40) == 40


def test_backfill_cut_short_by_a_sigkill_of_the_sender_completes_after_its_restart(storage_path):
    pair = storage_path
    files = _written_while_down(pair.source, 30)
    pair.start_receiver().stop()
    sender = pair.start_sender(NO_SCAN)
    url = sender.rest_url()
    cli = subprocess.Popen([sys.executable, "-m", "hidra_core", "backfill", str(pair.source / "run1"), "--url", url,
                            "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _get(f"{url}/backfill")["queued"]["files"] == 30, 30, "the backfill queued every file")
        sender.kill()  # NOTE: SIGKILL: the ledger holds what the sender had recorded, nothing more
        _out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate(timeout=10)
    assert cli.returncode == 1 and f"lost the sender at {url}" in err and "run the same command again" in err
    pair.start_receiver()
    sender = pair.start_sender(NO_SCAN)
    done = _backfill(str(pair.source / "run1"), "--url", sender.rest_url(), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert all(intact(pair.target, rel, size) for rel, size in files.items())


def test_backfill_stays_a_bounded_number_of_files_ahead_of_storage(storage_path):
    """A tree larger than the backfill may hold unstored: the walk waits for storage, then completes."""
    pair = storage_path
    n = MAX_PENDING + 1500
    for i in range(n):
        (pair.source / "big" / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (pair.source / "big" / f"d{i % 10}" / f"f{i:05d}").write_bytes(b"x" * (i % 7))
    pair.start_receiver().stop()  # NOTE: storage is down: nothing is stored until it comes back
    sender = pair.start_sender(NO_SCAN)
    url = sender.rest_url()
    assert _post(f"{url}/backfill", json.dumps({"path": str(pair.source / "big")}).encode())[0] == 202
    wait_until(lambda: _get(f"{url}/backfill")["queued"]["files"] == MAX_PENDING, 60, "the backfill at its bound")
    report = _get(f"{url}/backfill")
    assert report["state"] == "scanning" and report["pending"] == MAX_PENDING and report["found"]["files"] < n
    (pair.source / "other").mkdir()
    status, answer = _post(f"{url}/backfill", json.dumps({"path": str(pair.source / "other")}).encode())
    assert status == 409 and f"a backfill of {pair.source / 'big'} is running" in answer["detail"]
    pair.start_receiver()
    done = _backfill(str(pair.source / "big"), "--url", url, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"{n:,} files" in done.stdout and len(tree(pair.target / "big")) == n


def test_backfill_of_a_directory_outside_the_source_tree_is_refused_naming_the_root(storage_path):
    pair = storage_path
    outside = pair.base / "elsewhere"
    write_file(outside / "secret.dat", 100)
    (pair.source / "escape").symlink_to(outside)
    pair.start_receiver()
    sender = pair.start_sender(NO_SCAN)
    url = sender.rest_url()
    for path in (outside, pair.source / ".." / "elsewhere", pair.source / "escape"):
        out = _backfill(str(path), "--url", url)
        assert out.returncode == 2, out.stderr
        assert "HTTP 400" in out.stderr and f"not inside the source's watched root {pair.source}" in out.stderr
    missing = _backfill(str(pair.source / "nope"), "--url", url)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    for body in (b"", b"[]", b'{"path": "relative/dir"}', b'{"path": 7}', b'{"dir": "/x"}', b"{nope"):
        status, answer = _post(f"{url}/backfill", body)
        assert status == 400 and answer["detail"], (body, answer)
    assert _get(f"{url}/backfill")["state"] == "idle"
    assert not (pair.target / "secret.dat").exists() and not (pair.target / "escape").exists()
    assert "Traceback" not in sender.text()


def test_backfill_names_a_file_the_sender_refuses_and_exits_1_after_sending_the_rest(storage_path):
    pair = storage_path
    files = _written_while_down(pair.source, 4)
    with open(os.fsencode(pair.source / "run1") + b"/bad\xff.dat", "wb") as f:
        f.write(b"a name that is not UTF-8")
    pair.start_receiver()
    sender = _running_without_scan(pair)
    out = _backfill(str(pair.source / "run1"), "--url", sender.rest_url(), "--no-progress")
    assert out.returncode == 1
    assert "5 files" in out.stdout and "4 sent and stored, 1 problems" in out.stdout
    assert "not sent: run1/bad\\xff.dat: name is not valid UTF-8" in out.stderr and "hidra ledger" in out.stderr
    assert all(intact(pair.target, rel, size) for rel, size in files.items())


def test_backfill_of_an_unreachable_sender_exits_1_naming_it(tmp_path):
    out = _backfill(str(tmp_path), "--url", "http://127.0.0.1:9")  # the discard port: nobody serves HTTP there
    assert out.returncode == 1 and "http://127.0.0.1:9 is unreachable" in out.stderr


def test_backfill_help_example_as_typed(storage_path, tmp_path):
    """The example of `hidra backfill --help` with --url and --token-file; only the path, URL and file change."""
    helptext = subprocess.run([sys.executable, "-m", "hidra_core", "backfill", "--help"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}).stdout
    line = next(line for line in helptext.splitlines() if line.strip().startswith("hidra backfill ") and "--url"
                in line)
    argv = shlex.split(line.split("#")[0])[2:]
    pair = storage_path
    files = _written_while_down(pair.source, 5)
    (tmp_path / "token").write_text("backfill-t0ken\n")
    pair.start_receiver()
    sender = pair.start_sender(NO_SCAN, f"sender.rest.token={{$file: {tmp_path / 'token'}}}")
    swap = {"/data/det1/run42": str(pair.source / "run1"), "http://detpc01:50080": sender.rest_url(),
            "/etc/hidra/rest-token": str(tmp_path / "token")}
    out = _backfill(*[swap.get(arg, arg) for arg in argv])
    assert out.returncode == 0, out.stderr
    assert all(intact(pair.target, rel, size) for rel, size in files.items())


def test_readme_backfill_line_as_typed(storage_path):
    """The README's line, run where `hidra up` runs (the source is ./hidra-data/source); --url adds the port."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(".venv/bin/hidra backfill "))
    argv = shlex.split(line.split("#")[0])[2:]
    pair = storage_path
    source = pair.base / "hidra-data" / "source"
    files = _written_while_down(source / "run42", 6)
    pair.start_receiver()
    sender = pair.start_sender(NO_SCAN, f"sender.source.inotify.path={source}")
    out = subprocess.run([sys.executable, "-m", "hidra_core", "backfill", *argv, "--url", sender.rest_url()],
                         capture_output=True, text=True, timeout=120, cwd=pair.base)
    assert out.returncode == 0, out.stderr
    assert all(intact(pair.target, f"run42/{rel}", size) for rel, size in files.items())
