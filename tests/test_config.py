"""Settings resolve as explicit flag > environment > config file > default; paths become absolute at
load; bad values are errors that name their source. Real TOML files in tmp_path, real environments."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgwatch.config import (
    ENV_CONFIG,
    ENV_DATA_DIR,
    ENV_DEVICE,
    ENV_PCA,
    ENV_PREFIX,
    ENV_VARS,
    ENV_WEIGHTS,
    SECRET_SETTINGS,
    Settings,
    load_settings,
)
from imgwatch.errors import ConfigError
from tests.conftest import write_photo
from tests.harness import RunningDaemon, wait_until


@pytest.fixture(autouse=True)
def _no_user_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The XDG default config file is looked for in an empty folder, not the developer's home."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


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
        ("[index_params]\nnlist = 1024", r"index_params needs an explicit index_type \(auto"),
        ("exact_search_up_to = -1", "exact_search_up_to must be a positive integer"),
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


# --- Paths: `~` and variables expanded, made absolute once, at load ----------------------------------


def test_home_and_variables_are_expanded_in_every_path_setting(tmp_path: Path) -> None:
    home, pictures = tmp_path / "home", tmp_path / "pictures"
    config = _config(
        tmp_path,
        'roots = ["~/photos", "$PICTURES/a", "${XDG_PICTURES_DIR}/b"]\n'
        'poll_roots = ["~/photos"]\n'
        'data_dir = "~/state/imgwatch"\n'
        'weights = "${MODELS}/vgg16.pth"\n'
        "[s3_mounts]\n"
        'camera-roll = "~/minio/camera-roll"\n',
    )
    environ = {
        "HOME": str(home),
        "PICTURES": str(pictures),
        "XDG_PICTURES_DIR": str(pictures / "xdg"),
        "MODELS": str(tmp_path / "models"),
    }

    resolved = load_settings({}, environ=environ, config_file=config)

    assert resolved.roots == (str(home / "photos"), str(pictures / "a"), str(pictures / "xdg" / "b"))
    assert resolved.poll_roots == (str(home / "photos"),)
    assert resolved.data_dir == home / "state" / "imgwatch"
    assert resolved.weights == str(tmp_path / "models" / "vgg16.pth")
    assert resolved.s3_mounts == {"camera-roll": str(home / "minio" / "camera-roll")}


def test_home_and_variables_are_expanded_in_flags_and_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    environ = {
        "HOME": str(home),
        "STATE": str(tmp_path / "state"),
        ENV_WEIGHTS: "~/models/vgg16.pth",
        "IMGWATCH_ROOTS": '["~/photos", "$STATE/inbox"]',  # lists from the environment are JSON
        "IMGWATCH_S3_MOUNTS": '{"camera-roll": "~/minio"}',
    }

    resolved = load_settings({"data_dir": "$STATE/data"}, environ=environ)

    assert resolved.data_dir == tmp_path / "state" / "data"
    assert resolved.weights == str(home / "models" / "vgg16.pth")
    assert resolved.roots == (str(home / "photos"), str(tmp_path / "state" / "inbox"))
    assert resolved.s3_mounts == {"camera-roll": str(home / "minio")}


def test_relative_paths_in_the_file_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, elsewhere = tmp_path / "etc" / "imgwatch", tmp_path / "elsewhere"
    etc.mkdir(parents=True)
    elsewhere.mkdir()
    config = etc / "config.toml"
    config.write_text(
        'roots = ["photos", "../shared/./photos/"]\n'
        'data_dir = "state"\n'
        'weights = "models/vgg16.pth"\n'
        's3_mounts = { bucket = "minio/bucket" }\n'
    )
    monkeypatch.chdir(elsewhere)  # what the working directory is must not matter (systemd: /)

    resolved = load_settings({}, environ={}, config_file=config)

    assert resolved.roots == (str(etc / "photos"), str(tmp_path / "etc" / "shared" / "photos"))
    assert resolved.data_dir == etc / "state"
    assert resolved.weights == str(etc / "models" / "vgg16.pth")
    assert resolved.s3_mounts == {"bucket": str(etc / "minio" / "bucket")}
    assert resolved.config_file == config


def test_relative_flags_and_variables_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _config(tmp_path, 'roots = ["photos"]\n')
    monkeypatch.chdir(work)

    resolved = load_settings(
        {"data_dir": Path("data"), "weights": "vgg16.pth"},
        environ={ENV_CONFIG: "../config.toml", "IMGWATCH_POLL_ROOTS": '["nas"]'},
    )

    assert resolved.config_file == tmp_path / "config.toml"
    assert resolved.roots == (str(tmp_path / "photos"),)  # from the file: next to it
    assert resolved.data_dir == work / "data"
    assert resolved.weights == str(work / "vgg16.pth")
    assert resolved.poll_roots == (str(work / "nas"),)


@pytest.mark.parametrize("weights", ["imagenet", "random:3"])
def test_weights_that_are_not_a_file_stay_as_given(tmp_path: Path, weights: str) -> None:
    config = _config(tmp_path, f'weights = "{weights}"\n')
    assert load_settings({}, environ={}, config_file=config).weights == weights


def test_a_variable_that_is_not_set_is_an_error_naming_it(tmp_path: Path) -> None:
    config = _config(tmp_path, 'roots = ["${XDG_PICTURES_DIR}/holidays"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={"HOME": str(tmp_path)}, config_file=config)
    assert caught.value.source == str(config)
    assert caught.value.problem == "roots: $XDG_PICTURES_DIR is not set"

    with pytest.raises(ConfigError, match=r"IMGWATCH_DATA_DIR: data_dir: \$NOWHERE is not set"):
        load_settings({}, environ={ENV_DATA_DIR: "$NOWHERE/data"})


# --- Booleans and numbers are checked ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "poll"),
    [("poll = false", False), ('poll = "false"', False), ('poll = "False"', False), ("poll = true", True)],
)
def test_a_boolean_written_as_a_string_means_what_it_says(tmp_path: Path, text: str, poll: bool) -> None:
    assert load_settings({}, environ={}, config_file=_config(tmp_path, text)).poll is poll


@pytest.mark.parametrize(
    ("value", "poll"),
    [("yes", True), ("no", False), ("1", True), ("0", False), ("off", False), ("TRUE", True)],
)
def test_booleans_from_the_environment_parse_as_pydantic_does(value: str, poll: bool) -> None:
    assert load_settings({}, environ={"IMGWATCH_POLL": value, "IMGWATCH_FOLLOW_SYMLINKS": value}).poll is poll


def test_numbers_from_the_environment_are_parsed() -> None:
    resolved = load_settings(
        {}, environ={"IMGWATCH_BATCH_SIZE": "4", "IMGWATCH_POLL_INTERVAL": "2.5", ENV_PCA: "off"}
    )
    assert (resolved.batch_size, resolved.poll_interval, resolved.pca) == (4, 2.5, None)
    assert load_settings({}, environ={ENV_PCA: "512"}).pca == 512
    auto = load_settings({}, environ={ENV_PCA: "Auto", "IMGWATCH_PCA_AUTO_AT": "150000"})
    assert (auto.pca, auto.pca_auto_at) == ("auto", 150_000)
    assert load_settings({}, environ={"IMGWATCH_PCA_AUTO_AT": "auto"}).pca_auto_at is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('poll = "maybe"', "poll must be true or false, not 'maybe'"),
        ("poll = 2", "poll must be true or false, not 2"),
        ("include_hidden = 'sometimes'", "include_hidden must be true or false, not 'sometimes'"),
        ("batch_size = true", "batch_size must be a positive integer, not True"),
        ("batch_size = 2.5", "batch_size must be a positive integer, not 2.5"),
        ("batch_size = 'many'", "batch_size must be a positive integer, not 'many'"),
        ("max_file_bytes = -1", "max_file_bytes must be a positive integer, not -1"),
        ("poll_interval = true", "poll_interval must be a positive number, not True"),
        ("poll_interval = 0", "poll_interval must be a positive number, not 0"),
        ("settle_seconds = nan", "settle_seconds must be a positive number, not nan"),
        ("pca = 8", "pca must be between 16 and 4095 dimensions, not 8"),
        ("pca = 512.5", "pca must be a number of dimensions, auto or off, not 512.5"),
        ("pca = true", "pca must be a number of dimensions, auto or off, not True"),
        ("pca = 'sometimes'", "pca must be a number of dimensions, auto or off, not 'sometimes'"),
        ("pca_auto_at = 0", "pca_auto_at must be a positive integer, not 0"),
        ("pca_auto_at = 100", "pca_auto_at must be at least 512 vectors, not 100"),
        ("pca_auto_at = 'soon'", "pca_auto_at must be a positive integer, not 'soon'"),
        ("weights = 5", "weights: Input should be a valid string, not 5"),
        ("roots = ['/a', 5]", "roots must be a list of strings, not ['/a', 5]"),
        ("data_dir = ''", "data_dir: an empty path"),
        ("s3_mounts = { bucket = 5 }", 's3_mounts must be a table of bucket = "/local/directory"'),
        ("config_file = 'other.toml'", "unknown keys ['config_file']"),
    ],
)
def test_a_bad_value_in_the_file_names_the_file_and_the_key(tmp_path: Path, text: str, problem: str) -> None:
    config = _config(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={}, config_file=config)
    assert caught.value.source == str(config)
    assert caught.value.problem.startswith(problem)


def test_unknown_keys_name_the_file_and_the_keys(tmp_path: Path) -> None:
    config = _config(tmp_path, "colour = 'blue'\nbatch_size = 4\nsize = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={}, config_file=config)
    assert caught.value.source == str(config)
    assert caught.value.problem.startswith("unknown keys ['colour', 'size']; known keys are [")
    assert "'batch_size'" in caught.value.problem


# --- Every error names where the value came from -----------------------------------------------------


def test_errors_name_the_flag_the_variable_or_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, "batch_size = 0\n")
    flags = {"batch_size": "--batch-size"}

    def problem_source(explicit: dict[str, object], environ: dict[str, str]) -> str:
        with pytest.raises(ConfigError, match="batch_size must be a positive integer") as caught:
            load_settings(explicit, environ=environ, config_file=config, flags=flags)
        return caught.value.source

    # The source of the value that won is the one to blame, whichever sources also had one.
    assert problem_source({"batch_size": -2}, {"IMGWATCH_BATCH_SIZE": "8"}) == "--batch-size"
    assert problem_source({}, {"IMGWATCH_BATCH_SIZE": "none"}) == "environment variable IMGWATCH_BATCH_SIZE"
    assert problem_source({}, {}) == str(config)
    with pytest.raises(ConfigError, match="in argument batch_size: "):
        load_settings({"batch_size": 0}, environ={})  # no flag names given: a plain argument


def test_cli_flags_are_named_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgwatch.cli import _settings, build_parser

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    for variable in [v for v in os.environ if v.startswith("IMGWATCH_")]:
        monkeypatch.delenv(variable)
    args = build_parser().parse_args(["watch", "--poll-interval", "-1"])
    with pytest.raises(ConfigError, match=r"in --poll-interval: poll_interval must be a positive number"):
        _settings(args)
    args = build_parser().parse_args(["status", "--pca", "8"])
    with pytest.raises(ConfigError, match=r"in --pca: pca must be between 16 and 4095"):
        _settings(args)


def test_a_bad_json_value_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={"IMGWATCH_ROOTS": "/srv/photos"})
    assert caught.value.source == "environment variable IMGWATCH_ROOTS"
    assert caught.value.problem.startswith("roots must be a JSON list")


def test_a_missing_config_file_says_who_named_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={ENV_CONFIG: str(tmp_path / "absent.toml")})
    assert caught.value.source == str(tmp_path / "absent.toml")
    assert caught.value.problem == f"file not found (named by environment variable {ENV_CONFIG})"


# --- Precedence, the environment, direct construction -----------------------------------------------


def test_a_stronger_source_replaces_a_table_whole(tmp_path: Path) -> None:
    config = _config(tmp_path, '[s3_mounts]\nfrom-file = "/srv/a"\n')
    resolved = load_settings({}, environ={"IMGWATCH_S3_MOUNTS": '{"from-env": "/srv/b"}'}, config_file=config)
    assert resolved.s3_mounts == {"from-env": "/srv/b"}  # not merged with the file's


def test_every_setting_reads_its_prefixed_variable_and_others_are_ignored(tmp_path: Path) -> None:
    environ = {
        "IMGWATCH_BATCH_SIZE": "4",
        "IMGWATCH_INCLUDE": '["*.jpg"]',
        "IMGWATCH_INDEX_TYPE": "hnsw",
        # Not settings: the test suite's own variables, and a config-file path under a setting's name.
        "IMGWATCH_TEST_MILVUS_URI": "http://elsewhere:19530",
        "IMGWATCH_COLOUR": "blue",
        "IMGWATCH_CONFIG_FILE": str(tmp_path / "absent.toml"),
    }
    resolved = load_settings({}, environ=environ)
    assert (resolved.batch_size, resolved.include, resolved.index_type) == (4, ("*.jpg",), "HNSW")
    assert resolved.milvus_uri is None and resolved.config_file != tmp_path / "absent.toml"


def test_the_documented_variables_are_the_prefixed_names() -> None:
    assert all(variable == ENV_PREFIX + name.upper() for name, variable in ENV_VARS.items())
    assert set(ENV_VARS) <= set(Settings.model_fields)


def test_direct_construction_reads_neither_environment_nor_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, "batch_size = 5\nroots = ['/from/file']\n")
    monkeypatch.setenv(ENV_CONFIG, str(config))
    monkeypatch.setenv("IMGWATCH_BATCH_SIZE", "3")
    monkeypatch.setenv(ENV_DEVICE, "cuda")

    assert load_settings({}).batch_size == 3  # the loader does read them
    direct = Settings(data_dir=tmp_path / "data", weights="random:0", batch_size=8)
    assert (direct.batch_size, direct.device, direct.roots, direct.config_file) == (8, "auto", (), None)
    assert Settings().batch_size == 16


def test_replace_checks_the_changes_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", weights="random:0", batch_size=8)
    changed = settings.replace(index_type="ivf_flat", pca="512")
    assert (changed.index_type, changed.pca, changed.batch_size) == ("IVF_FLAT", 512, 8)
    assert changed.data_dir == settings.data_dir and settings.index_type == "AUTO"
    with pytest.raises(ValidationError, match="batch_size must be a positive integer"):
        settings.replace(batch_size=0)


_SECRETS = {
    "milvus_token": "root:milvus-password-7f3a",
    "webhook_token": "webhook-token-91c2",
    "webhook_hmac_secret": "hmac-key-5d8e",
}


def test_secrets_stay_out_of_repr_str_and_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Settings built directly, loaded from a file, from the environment, and copied: each still hands
    every secret to its consumers, and none shows one in repr(), str() or a log line."""
    assert set(_SECRETS) == SECRET_SETTINGS
    # A setting added later whose name says it is a secret must be declared one.
    assert {name for name in Settings.model_fields if re.search("token|secret|password", name)} <= (
        SECRET_SETTINGS
    )
    config = _config(tmp_path, "".join(f'{name} = "{value}"\n' for name, value in _SECRETS.items()))
    variables = {ENV_VARS[name]: value for name, value in _SECRETS.items()}
    built = Settings(weights="random:0", **_SECRETS)
    candidates = {
        "built": built,
        "from the file": load_settings({}, environ={}, config_file=config),
        "from the environment": load_settings({}, environ=variables),
        "replaced": built.replace(batch_size=2),
    }
    log = logging.getLogger("imgwatch.test_config")
    for how, settings in candidates.items():
        assert {name: getattr(settings, name) for name in _SECRETS} == _SECRETS, how
        with caplog.at_level(logging.INFO, logger=log.name):
            log.info("settings %s / %r", settings, settings)
        shown = [repr(settings), str(settings), f"{settings}", caplog.text]
        assert all("weights='" in text for text in shown), how  # the rest is still shown
        for text in shown:
            assert not [value for value in _SECRETS.values() if value in text], f"{how}: {text}"
        caplog.clear()


def test_a_bad_secret_is_reported_without_its_value(tmp_path: Path) -> None:
    for name in sorted(SECRET_SETTINGS):
        config = _config(tmp_path, f"{name} = 73519284\n")  # a number: not a string
        with pytest.raises(ConfigError) as caught:
            load_settings({}, environ={}, config_file=config)
        assert caught.value.source == str(config)
        assert caught.value.problem.startswith(f"{name}: Input should be a valid string"), caught.value
        assert "73519284" not in str(caught.value)
    # Any other setting's bad value is still shown, so that the user sees what was wrong.
    with pytest.raises(ConfigError, match=r"collection: .*, not 73519284"):
        load_settings({}, environ={}, config_file=_config(tmp_path, "collection = 73519284\n"))


@pytest.mark.slow
def test_the_daemon_under_systemd_conditions_watches_the_home_folder_named_in_the_file(
    daemon_factory: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    """Working directory `/`, as systemd starts it: `roots = ["~/photos"]` is $HOME/photos, not /~/photos."""
    home = tmp_path / "home"
    photo = write_photo(home / "photos" / "cat.jpg", seed=11)
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text('roots = ["~/photos"]\nweights = "random:0"\n')

    # IMGWATCH_WEIGHTS= (empty: unset) so that the weights, like the roots, come from the file.
    daemon = daemon_factory(
        extra=("--config", str(config)), cwd=Path("/"), env={"HOME": str(home), "IMGWATCH_WEIGHTS": ""}
    )
    daemon.idle()

    assert [root["path"] for root in daemon.status()["roots"]] == [str(home / "photos")]
    wait_until(lambda: daemon.paths_found(photo, k=1) == [str(photo)], timeout=60)
