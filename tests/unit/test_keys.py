"""``hidra keys generate`` / ``hidra keys list`` and key references in config (issue 13)."""
from __future__ import annotations

import stat

import pytest
import zmq.auth

from hidra_core.cli.main import main
from hidra_core.security import KeyProblem, public_key


def test_keys_generate_writes_a_pair_pyzmq_reads_with_the_secret_private(tmp_path, capsys):
    assert main(["keys", "generate", "det1", "--dir", str(tmp_path / "k")]) == 0
    public, secret = tmp_path / "k" / "det1.key", tmp_path / "k" / "det1.key_secret"
    assert capsys.readouterr().out.split() == [str(public), str(secret)]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub, sec = zmq.auth.load_certificate(str(secret))
    assert zmq.auth.load_certificate(str(public)) == (pub, None)
    assert len(pub) == len(sec) == 40


def test_keys_generate_refuses_to_overwrite_an_existing_pair_unless_forced(tmp_path, capsys):
    folder = str(tmp_path)
    assert main(["keys", "generate", "det1", "--dir", folder]) == 0
    before = (tmp_path / "det1.key_secret").read_bytes()
    assert main(["keys", "generate", "det1", "--dir", folder]) == 1
    assert f"{tmp_path / 'det1.key'} exists: not overwritten" in capsys.readouterr().err
    assert (tmp_path / "det1.key_secret").read_bytes() == before
    assert main(["keys", "generate", "det1", "--dir", folder, "--force"]) == 0
    assert (tmp_path / "det1.key_secret").read_bytes() != before


def test_keys_list_prints_name_public_key_and_whether_the_secret_is_there(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HIDRA_KEYS_DIR", str(tmp_path))  # the default directory
    for name in ("b", "a"):
        assert main(["keys", "generate", name]) == 0
    (tmp_path / "b.key_secret").unlink()
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert lines == [["a", public_key(str(tmp_path), "a").decode(), "secret"],
                     ["b", public_key(str(tmp_path), "b").decode(), "public only"]]


def test_keys_list_of_a_missing_directory_says_how_to_make_one(tmp_path, capsys):
    assert main(["keys", "list", "--dir", str(tmp_path / "none")]) == 1
    assert "does not exist (hidra keys generate NAME" in capsys.readouterr().err


def test_a_key_reference_is_a_z85_key_or_a_name_and_a_bad_one_is_named(tmp_path):
    main(["keys", "generate", "rx", "--dir", str(tmp_path)])
    key = public_key(str(tmp_path), "rx")
    assert public_key(str(tmp_path), key.decode()) == key
    with pytest.raises(KeyProblem, match="is not a valid Z85 key"):
        public_key(str(tmp_path), "~" * 40)
    with pytest.raises(KeyProblem, match=r"nobody.key does not exist"):
        public_key(str(tmp_path), "nobody")
    with pytest.raises(KeyProblem, match="key name '../x'"):
        public_key(str(tmp_path), "../x")
