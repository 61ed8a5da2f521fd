"""``hidra-databuffer-replay``: re-run writing requests from ``.err`` files or audit trails (databuffer.md §7).

Examples::

    hidra-databuffer-replay /data/run7.h5.err
    hidra-databuffer-replay /var/log/sf_databuffer_audit.log --match /data/run7.h5 --output-file /tmp/run7.h5
    hidra-databuffer-replay audit.log --line 12 --inject tcp://127.0.0.1:12501

Without ``--inject`` each request is queried and written here (no retrieval delay); with it each request is sent
as a bsread message on a PUSH socket bound at ENDPOINT, for writers connected there. Several requests replayed
here show a progress bar when stderr is a terminal, and one ``[i/n]`` log line each otherwise.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bsread.sender import Sender
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hidra_databuffer.dbwriter.errfile import read_requests
from hidra_databuffer.dbwriter.query import DEFAULT_DATA_API_URL
from hidra_databuffer.dbwriter.request import REQUEST_CHANNELS, RequestError, WriteRequest
from hidra_databuffer.dbwriter.service import DEV_NULL, WriterOptions, execute

log = logging.getLogger(__name__)

__all__ = ["inject", "main", "select_requests"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hidra-databuffer-replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a .err file or an audit trail")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--line", type=int, help="only line N (1-based) of each FILE")
    which.add_argument("--match", metavar="OUTPUT_FILE", help="only requests whose output_file is this")
    p.add_argument("--output-file", metavar="PATH", help="write to PATH instead (one request only)")
    p.add_argument("--inject", metavar="ENDPOINT", help="send to writers instead, binding a PUSH at ENDPOINT")
    p.add_argument("--send_timeout_ms", type=int, default=10000,
                   help="with --inject: give up when no writer takes a request this long (default 10000)")
    p.add_argument("--data_api_url", default=DEFAULT_DATA_API_URL, help="query URL (default %(default)s)")
    p.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return p


def select_requests(files: list[Path], line: int | None, match: str | None) -> list[WriteRequest]:
    chosen: list[WriteRequest] = []
    for path in files:
        found = read_requests(path)
        if line is not None:
            found = [(n, r) for n, r in found if n == line]
            if not found:
                raise RequestError(f"{path}: no request on line {line}")
        chosen += [r for _, r in found if match is None or r.output_file == match]
    if not chosen:
        raise RequestError(f"no request selected from {', '.join(map(str, files))}")
    return chosen


def inject(requests: list[WriteRequest], endpoint: str, send_timeout_ms: int) -> None:
    """Send each request as the broker would (§4): one bsread message, PUSH bound at ``endpoint``."""
    address, _, port = endpoint.rpartition(":")
    if not address or not (port.isdigit() or port == "*"):
        raise RequestError(f"--inject wants tcp://HOST:PORT, got {endpoint!r}")
    sender = Sender(port=port, address=address, queue_size=len(requests), send_timeout=send_timeout_ms)
    for name, metadata in REQUEST_CHANNELS:
        sender.add_channel(name, metadata=dict(metadata))
    sender.open()
    try:
        for request in requests:
            sender.send(request.data_api_request, request.parameters, request.timestamp, check_data=False)
            log.info("injected %s", request.describe())
    finally:
        sender.close()


def _run_here(requests: list[WriteRequest], options: WriterOptions) -> int:
    if len(requests) > 1 and sys.stderr.isatty():
        with _progress_bar() as bar:
            task = bar.add_task("replay", total=len(requests))
            return _run_all(requests, options, lambda: bar.advance(task))
    return _run_all(requests, options, lambda: None)


def _run_all(requests: list[WriteRequest], options: WriterOptions, advance: Callable[[], None]) -> int:
    failed = 0
    for index, request in enumerate(requests, start=1):
        try:
            if request.output_file == DEV_NULL:
                log.info("[%d/%d] %s: skipped", index, len(requests), DEV_NULL)
                continue
            channels, points = execute(request, options)
            log.info("[%d/%d] wrote %s: %d channels, %d points", index, len(requests), request.output_file,
                     channels, points)
        except Exception as exc:
            failed += 1
            log.error("[%d/%d] %s: failed: %s", index, len(requests), request.describe(), exc)
        finally:
            advance()
    return failed


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    """A rich bar on stderr; log records go through its console meanwhile, so they print above the bar."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True))
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = RichHandler(console=bar.console, show_path=False)
    root.handlers = [handler]
    try:
        with bar:
            yield bar
    finally:
        root.handlers = saved


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        requests = select_requests(args.files, args.line, args.match)
        if args.output_file:
            if len(requests) != 1:
                raise RequestError(f"--output-file needs exactly one request, {len(requests)} selected")
            requests = [requests[0].with_output_file(args.output_file)]
        if args.inject:
            inject(requests, args.inject, args.send_timeout_ms)
            return 0
    except (RequestError, OSError) as exc:
        print(f"hidra-databuffer-replay: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # NOTE: zmq.Again from a send nobody took, among others
        print(f"hidra-databuffer-replay: injecting to {args.inject} failed: {exc!r}", file=sys.stderr)
        return 1
    failed = _run_here(requests, WriterOptions(data_api_url=args.data_api_url))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
