"""One YAML file per instance, validated by frozen pydantic models; errors name file, section and key.

Each driver declares its own ``config_class``; its options live in a section named after the driver, next to
the key that chooses it (``source: {type: inotify, inotify: {path: /data}}``), and the driver gets only that
section. ``{"$env": NAME}`` and ``{"$file": path}`` values are resolved before validation.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from hidra_core.errors import ConfigError
from hidra_core.security.config import SecurityConfig

__all__ = [
    "ClientsConfig", "DriverChoice", "InstanceConfig", "LedgerConfig", "LocalTargetConfig", "PluginsConfig",
    "ReceiverConfig", "RestConfig", "SenderConfig", "StorageTarget", "apply_override", "blame_overrides",
    "load_config", "load_model", "split_address", "validate_section",
]

MiB = 2**20
DEFAULT_SOURCE = "inotify"
#: ``scheme://address``; the scheme picks the transport driver (tcp, ipc, inproc, ...)
M = TypeVar("M", bound=BaseModel)
Endpoint = Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.-]*://\S+$")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DriverChoice(BaseModel):
    """``type`` names the driver; an optional key of the same name holds that driver's options."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(description="entry-point name of the driver")

    @model_validator(mode="after")
    def _only_own_section(self) -> DriverChoice:
        for key, value in (self.model_extra or {}).items():
            if key != self.type:
                raise ValueError(f"unknown key {key!r}: only '{self.type}' (options of the chosen driver) is allowed")
            if not isinstance(value, dict):
                raise ValueError(f"'{key}' must be a mapping of driver options")
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict((self.model_extra or {}).get(self.type) or {})


class StorageTarget(_Section):
    """The fixed, priority-0 storage receiver: gets every file, and only its confirmation allows removal."""

    data: Endpoint | list[Endpoint] = Field(
        "tcp://127.0.0.1:50100", description="receiver's data endpoint (the sender connects); a list for a receiver"
        " group: each file goes to one member (by hash of its path or series), and a member that stops sending"
        " beacons has its unconfirmed files sent to the others")
    confirmations: Endpoint | list[Endpoint] = Field(
        "tcp://127.0.0.1:50053", description="receiver's confirmation PUB endpoint (the sender subscribes); for a"
        " group, a list of the same length as data (the i-th member's)")
    remove_source: Literal["never", "after_confirmation"] = Field(
        "never", description="remove the source file once the receiver confirmed a durable, matching copy")
    confirmation_timeout_s: float = Field(
        60.0, gt=0, description="re-send a file not confirmed this long after its first send (doubling with each"
        " further send, up to max_backoff_s)")
    max_attempts: int = Field(
        5, ge=1, description="sends of one file before it is reported as unconfirmed (state 'unconfirmed' in"
        " `hidra ledger`, a WARNING); it is still sent again until confirmed, the sender never gives a file up")
    max_backoff_s: float = Field(
        300.0, gt=0, description="each re-send of an unconfirmed file doubles its confirmation timeout, up to this"
        " (never below confirmation_timeout_s)")
    accept_legacy_confirmations: bool = Field(
        False, description="treat confirmations without a checksum (HiDRA 4.x receivers) as proof of storage")
    hwm: int = Field(4, ge=1, description="chunks queued towards the receiver before sends block (back-pressure)")

    @model_validator(mode="after")
    def _same_length(self) -> StorageTarget:
        data, conf = _as_list(self.data), _as_list(self.confirmations)
        if len(data) != len(conf) or not data:
            raise ValueError(f"data lists {len(data)} receivers, confirmations {len(conf)}: give one confirmation"
                             " endpoint per data endpoint, in the same order")
        if len(set(data)) != len(data) or len(set(conf)) != len(conf):
            raise ValueError("a receiver group lists an endpoint twice")
        return self

    @property
    def members(self) -> list[tuple[str, str]]:
        """``(data, confirmations)`` of each member of the storage receiver group (one for a single receiver)."""
        return list(zip(_as_list(self.data), _as_list(self.confirmations)))


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class ClientsConfig(_Section):
    """Analysis clients that register at run time (HiDRA 4.x com and request ports, hidra4-protocol.md §3-§5)."""

    enabled: bool = Field(True, description="open the com and request ports (also off when whitelist is [])")
    com: Endpoint = Field("tcp://0.0.0.0:50000", description="signal endpoint to bind (REP); clients connect")
    request: Endpoint = Field("tcp://0.0.0.0:50001", description="NEXT/CANCEL endpoint to bind (PULL)")
    whitelist: list[str] | None = Field(
        default_factory=lambda: ["localhost"],
        description="hosts allowed to register and to receive data; null: anybody, []: nobody. 'localhost' means"
        " this machine (loopback and its own names)")
    admin_hosts: list[str] = Field(default_factory=lambda: ["localhost"],
                                   description="hosts allowed to FORCE_STOP other applications' registrations")
    allow_foreign_targets: bool = Field(
        False, description="let a client register data targets on hosts other than its own")
    registration_ttl_s: float = Field(60.0, gt=0,
                                      description="drop a target disconnected this long, or a query set idle this long")
    budget_messages: int = Field(1000, ge=1, description="messages queued towards one client before files are skipped")
    budget_bytes: int = Field(64 * MiB, ge=1, description="bytes queued towards one client before files are skipped")
    stall_timeout_s: float = Field(
        5.0, gt=0, description="a client with queued data that takes nothing for this long has its queue dropped"
        " (memory freed, counted as cut_off) and is reconnected")
    lookup_timeout_s: float = Field(0.5, gt=0, description="longest a host name lookup may take (1 s reply window)")
    control_shim: Endpoint | None = Field(
        None, description="bind a read-only 4.x control-server shim here (e.g. tcp://0.0.0.0:51000) so clients using"
        " Transfer(..., detector_id=...) find the com and request ports")
    detector_id: str | None = Field(None, description="the detector id the shim answers for (null: any)")


class LocalTargetConfig(_Section):
    """A durable copy of every file on the sender's side; metadata-only clients are pointed at it."""

    path: str = Field(description="directory the copies go to (must exist)")
    writer: str = Field("files", description="writer driver that makes the copies (hidra.writers)")
    options: dict[str, Any] = Field(default_factory=dict, description="options of that writer")


class LedgerConfig(_Section):
    path: str | None = Field(
        None, description="SQLite file with each file's state, locked while a sender runs. null: one ledger per"
        " source, hidra-data/state/ledger-<source dir name>-<hash of its real path>.sqlite; a set path must not be"
        " shared by two sources")


class HoldConfig(_Section):
    """Data that arrived in memory (stream frames) exists nowhere else until the storage receiver confirmed it."""

    max_bytes: int = Field(
        128 * MiB, gt=0, description="payload bytes held from the source's hand-over until storage confirmed them;"
        " past this the source waits or drops (when_full). In steady state only the frames awaiting their"
        " confirmation are held (a commit's worth); it fills only while storage is slower than the source")
    when_full: Literal["block", "drop"] = Field(
        "block", description="block: the source stops reading (back-pressure reaches the detector, whose buffer"
        " holds the data); drop: new frames are dropped, counted, logged and recorded as 'lost' in the ledger")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as ``(host, port)``; ValueError naming what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:50080, [::1]:50080; port 0: a free one)")
    return host, int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # NOTE: a host name may resolve anywhere: it needs a token like any other address
        return False


class RestConfig(_Section):
    """The process's HTTP API (status, statistics, config, drain and stop) and its Prometheus ``/metrics``."""

    enabled: bool = Field(True, description="serve the REST API and /metrics from a thread of this process")
    address: str = Field("127.0.0.1:50080", description="host:port to listen on (port 0: a free one, the ready"
                         " line tells which); anything but a loopback address requires a token")
    token: str | None = Field(
        None, min_length=1, description="bearer token every request must carry (Authorization: Bearer <token>);"
        " give it as {$file: path} or {$env: NAME} rather than in the file. Required unless bound to loopback")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_address(value)
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> RestConfig:
        if self.enabled and self.token is None and not _loopback(split_address(self.address)[0]):
            raise ValueError(f"address {self.address} is not a loopback address: set token as well (every request"
                             " must then carry it), or listen on 127.0.0.1")
        return self


class ReceiverRestConfig(RestConfig):
    """The process's HTTP API (status, statistics, config, drain and stop) and its Prometheus ``/metrics``."""

    address: str = Field("127.0.0.1:50081", description="host:port to listen on (port 0: a free one, the ready"
                         " line tells which; a group's worker i: port + i); anything but a loopback address"
                         " requires a token")


class SenderConfig(_Section):
    source: DriverChoice = Field(default_factory=lambda: DriverChoice(type=DEFAULT_SOURCE),
                                 description="event source driver (entry point in hidra.event_sources)")
    fetcher: DriverChoice | None = Field(
        None, description="fetcher driver (hidra.fetchers); default: the one the source names")
    storage: StorageTarget = Field(default_factory=StorageTarget)
    chunksize: int = Field(10 * MiB, gt=0, description="bytes per data message")
    streams: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="data pipelines run in parallel (HiDRA 4.x number_of_streams): each reads, hashes and"
        " sends its own files in a thread of its own over its own sockets; one ledger, one source. 'auto': one per"
        " 4 cores, 1 to 8 (1 on a 2-core machine: there a second pipeline only competes with the receiver)")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    hold: HoldConfig = Field(default_factory=HoldConfig)
    compat_version: str = Field("4.4.3", pattern=r"^4\.\d+\.\d+$",
                                description="HiDRA 4.x version announced on the wire (never the package version)")
    drain_timeout_s: float = Field(
        10.0, ge=0, description="on SIGTERM/SIGINT, finish the file being sent and wait for open confirmations at"
        " most this long, then stop (what is unfinished is resumed at the next start); a second signal stops at once")
    summary_interval_s: float = Field(
        10.0, ge=0, description="log a summary (files/s, MiB/s, queued, awaiting confirmation, retrying) this often;"
        " 0: never")
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    local_target: LocalTargetConfig | None = Field(
        None, description="keep a durable local copy of every file (required by the metadata modes)")
    transports: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per transport driver, keyed by URL scheme (tcp, ipc, ...)")
    rest: RestConfig = Field(default_factory=RestConfig)

    @property
    def stream_count(self) -> int:
        """``streams`` with 'auto' resolved for this machine."""
        if self.streams != "auto":
            return self.streams
        return max(1, min(8, (os.cpu_count() or 1) // 4))

    @model_validator(mode="before")
    @classmethod
    def _default_source_type(cls, data: Any) -> Any:
        # NOTE: lets `--set sender.source.inotify.path=/x` work without also naming the default type.
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "type" not in data["source"]:
            data = {**data, "source": {"type": DEFAULT_SOURCE, **data["source"]}}
        return data


class ReceiverConfig(BaseModel):
    """The storage receiver. Options of each writer go in a key named after it (``files: {fsync: false}``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    target: str = Field("hidra-data/target", description="root directory every file is written below (must exist)")
    data: Endpoint = Field("tcp://127.0.0.1:50100", description="data endpoint to bind (PULL)")
    confirmations: Endpoint = Field("tcp://127.0.0.1:50053", description="confirmation endpoint to bind (PUB)")
    status: Endpoint | None = Field("tcp://127.0.0.1:50050",
                                    description="4.x STATUS_CHECK endpoint to bind (REP); null: none")
    workers: int = Field(
        1, ge=1, le=64, description="receiver processes of a one-host group (`hidra receiver --workers N`): worker i"
        " binds the data and confirmation ports + i, worker 0 alone the status port; senders list the group's"
        " endpoints in sender.storage.data and .confirmations")
    writers: list[str] = Field(default_factory=lambda: ["files"], min_length=1,
                               description="writer drivers (hidra.writers), in the order they are called")
    hwm: int = Field(8, ge=1, description="chunks buffered on the data socket (each up to chunksize bytes of memory)")
    commit_batch: int = Field(256, ge=1, description="most files made durable together in one commit")
    max_unfinished_per_sender: int = Field(
        64, ge=1, description="unfinished files one sender (its confirmation topic, else its address) may have"
        " open; beyond, its least recently active one is dropped with a warning. A real sender has one in flight")
    max_unfinished: int = Field(
        1024, ge=1, description="unfinished files of all senders together (each holds a descriptor); beyond, the"
        " least recently active one is dropped. At a bound, files idle for 10 s expire (otherwise 300 s)")
    summary_interval_s: float = Field(
        10.0, ge=0, description="seconds between INFO summary lines (files/s, MiB/s, unfinished files, commit"
        " backlog, refused/failed counts); 0 turns them off")
    log_each_file: bool = Field(
        True, description="one INFO line per stored file (name, size, ms from first chunk to durable) on the"
        " logger hidra_core.receiver.files; false turns that logger down to warnings")
    transports: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                  description="options per transport driver, keyed by URL scheme")
    rest: ReceiverRestConfig = Field(default_factory=ReceiverRestConfig)

    @model_validator(mode="after")
    def _writer_sections(self) -> ReceiverConfig:
        for key, value in (self.model_extra or {}).items():
            if key not in self.writers:
                raise ValueError(f"unknown key {key!r} (writer options are only allowed for {self.writers})")
            if not isinstance(value, dict):
                raise ValueError(f"'{key}' must be a mapping of writer options")
        return self

    def writer_options(self, name: str) -> dict[str, Any]:
        return dict((self.model_extra or {}).get(name) or {})


class PluginsConfig(_Section):
    disabled: list[str] = Field(default_factory=list, description="hook plugins (group 'hidra') not to load")


class InstanceConfig(_Section):
    sender: SenderConfig = Field(default_factory=SenderConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: dotted keys whose values came from ``$env``/``$file`` (``GET /config`` shows them redacted)
    _secret_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def secret_keys(self) -> frozenset[str]:
        return self._secret_keys


def _resolve_secrets(value: Any, where: str, found: set[str] | None = None, key: str = "") -> Any:
    """``value`` with every ``$env``/``$file`` mapping replaced by what it names; their dotted keys go to ``found``."""
    if isinstance(value, dict) and set(value) in ({"$env"}, {"$file"}) and found is not None:
        found.add(key)
    if isinstance(value, dict):
        if set(value) == {"$env"}:
            name = value["$env"]
            if name not in os.environ:
                raise ConfigError(where, [f"environment variable {name!r} is not set"])
            return os.environ[name]
        if set(value) == {"$file"}:
            try:
                return Path(value["$file"]).read_text().strip()
            except OSError as exc:
                raise ConfigError(where, [f"cannot read $file {value['$file']!r}: {exc.strerror}"]) from None
        return {k: _resolve_secrets(v, where, found, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_secrets(v, where, found, f"{key}.{i}") for i, v in enumerate(value)]
    return value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) to the raw config mapping in place."""
    path, sep, text = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not sep or not keys:
        raise ConfigError("--set", [f"{assignment!r}: expected section.key=value"])
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError("--set", [f"{assignment!r}: {key!r} is not a section"])
        node = child
    node[keys[-1]] = yaml.safe_load(text) if text.strip() else ""


def _yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def blame_overrides(exc: ConfigError, overrides: Iterable[str]) -> ConfigError:
    """``exc`` with each problem about a key given by ``--set`` naming that ``--set`` (and the source ``--set``
    when every problem came from one)."""
    given = [(tuple(k for k in a.partition("=")[0].strip().split(".") if k), a) for a in overrides]
    lines, from_set = [], 0
    for problem in exc.problems:
        keys = tuple(problem.partition(":")[0].split("."))
        blamed = [a for k, a in given if k and (keys[:len(k)] == k or k[:len(keys)] == keys)]
        if blamed:
            from_set += 1
            problem = f"{problem} (from --set {blamed[-1]})"
        lines.append(problem)
    if not from_set:
        return exc
    return ConfigError("--set" if from_set == len(lines) else exc.source, lines)


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        lines.append(f"{loc or '<top>'}: {msg}{got}")
    return lines


def validate_section(model: type[BaseModel], data: Mapping[str, Any], source: str, section: str) -> Any:
    """Validate one section with ``model``; ``ConfigError`` names ``source`` and each ``section.key``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, section)) from None


def _read_mapping(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(source, exc)]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping"])
    return raw


def _raw(path: str | os.PathLike[str] | None, overrides: Iterable[str], source: str,
         secrets: set[str] | None = None) -> dict[str, Any]:
    raw = _read_mapping(path, source) if path else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    resolved: dict[str, Any] = _resolve_secrets(raw, source, secrets)
    return resolved


def load_config(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> InstanceConfig:
    """Read, override and validate an instance config; with no file, the embedded defaults."""
    source = str(path) if path else "<defaults>"
    secrets: set[str] = set()
    config: InstanceConfig = validate_section(InstanceConfig, _raw(path, overrides, source, secrets), source, "")
    config._secret_keys = frozenset(secrets)
    return config


def load_model(model_cls: type[M], path: str | os.PathLike[str] | None, overrides: Iterable[str] = (),
               origin: str = "<defaults>", flags: Mapping[str, Any] | None = None) -> M:
    """Config of one program that is not a HiDRA instance (a plugin's own service) the way ``load_config`` reads
    an instance's: an optional YAML mapping at ``path``, then ``--set a.b=value`` overrides (YAML-parsed), then
    ``flags`` (explicit command-line values, already typed; they win), ``$env``/``$file`` resolved, validated by
    ``model_cls``. ``ConfigError`` names the file (or ``origin`` without one) and each dotted key, and the
    ``--set``/flag that gave a refused value."""
    overrides = list(overrides)
    source = str(path) if path else origin
    raw = {**_raw(path, overrides, source), **(flags or {})}
    try:
        return validate_section(model_cls, raw, source, "")
    except ConfigError as exc:
        exc = ConfigError(source, [_blame_flag(p, flags or {}) for p in exc.problems])
        raise blame_overrides(exc, [o for o in overrides if o.partition("=")[0].strip() not in (flags or {})]) from None


def _blame_flag(problem: str, flags: Mapping[str, Any]) -> str:
    key = problem.partition(":")[0].partition(".")[0]
    return f"{problem} (from --{key})" if key in flags else problem
