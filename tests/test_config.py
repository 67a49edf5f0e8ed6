"""Settings resolve as explicit flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgwatch.config import ENV_DATA_DIR, ENV_WEIGHTS, Settings, load_settings
from imgwatch.errors import ConfigError


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    config = _config(
        tmp_path, f'weights = "random:1"\ndata_dir = "{tmp_path / "from-file"}"\nbatch_size = 4\n'
    )
    env = {ENV_WEIGHTS: "random:2"}

    resolved = load_settings({"weights": None}, environ=env, config_file=config)
    assert resolved.weights == "random:2"  # env beats file
    assert resolved.data_dir == tmp_path / "from-file"  # file beats default
    assert resolved.batch_size == 4
    assert resolved.device == Settings().device  # default

    resolved = load_settings({"weights": "random:3"}, environ=env, config_file=config)
    assert resolved.weights == "random:3"  # flag beats env


def test_config_file_from_environment_and_default_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    config = _config(tmp_path, "include = ['*.jpg']\nindex_type = 'hnsw'\n")

    resolved = load_settings({}, environ={"IMGWATCH_CONFIG": str(config)})

    assert resolved.include == ("*.jpg",)
    assert resolved.index_type == "HNSW"
    assert resolved.data_dir == tmp_path / "xdg" / "imgwatch"
    assert resolved.vectors_uri == str(tmp_path / "xdg" / "imgwatch" / "vectors.db")


def test_environment_data_dir_and_milvus_uri(tmp_path: Path) -> None:
    resolved = load_settings(
        {}, environ={ENV_DATA_DIR: str(tmp_path), "IMGWATCH_MILVUS_URI": "http://db:19530"}
    )

    assert resolved.data_dir == tmp_path
    assert resolved.vectors_uri == "http://db:19530" and not resolved.uses_milvus_lite


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("batch_size = 0", "batch_size must be a positive integer"),
        ("device = 'tpu'", "device must be one of auto, cpu, cuda"),
        ("colour = 'blue'", "unknown keys ['colour']"),
        ("exclude = 'raw'", "exclude must be a list of strings"),
        ("this is not toml", "bad configuration"),
        (
            "[jobs.reconcile]\ntrigger = 'sometimes'",
            'jobs.reconcile needs trigger = "interval", "cron" or "off"',
        ),
        ("[jobs.defrag]\ntrigger = 'cron'", "jobs must be a table with entries among"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_settings({}, environ={}, config_file=_config(tmp_path, text))
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_job_schedules_merge_with_the_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path, "[jobs.compact]\ntrigger = 'cron'\nday_of_week = 'sun'\nhour = 4\n")
    jobs = load_settings({}, environ={}, config_file=config).jobs
    assert jobs["compact"] == {"trigger": "cron", "day_of_week": "sun", "hour": 4}
    assert jobs["reconcile"] == {"trigger": "interval", "hours": 1}


def test_missing_config_file_named_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings({}, environ={}, config_file=tmp_path / "absent.toml")
