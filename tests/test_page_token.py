"""The search page's own token: made once per data dir, readable by its owner only, never one that
someone else could have planted or read."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from imgwatch.errors import ConfigError
from imgwatch.web.page_token import TOKEN_FILE, page_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_made_once_owner_only_and_kept_across_restarts(tmp_path: Path) -> None:
    token = page_token(tmp_path)
    assert len(token) >= 40  # 32 random bytes, URL-safe base64
    assert _mode(tmp_path / TOKEN_FILE) == 0o600
    assert page_token(tmp_path) == token
    assert os.listdir(tmp_path) == [TOKEN_FILE]  # no partial file left


def test_racing_makers_hand_out_the_same_token(tmp_path: Path) -> None:
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        tokens.append(page_token(tmp_path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and tokens[0] == (tmp_path / TOKEN_FILE).read_text().strip()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666])
def test_a_file_others_can_read_is_replaced(tmp_path: Path, mode: int) -> None:
    planted = tmp_path / TOKEN_FILE
    planted.write_text("known-to-others\n")
    planted.chmod(mode)
    token = page_token(tmp_path)
    assert token != "known-to-others" and _mode(planted) == 0o600
    assert planted.read_text().strip() == token


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("someone else's file\n")
    target.chmod(0o600)
    (tmp_path / TOKEN_FILE).symlink_to(target)
    token = page_token(tmp_path)
    assert token != "someone else's file"
    assert not (tmp_path / TOKEN_FILE).is_symlink()
    assert target.read_text() == "someone else's file\n"  # untouched


def test_an_empty_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_bytes(b"")
    (tmp_path / TOKEN_FILE).chmod(0o600)
    assert len(page_token(tmp_path)) >= 40


def test_a_file_another_user_owns_is_replaced(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: chown must be possible")
        pytest.skip("needs root to give the file to another user")
    planted = tmp_path / TOKEN_FILE
    planted.write_text("planted\n")
    planted.chmod(0o600)
    os.chown(planted, 65534, 65534)
    token = page_token(tmp_path)
    assert token != "planted" and planted.stat().st_uid == 0


def test_a_fifo_or_an_empty_directory_is_replaced_without_hanging(tmp_path: Path) -> None:
    """A FIFO would block a plain open for ever: the daemon would never start."""
    os.mkfifo(tmp_path / TOKEN_FILE, 0o600)
    token = page_token(tmp_path)
    assert (tmp_path / TOKEN_FILE).is_file() and (tmp_path / TOKEN_FILE).read_text().strip() == token
    (tmp_path / TOKEN_FILE).unlink()
    (tmp_path / TOKEN_FILE).mkdir(mode=0o700)
    assert page_token(tmp_path) == (tmp_path / TOKEN_FILE).read_text().strip()


def test_what_cannot_be_replaced_is_a_configuration_error_that_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).mkdir()
    (tmp_path / TOKEN_FILE / "something").write_text("not ours to delete")
    with pytest.raises(ConfigError, match="webhook_token"):
        page_token(tmp_path)
    assert (tmp_path / TOKEN_FILE / "something").exists()
