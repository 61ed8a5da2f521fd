"""StopFlag in a real process: the first signal asks for a drain, a second one ends the process at once."""
from __future__ import annotations

import signal
import subprocess
import sys

CHILD = """
import signal, sys
from hidra_core.host.kernel import StopFlag
if sys.argv[1] == "ignore-sigint":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
flag = StopFlag()
flag.install()
print("ready", flush=True)
while not flag.wait(0.05):
    pass
print("draining", flush=True)
while True:  # a drain that never ends, as with a receiver that is gone
    signal.pause()
"""


def _child(mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_second_signal_ends_a_draining_process_at_once():
    for first, second in ((signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)):
        proc = _child("default")
        try:
            proc.send_signal(first)
            assert proc.stdout.readline() == "draining\n"
            proc.send_signal(second)
            assert proc.wait(30) == 128 + second
        finally:
            proc.kill()
            proc.wait()


def test_an_inherited_ignored_sigint_stays_ignored():
    """How `hidra up` keeps Ctrl-C to itself: its children start with SIGINT ignored."""
    proc = _child("ignore-sigint")
    try:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # handled, these two would have ended it with 130
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "draining\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
