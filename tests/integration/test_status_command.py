"""`hidra status`: a table of running processes from their REST API, as a user types it."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_proc import intact, wait_until, write_file

pytestmark = pytest.mark.integration

WIDE = {**os.environ, "COLUMNS": "250"}  # NOTE: rich draws for a terminal this wide, so no cell is folded


def _status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hidra_core", "status", *args], capture_output=True, text=True,
                          timeout=60, env=WIDE)


def test_status_shows_what_each_process_moved_and_watch_adds_rates(storage_path):
    pair = storage_path
    pair.start_receiver()
    pair.start_sender()
    for i in range(5):
        write_file(pair.source / f"f{i}.dat", 1000 * (i + 1))
    wait_until(lambda: all(intact(pair.target, f"f{i}.dat", 1000 * (i + 1)) for i in range(5)), 30, "five files")
    urls = [pair.sender.rest_url(), pair.receiver.rest_url()]
    wait_until(lambda: "5 sent, 5 confirmed" in _status(*urls).stdout, 10, "the sender's counters in the table")
    out = _status(*urls)
    assert out.returncode == 0, out.stderr
    sender_row = next(line for line in out.stdout.splitlines() if urls[0] in line)
    receiver_row = next(line for line in out.stdout.splitlines() if urls[1] in line)
    assert "sender" in sender_row and "running" in sender_row and "inotify" in sender_row
    assert "receiver" in receiver_row and "5 stored" in receiver_row and str(pair.target) in receiver_row
    watched = _status(*urls, "--watch", "0.3", "--count", "2")
    assert watched.returncode == 0 and "/s)" in watched.stdout  # the second table has rates


def test_status_of_an_instance_that_does_not_answer_exits_1_naming_it(tmp_path):
    out = _status("http://127.0.0.1:9")  # the discard port: nobody serves HTTP there
    assert out.returncode == 1
    assert "http://127.0.0.1:9" in out.stdout and "unreachable" in out.stdout


def test_status_says_when_a_token_is_needed_and_takes_one_from_a_file(storage_path, tmp_path):
    pair = storage_path
    (tmp_path / "token").write_text("s3cret-token\n")
    pair.start_receiver(f"receiver.rest.token={{$file: {tmp_path / 'token'}}}")
    url = pair.receiver.rest_url()
    out = _status(url)
    assert out.returncode == 1 and "HTTP 401 (a token is needed: --token)" in out.stdout
    out = _status(url, "--token-file", str(tmp_path / "token"))
    assert out.returncode == 0 and "receiver" in out.stdout and "0 stored" in out.stdout


def test_the_readme_status_line_as_typed(storage_path):
    """Only the ports change, and --count ends the watch a user would end with Ctrl-C."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(".venv/bin/hidra status "))
    argv = shlex.split(line.split("#")[0])[2:]
    pair = storage_path
    pair.start_receiver()
    pair.start_sender()
    urls = {"http://127.0.0.1:50080": pair.sender.rest_url(), "http://127.0.0.1:50081": pair.receiver.rest_url()}
    out = _status(*[urls.get(arg, arg) for arg in argv], "--count", "2")
    assert out.returncode == 0, out.stderr
    assert "sender" in out.stdout and "receiver" in out.stdout and "running" in out.stdout
