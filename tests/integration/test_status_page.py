"""The live status page (issue 12) in a real headless Chromium, against real sender and receiver processes.

NOTE: Selenium drives Debian's Chromium through Debian's chromedriver: both come from one Debian source package
(scripts/install-system installs them), so their versions always match, and nothing is downloaded (a driver path
given to Selenium skips its driver manager). Playwright would bring its own Node.js driver, pinned to a Chromium
build of its own, and download that browser.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import zmq

from hidra_proc import Hidra, intact, sender_overrides, wait_until, write_file
from test_clients import Worker
from test_rest import SilentStorage

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
TOKEN = "page-t0ken"
STATIC = Path(__file__).parents[2] / "hidra_core" / "rest" / "static"

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"no {' and no '.join(MISSING)}: the browser test needs"
                                 " Debian's chromium and chromium-driver (bash scripts/install-system installs them)")]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,1800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _texts(driver: Any, selector: str) -> list[str]:
    """The text of each element the CSS ``selector`` finds, read in one go (the page replaces its rows each
    second: an element found in one call may be gone in the next)."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.innerText)", selector))


def _text(driver: Any, selector: str) -> str | None:
    """The text of the first element the CSS ``selector`` finds, None while there is none."""
    found = _texts(driver, selector)
    return found[0] if found else None


def _shows(driver: Any, selector: str, wanted: str, timeout: float = 30) -> None:
    """Polls the page (which polls the process once a second) until ``selector`` reads ``wanted``."""
    wait_until(lambda: _text(driver, selector) == wanted, timeout,
               f"the page to show {wanted!r} at {selector} (it shows {_text(driver, selector)!r})", interval=0.1)


def _no_script_errors(driver: Any) -> None:
    problems = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems == [], problems


def _move(pair: Any, names: list[str], size: int = 20_000) -> None:
    for name in names:
        write_file(pair.source / name, size)
    wait_until(lambda: all(intact(pair.target, name, size) for name in names), 60, "the files stored")


def test_the_status_page_shows_the_running_transfer_and_follows_it(storage_path: Any, browser: Any,
                                                                     tmp_path: Path) -> None:
    pair = storage_path
    receiver = pair.start_receiver()
    sender = pair.start_sender()
    client = Worker(pair.base, "client", re.search(r"com (\S+),", sender.text()).group(1), "tcp://127.0.0.1:1",
                    "stream", register=True)
    try:
        _move(pair, [f"run/a{i:02d}.raw" for i in range(12)])
        browser.get(sender.rest_url() + "/")
        _shows(browser, "tr[data-counter=confirmed] td.total", "12")
        _shows(browser, 'tr[data-target="storage"] td.files', "12")
        _shows(browser, f'tr[data-target="client {client.socket_id.lower()}"] td.files', "12")
        assert (_text(browser, "#role"), _text(browser, "#state")) == ("hidra sender", "running")
        flows = _text(browser, "#flows") or ""
        assert f"inotify at {pair.source}" in flows and "→ storage tcp://127.0.0.1:" in flows and " up " in flows
        assert f"analysis client {client.socket_id.lower()} connected" in flows
        assert _text(browser, "#files-count") == "(0)" and _text(browser, "#errors") == "none"
        wait_until(lambda: int(browser.find_element("id", "plot").get_attribute("data-samples")) >= 2, 30,
                   "two points in the plot")

        _move(pair, [f"run/b{i:02d}.raw" for i in range(8)])  # NOTE: no reload: the page follows by itself
        _shows(browser, "tr[data-counter=confirmed] td.total", "20")
        _shows(browser, 'tr[data-target="storage"] td.files', "20")
        _shows(browser, f'tr[data-target="client {client.socket_id.lower()}"] td.files', "20")
        browser.save_screenshot(str(tmp_path / "sender-page.png"))
        _no_script_errors(browser)

        browser.get(receiver.rest_url() + "/")
        _shows(browser, "tr[data-counter=stored] td.total", "20")
        _shows(browser, f'tr[data-target="target {pair.target}"] td.files', "20")
        assert _text(browser, "#role") == "hidra receiver"
        assert f"senders to {receiver.endpoints()[0]} → {pair.target} (writers: files)" in (_text(browser, "#flows")
                                                                                          or "")
        assert browser.find_element("id", "files-section").is_displayed() is False  # the receiver has no ledger
        _shows(browser, "#errors", "none")
        _send_garbage(receiver.endpoints()[0])
        _shows(browser, "tr[data-counter=malformed] td.total", "1")
        wait_until(lambda: "ERROR hidra_core.receiver.loop: malformed message dropped" in (_text(browser, "#errors")
                                                                                          or ""), 30, "the error")
        browser.save_screenshot(str(tmp_path / "receiver-page.png"))
        _no_script_errors(browser)
    finally:
        client.stop()


def _send_garbage(endpoint: str) -> None:
    context = zmq.Context()
    try:
        push = context.socket(zmq.PUSH)
        push.linger = 1000
        push.connect(endpoint)
        push.send_multipart([b"not a hidra message"])
        push.close()
    finally:
        context.term()


def test_the_status_page_lists_the_unconfirmed_files_and_shows_hostile_names_as_text(tmp_path: Path,
                                                                                     browser: Any) -> None:
    source, state = tmp_path / "source", tmp_path / "state"
    source.mkdir()
    state.mkdir()
    storage = SilentStorage()  # NOTE: takes the data and never confirms: the files stay unconfirmed
    names = ["held.raw", "<img src=x onerror=document.title='owned'>.raw"]
    sender = Hidra("sender", tmp_path / "sender.log", sender_overrides(source, state, storage.data,
                                                                       storage.confirmations))
    try:
        sender.wait_ready()
        for name in names:
            write_file(source / name, 3000)
        browser.get(sender.rest_url() + "/")

        def shows(selector: str, wanted: str) -> bool:
            storage.beacon()
            return _text(browser, selector) == wanted

        wait_until(lambda: shows("#files-count", "(2)"), 30, "two unconfirmed files on the page", interval=0.1)
        assert sorted(_texts(browser, "#files td.file")) == sorted(names)
        assert _texts(browser, "#files td.state") == ["sent", "sent"]
        assert _texts(browser, "#files img") == [] and "owned" not in browser.title
        wait_until(lambda: shows('tr[data-target="storage"] td.waiting', "2"), 30, "two files waiting")
        _no_script_errors(browser)
    finally:
        sender.kill()
        storage.close()


def test_the_status_page_asks_for_the_token_and_the_api_stays_closed_without_it(storage_path: Any,
                                                                                 browser: Any) -> None:
    pair = storage_path
    pair.start_receiver()
    sender = pair.start_sender(f"sender.rest.token={TOKEN}")
    url = sender.rest_url()
    _move(pair, ["first.raw", "second.raw", "third.raw"])

    # NOTE: the page and its files are served without the token, and are the shipped files: no data in them
    assert requests.get(url + "/", timeout=10).text == (STATIC / "index.html").read_text()
    assert requests.get(url + "/static/page.js", timeout=10).text == (STATIC / "page.js").read_text()
    for path in ("/status", "/statistics", "/files", "/static/%2E%2E/status", "/static/../../app.py"):
        assert requests.get(url + path, timeout=10).status_code in (401, 404), path
    assert requests.get(url + "/status", timeout=10).status_code == 401

    browser.get(f"{url}/#token={TOKEN}")
    _shows(browser, "tr[data-counter=confirmed] td.total", "3")
    assert TOKEN not in browser.current_url  # taken out of the address bar, kept in the tab's session storage

    browser.execute_script("sessionStorage.clear()")
    browser.get(url + "/")
    _shows(browser, "#state", "token needed")
    assert browser.find_element("id", "token-form").is_displayed()
    assert _text(browser, "tr[data-counter=confirmed] td.total") is None
    browser.find_element("id", "token-input").send_keys("wrong")
    browser.find_element("css selector", "#token-form button").click()
    _shows(browser, "#link", "the token was refused")
    browser.find_element("id", "token-input").clear()
    browser.find_element("id", "token-input").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    _shows(browser, "tr[data-counter=confirmed] td.total", "3")
    assert not browser.find_element("id", "token-form").is_displayed()
