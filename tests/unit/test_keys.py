"""The key-file provider: creation, permissions, rotation, reloading."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from salus.errors import ConfigurationError, IntegrityError
from salus.storage.keys import FileKeyProvider, UnknownKey


def test_create_writes_an_owner_only_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master-keys.json"
    provider = FileKeyProvider.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "salus-keyring/1"
    assert doc["active"] == provider.active_key_id() == doc["keys"][0]["id"]


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    FileKeyProvider.create(path)
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="already exists"):
        FileKeyProvider.create(path)
    assert path.read_bytes() == before


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    FileKeyProvider.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="0600"):
        FileKeyProvider(path)


def test_missing_and_malformed_key_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="salus init"):
        FileKeyProvider(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    os.chmod(bad, 0o600)
    with pytest.raises(ConfigurationError, match="not a Salus keyring"):
        FileKeyProvider(bad)


def test_wrap_is_bound_to_context_and_key(key_provider: FileKeyProvider) -> None:
    data_key = os.urandom(32)
    key_id, wrapped = key_provider.wrap(data_key, b"object-a")
    assert key_provider.unwrap(key_id, wrapped, b"object-a") == data_key
    with pytest.raises(IntegrityError):
        key_provider.unwrap(key_id, wrapped, b"object-b")
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        key_provider.unwrap(key_id, bytes(tampered), b"object-a")
    with pytest.raises(UnknownKey):
        key_provider.unwrap("mk-unknown", wrapped, b"object-a")


def test_rotation_keeps_old_keys_usable(key_provider: FileKeyProvider) -> None:
    data_key = os.urandom(32)
    old_id, wrapped = key_provider.wrap(data_key, b"ctx")
    new_id = key_provider.rotate()
    assert new_id != old_id
    assert key_provider.active_key_id() == new_id
    assert set(key_provider.key_ids()) == {old_id, new_id}
    assert key_provider.unwrap(old_id, wrapped, b"ctx") == data_key
    assert key_provider.wrap(data_key, b"ctx")[0] == new_id
    assert stat.S_IMODE(key_provider.path.stat().st_mode) == 0o600


def test_a_running_provider_sees_rotation_by_another_process(
    key_provider: FileKeyProvider,
) -> None:
    other = FileKeyProvider(key_provider.path)  # e.g. `salus keys rotate` beside the server
    new_id = other.rotate()
    wrapped_id, wrapped = other.wrap(b"k" * 32, b"ctx")
    # An unknown key id forces a reload at once; the active id follows within a second.
    assert key_provider.unwrap(wrapped_id, wrapped, b"ctx") == b"k" * 32
    assert key_provider.active_key_id() == new_id
