"""Instance configuration: frozen pydantic models, errors naming file and dotted key, --set, $env/$file,
and building every configured driver (``check_config``, shared with the sender and receiver, and ``hidra config
check``)."""
from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from hidra_core import ConfigError, DriverLoadFailure, load_model
from hidra_core.host.build import check_config as check_drivers
from hidra_core.config import InstanceConfig, ReceiverConfig, SenderConfig, apply_override, load_config


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default source and target directories exist, as `hidra up` makes them: drivers are really built."""
    monkeypatch.chdir(tmp_path)
    for d in ("hidra-data/source", "hidra-data/target", "ramdisk"):
        (tmp_path / d).mkdir(parents=True)


@pytest.fixture
def write(tmp_path: Path):
    def _write(text: str, name: str = "instance.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


def _error(path: Path | None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------------------


def test_defaults_are_valid_without_a_file() -> None:
    config = load_config()
    assert isinstance(config, InstanceConfig)
    assert config.sender.source.type == "inotify" and config.sender.source.options == {}
    assert config.sender.fetcher is None
    assert config.sender.chunksize == 10 * 2**20
    assert config.sender.storage.remove_source == "never"
    assert config.receiver.writers == ["files"] and config.receiver.writer_options("files") == {}
    assert config.plugins.disabled == [] and config.log_level == "INFO"
    check_drivers(config, "<defaults>")  # every default driver is installed and accepts its (empty) options


def test_an_empty_file_means_defaults(write) -> None:
    assert load_config(write("")) == load_config()


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(pydantic.ValidationError):
        config.sender.chunksize = 1  # type: ignore[misc]


# --- unknown keys and wrong types ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("bogus: 1", "bogus"),
    ("sender: {bogus: 1}", "sender.bogus"),
    ("sender: {storage: {bogus: 1}}", "sender.storage.bogus"),
    ("sender: {ledger: {bogus: 1}}", "sender.ledger.bogus"),
    ("plugins: {bogus: []}", "plugins.bogus"),
])
def test_unknown_key_names_file_and_dotted_key(write, text: str, key: str) -> None:
    path = write(text)
    message = _error(path)
    assert str(path) in message
    assert f"{key}: unknown key" in message


def test_unknown_key_at_driver_choice_level(write) -> None:
    path = write("sender: {source: {type: inotify, polling: {path: /x}}}")
    message = _error(path)
    assert str(path) in message
    assert "sender.source" in message and "unknown key 'polling'" in message


def test_options_of_the_chosen_driver_must_be_a_mapping(write) -> None:
    message = _error(write("sender: {source: {type: inotify, inotify: 5}}"))
    assert "sender.source" in message and "'inotify' must be a mapping" in message


def test_unknown_writer_section_is_refused(write) -> None:
    message = _error(write("receiver: {hdf5: {compression: lz4}}"))
    assert "receiver" in message and "unknown key 'hdf5'" in message and "['files']" in message


def test_writer_options_only_under_a_configured_writer(write) -> None:
    config = load_config(write("receiver: {writers: [files], files: {fsync: false}}"))
    assert config.receiver.writer_options("files") == {"fsync": False}


@pytest.mark.parametrize(("text", "key", "got"), [
    ("sender: {chunksize: big}", "sender.chunksize", "got 'big'"),
    ("sender: {chunksize: 0}", "sender.chunksize", "got 0"),
    ("sender: {storage: {max_attempts: 0}}", "sender.storage.max_attempts", "got 0"),
    ("sender: {storage: {remove_source: always}}", "sender.storage.remove_source", "got 'always'"),
    ("sender: {compat_version: '5.0.0'}", "sender.compat_version", "got '5.0.0'"),
    ("receiver: {writers: []}", "receiver.writers", "got []"),
    ("log_level: LOUD", "log_level", "got 'LOUD'"),
    ("sender: {storage: [1, 2]}", "sender.storage", "got [1, 2]"),
])
def test_wrong_type_names_key_and_what_was_got(write, text: str, key: str, got: str) -> None:
    path = write(text)
    message = _error(path)
    assert str(path) in message
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(f"{key}:"))
    assert got in line


def test_every_problem_is_reported_at_once(write) -> None:
    message = _error(write("bogus: 1\nsender: {chunksize: big, storage: {bogus: 2}}"))
    for key in ("bogus: unknown key", "sender.chunksize:", "sender.storage.bogus: unknown key"):
        assert key in message


def test_yaml_not_a_mapping(write) -> None:
    path = write("- a\n- b\n")
    message = _error(path)
    assert str(path) in message and "top level must be a mapping" in message


def test_invalid_yaml(write) -> None:
    path = write("sender: [\n")
    message = _error(path)
    assert str(path) in message and "not valid YAML" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    message = _error(path)
    assert str(path) in message and "cannot read" in message


# --- --set overrides ----------------------------------------------------------------------------------------


def test_set_overrides_parse_values_as_yaml(write) -> None:
    path = write("sender: {chunksize: 1024, storage: {data: 'tcp://a:1'}}")
    config = load_config(path, ["sender.chunksize=4096", "sender.storage.remove_source=after_confirmation",
                                "sender.storage.confirmation_timeout_s=2.5", "plugins.disabled=[a, b]"])
    assert config.sender.chunksize == 4096
    assert config.sender.storage.data == "tcp://a:1"  # untouched keys of the file are kept
    assert config.sender.storage.remove_source == "after_confirmation"
    assert config.sender.storage.confirmation_timeout_s == 2.5
    assert config.plugins.disabled == ["a", "b"]


def test_set_reaches_nested_driver_options() -> None:
    config = load_config(None, ["sender.source.inotify.path=ramdisk", "sender.source.inotify.ignore=['*.tmp']",
                                "receiver.files.fsync=false", "sender.transports.tcp.linger_ms=0"])
    assert config.sender.source.type == "inotify"  # the default type is implied
    assert config.sender.source.options == {"path": "ramdisk", "ignore": ["*.tmp"]}
    assert config.receiver.writer_options("files") == {"fsync": False}
    assert config.sender.transports == {"tcp": {"linger_ms": 0}}
    check_drivers(config, "--set")


def test_set_can_switch_driver_and_give_its_options() -> None:
    config = load_config(None, ["sender.source.type=hidra_fake_ok", "sender.source.hidra_fake_ok.count=3"])
    assert config.sender.source.type == "hidra_fake_ok" and config.sender.source.options == {"count": 3}


def test_set_of_an_unknown_key_is_refused() -> None:
    assert "sender.bogus: unknown key" in _error(None, ("sender.bogus=1",))


def test_later_set_wins() -> None:
    assert load_config(None, ["sender.chunksize=1", "sender.chunksize=2"]).sender.chunksize == 2


@pytest.mark.parametrize(("assignment", "why"), [
    ("sender.chunksize", "expected section.key=value"),
    ("=5", "expected section.key=value"),
    ("...=5", "expected section.key=value"),
    ("sender.chunksize.x=1", "'chunksize' is not a section"),
])
def test_bad_set_syntax(write, assignment: str, why: str) -> None:
    message = _error(write("sender: {chunksize: 5}"), (assignment,))
    assert "--set" in message and repr(assignment) in message and why in message


def test_apply_override_edits_in_place() -> None:
    raw: dict = {}
    apply_override(raw, "a.b.c= {x: 1}")
    apply_override(raw, "a.d=")
    assert raw == {"a": {"b": {"c": {"x": 1}}, "d": ""}}


# --- secrets ------------------------------------------------------------------------------------------------


def test_env_and_file_values_are_resolved(write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDRA_TEST_DATA_ENDPOINT", "tcp://storage01:50100")
    secret = tmp_path / "endpoint.txt"
    secret.write_text("tcp://storage01:50053\n")
    path = write(f"""
sender:
  storage:
    data: {{$env: HIDRA_TEST_DATA_ENDPOINT}}
    confirmations: {{$file: {secret}}}
plugins:
  disabled: [{{$env: HIDRA_TEST_DATA_ENDPOINT}}]
""")
    config = load_config(path)
    assert config.sender.storage.data == "tcp://storage01:50100"
    assert config.sender.storage.confirmations == "tcp://storage01:50053"  # trailing newline stripped
    assert config.plugins.disabled == ["tcp://storage01:50100"]


def test_env_and_file_inside_driver_options(monkeypatch: pytest.MonkeyPatch, write) -> None:
    monkeypatch.setenv("HIDRA_TEST_SOURCE", "/beamtime/raw")
    config = load_config(write("sender: {source: {type: inotify, inotify: {path: {$env: HIDRA_TEST_SOURCE}}}}"))
    assert config.sender.source.options == {"path": "/beamtime/raw"}


def test_unset_env_names_the_file_and_variable(monkeypatch: pytest.MonkeyPatch, write) -> None:
    monkeypatch.delenv("HIDRA_TEST_UNSET", raising=False)
    path = write("sender: {storage: {data: {$env: HIDRA_TEST_UNSET}}}")
    message = _error(path)
    assert str(path) in message and "'HIDRA_TEST_UNSET' is not set" in message


def test_unreadable_file_secret_is_a_config_error(tmp_path: Path, write) -> None:
    missing = tmp_path / "no-such-secret"
    path = write(f"sender: {{storage: {{data: {{$file: {missing}}}}}}}")
    message = _error(path)
    assert str(path) in message and str(missing) in message


def test_a_mapping_with_more_than_the_marker_is_not_a_secret(write) -> None:
    message = _error(write("sender: {storage: {data: {$env: X, other: 1}}}"))
    assert "sender.storage.data" in message


# --- check_drivers ------------------------------------------------------------------------------------------


def _check(path: Path) -> None:
    check_drivers(load_config(path), str(path))


def test_check_drivers_unknown_source(write) -> None:
    with pytest.raises(DriverLoadFailure) as info:
        _check(write("sender: {source: {type: nosuch}}"))
    assert (info.value.role, info.value.name) == ("event source", "nosuch")
    assert "event source driver 'nosuch'" in str(info.value)


def test_check_drivers_unknown_writer(write) -> None:
    with pytest.raises(DriverLoadFailure) as info:
        _check(write("receiver: {writers: [files, nosuch_writer]}"))
    assert (info.value.role, info.value.name) == ("writer", "nosuch_writer")


def test_check_drivers_unknown_fetcher(write) -> None:
    with pytest.raises(DriverLoadFailure) as info:
        _check(write("sender: {fetcher: {type: nosuch_fetcher}}"))
    assert (info.value.role, info.value.name) == ("fetcher", "nosuch_fetcher")


def test_check_drivers_unknown_transport_scheme(write) -> None:
    with pytest.raises(DriverLoadFailure) as info:
        _check(write("sender: {storage: {data: 'udp://host:1'}}"))
    assert (info.value.role, info.value.name) == ("transport", "udp")


def test_check_drivers_broken_source_names_cause(write) -> None:
    with pytest.raises(DriverLoadFailure) as info:
        _check(write("sender: {source: {type: hidra_fake_importerror}}"))
    assert "hidra_fake_no_such_dependency" in str(info.value)


@pytest.mark.parametrize(("text", "key"), [
    ("sender: {source: {type: inotify, inotify: {bogus: 1}}}", "sender.source.inotify.bogus"),
    ("sender: {source: {type: hidra_fake_ok, hidra_fake_ok: {bogus: 1}}}", "sender.source.hidra_fake_ok.bogus"),
    ("sender: {fetcher: {type: file, file: {bogus: 1}}}", "sender.fetcher.file.bogus"),
    ("receiver: {files: {bogus: 1}}", "receiver.files.bogus"),
    ("sender: {transports: {tcp: {bogus: 1}}}", "sender.transports.tcp.bogus"),
    ("receiver: {transports: {ipc: {bogus: 1}}}", "receiver.transports.ipc.bogus"),
])
def test_check_drivers_unknown_option_names_dotted_key(write, text: str, key: str) -> None:
    path = write(text)
    config = load_config(path)  # the instance model accepts any options of the chosen driver...
    with pytest.raises(ConfigError) as info:
        check_drivers(config, str(path))  # ...the driver's own model does not
    message = str(info.value)
    assert str(path) in message and f"{key}: unknown key" in message


def test_check_drivers_wrong_option_type(write) -> None:
    path = write("sender: {source: {type: hidra_fake_ok, hidra_fake_ok: {count: -1}}}")
    with pytest.raises(ConfigError) as info:
        _check(path)
    assert "sender.source.hidra_fake_ok.count" in str(info.value) and "got -1" in str(info.value)


def test_check_drivers_accepts_valid_driver_options(write) -> None:
    _check(write("""
sender:
  source: {type: inotify, inotify: {path: ramdisk, recursive: false, ignore: ['*.tmp']}}
  fetcher: {type: file}
  transports: {tcp: {linger_ms: 0}}
receiver:
  writers: [files]
  files: {fsync: false, preserve_mtime: false}
  transports: {tcp: {heartbeat_ivl_ms: 0}}
"""))


def test_section_models_forbid_extra_and_are_frozen() -> None:
    for model in (InstanceConfig, SenderConfig):
        assert model.model_config.get("extra") == "forbid" and model.model_config.get("frozen")
    assert ReceiverConfig.model_config.get("frozen")


# --- `hidra config check`, in process ------------------------------------------------------------------------


def test_cli_config_check_refuses_unknown_driver_option(write, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write("sender: {source: {type: inotify, inotify: {bogus: 1}}}")
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and "sender.source.inotify.bogus: unknown key" in captured.err
    assert "OK" not in captured.out


def test_cli_config_check_refuses_unknown_top_level_key(write, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write("sender: {chunksize: 4096}\nbogus: true\n")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "bogus: unknown key" in err


def test_cli_config_check_unknown_driver(write, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write("sender: {source: {type: nosuch}}")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "event source driver 'nosuch'" in err


def test_cli_config_check_missing_secret_file(write, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write(f"sender: {{storage: {{data: {{$file: {tmp_path / 'gone'}}}}}}}")
    assert main(["config", "check", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_cli_config_check_ok(write, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write("sender: {source: {type: inotify, inotify: {path: ramdisk}}}\nreceiver: {files: {fsync: false}}\n")
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: OK (sender and receiver)"


def test_cli_config_check_with_set(write, capsys: pytest.CaptureFixture[str]) -> None:
    from hidra_core.cli.main import main

    path = write("{}")
    assert main(["config", "check", str(path), "--set", "sender.source.inotify.bogus=1"]) == 2
    assert "sender.source.inotify.bogus: unknown key" in capsys.readouterr().err
    assert main(["config", "check", str(path), "--set", "sender.chunksize=4096"]) == 0


# --- `config check` builds what the run builds (issue 6, item 16) ----------------------------------------------


def _check_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from hidra_core.cli.main import main

    code = main(["config", "check", *args])
    return code, capsys.readouterr().err


def test_config_check_refuses_a_missing_source_directory(write, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check_cli(capsys, str(write("sender: {source: {type: inotify, inotify: {path: nowhere}}}")))
    assert code == 2 and "nowhere" in err and "does not exist" in err


def test_config_check_refuses_a_missing_receiver_target(write, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check_cli(capsys, str(write("receiver: {target: nowhere}")))
    assert code == 2 and "receiver.target: directory 'nowhere' does not exist" in err


def test_config_check_refuses_unknown_keys_in_local_target_options(write, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check_cli(capsys, str(write("sender: {local_target: {path: ramdisk, options: {bogus: 1}}}")))
    assert code == 2 and "sender.local_target.options.bogus: unknown key" in err


def test_config_check_of_a_sender_file_does_not_need_the_receiver_target(write, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hidra-data" / "target").rmdir()
    path = write("sender: {source: {type: inotify, inotify: {path: ramdisk}}}")
    assert _check_cli(capsys, str(path)) == (0, "")
    code, err = _check_cli(capsys, str(path), "--role", "both")
    assert code == 2 and "receiver.target" in err


def test_sender_receiver_and_check_share_one_driver_builder(write) -> None:
    from hidra_core.host.plugins import PluginHost
    from hidra_core.receiver.loop import Receiver
    from hidra_core.sender.router import Sender

    config = load_config(write("sender: {local_target: {path: ramdisk, options: {bogus: 1}}}\n"
                               "receiver: {target: nowhere}\n"))
    for build in (lambda: Sender(config, PluginHost()), lambda: check_drivers(config, "x", ("sender",))):
        with pytest.raises(ConfigError, match="sender.local_target.options.bogus: unknown key"):
            build()
    for build in (lambda: Receiver(config, PluginHost()), lambda: check_drivers(config, "x", ("receiver",))):
        with pytest.raises(ConfigError, match="receiver.target: directory 'nowhere' does not exist"):
            build()


def test_errors_from_set_name_the_set(write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("sender: {chunksize: 4096}\n")
    code, err = _check_cli(capsys, str(path), "--set", "sender.storage.remove_sourse=never")
    assert code == 2 and "invalid configuration in --set" in err
    assert "sender.storage.remove_sourse: unknown key (from --set sender.storage.remove_sourse=never)" in err
    code, err = _check_cli(capsys, str(path), "--set", "sender.source.inotify.bogus=1")
    assert code == 2 and "(from --set sender.source.inotify.bogus=1)" in err


def test_an_error_in_the_file_still_names_the_file_next_to_a_set(write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("sender: {chunksize: -1}\n")
    code, err = _check_cli(capsys, str(path), "--set", "sender.bogus=1")
    assert code == 2 and f"invalid configuration in {path}" in err
    assert "sender.chunksize" in err and "(from --set sender.bogus=1)" in err


def test_a_yaml_syntax_error_names_file_and_line(write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("sender:\n  chunksize: 4096\n  storage: {data: [\n")
    code, err = _check_cli(capsys, str(path))
    assert code == 2 and f"{path}, line 4, column 1: not valid YAML" in err
    assert "<unicode string>" not in err


@pytest.mark.parametrize("argv", [["sender", "--log-level", "DEBUG"], ["--log-level", "DEBUG", "sender"],
                                  ["config", "check", "f.yaml", "--log-level", "DEBUG"]])
def test_log_level_is_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    from hidra_core.cli.main import build_parser
    from hidra_core.host.plugins import PluginHost

    assert build_parser(PluginHost()).parse_args(argv).log_level == "DEBUG"


# --- load_model: a plugin service's own config file (issue 8: each part with its own YAML and --set) ----------


class _Part(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    port: int = pydantic.Field(8888, ge=0)
    token: str = ""
    tags: list[str] = pydantic.Field(default_factory=list)
    limits: dict[str, int] = pydantic.Field(default_factory=dict)


def test_load_model_reads_a_part_yaml_then_set_then_flags(monkeypatch: pytest.MonkeyPatch, write) -> None:
    monkeypatch.setenv("HIDRA_TEST_TOKEN", "s3cret")
    path = write("port: 1\ntoken: {$env: HIDRA_TEST_TOKEN}\ntags: [a]\n", name="part.yaml")
    part = load_model(_Part, path, ["tags=[b, c]", "limits.pulses=7", "port=2"], origin="part", flags={"port": 3})
    assert part == _Part(port=3, token="s3cret", tags=["b", "c"], limits={"pulses": 7})
    assert load_model(_Part, None, [], origin="part") == _Part()


def test_load_model_unknown_key_names_the_file_and_dotted_key(write) -> None:
    path = write("port: 1\nlimts: {pulses: 7}\n", name="part.yaml")
    with pytest.raises(ConfigError) as info:
        load_model(_Part, path, [], origin="part")
    assert info.value.source == str(path) and info.value.problems == ["limts: unknown key"]


def test_load_model_bad_value_names_the_set_or_flag_that_gave_it(write) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(_Part, None, ["port=-1"], origin="part")
    assert info.value.source == "--set" and "port:" in str(info.value) and "(from --set port=-1)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_model(_Part, write("port: [1]", name="part.yaml"), ["port=5"], origin="part", flags={"port": -2})
    assert "(from --port)" in str(info.value) and "--set" not in str(info.value)
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_model(_Part, write("- 1", name="list.yaml"), [], origin="part")
