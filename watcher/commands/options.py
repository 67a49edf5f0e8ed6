"""The options every command shares (the settings a flag can give), and the settings they resolve to."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from imgwatch.names import DEVICES, ENV_CONFIG, ENV_DATA_DIR, ENV_MILVUS_URI, ENV_PCA, ENV_WEIGHTS

if TYPE_CHECKING:
    from imgwatch.config import Settings
    from imgwatch.config.client import ClientSettings

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

#: What a command's parser sets as ``run``: the command itself, returning its exit status. A command
#: whose parser also sets ``thin=True`` may get :class:`ClientSettings` (it then loads the rest with
#: :func:`full_settings` when no daemon does the work).
Command: TypeAlias = Callable[[argparse.Namespace, "Settings | ClientSettings"], int]


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings (flag > environment > config file > default)")
    group.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"where the catalog and the Milvus Lite file live (env {ENV_DATA_DIR}; "
        "default: the XDG data dir, ~/.local/share/imgwatch)",
    )
    group.add_argument(
        "--weights",
        default=None,
        help="VGG16 weights: 'imagenet' (default, torchvision's download cache), a path to a "
        f"state-dict file, or 'random:SEED' for tests/offline demos (env {ENV_WEIGHTS})",
    )
    group.add_argument(
        "--milvus-uri",
        default=None,
        help="a Milvus server, e.g. http://localhost:19530 (env "
        f"{ENV_MILVUS_URI}; token in IMGWATCH_MILVUS_TOKEN); default: Milvus Lite in the "
        "data dir",
    )
    group.add_argument("--device", choices=DEVICES, default=None, help="where the model runs (default: auto)")
    group.add_argument(
        "--pca",
        metavar="DIM",
        default=None,
        help="store PCA-projected vectors of DIM dimensions (256 or 512; 'off' for the full 4096; 'auto' "
        "for 512 once the collection outgrows full size, see pca_auto_at), fitted on the indexed "
        f"vectors; a change reindexes in the background (env {ENV_PCA})",
    )
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML config file (env {ENV_CONFIG}; default: ~/.config/imgwatch/config.toml)",
    )
    group.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info for watch, warning otherwise)",
    )
    return common


def html_options(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="OUT.html",
        help=f"also write a self-contained HTML page of {what}",
    )
    command.add_argument("--open", action="store_true", help="open the --html page in a web browser")


#: The flag of each setting a command line can give (its argparse dest is the setting's name), so
#: that a bad value is reported as the flag's. Commands without a flag leave it None: not given.
SETTING_FLAGS = {
    "data_dir": "--data-dir",
    "weights": "--weights",
    "milvus_uri": "--milvus-uri",
    "device": "--device",
    "pca": "--pca",
    "batch_size": "--batch-size",
    "poll": "--poll",
    "poll_interval": "--poll-interval",
    "webhook": "--webhook",
    "search_page": "--search-page",
    "config_file": "--config",
}


def full_settings(settings: Settings | ClientSettings) -> Settings:
    """Every setting: loaded now if ``settings`` are a thin client's."""
    from imgwatch.config.client import ClientSettings

    return settings.full() if isinstance(settings, ClientSettings) else settings


def command_settings(args: argparse.Namespace) -> Settings | ClientSettings:
    """A thin command's client settings where they can be found without pydantic, else (and for
    every other command) the full settings."""
    others = [name for name in SETTING_FLAGS if name not in ("data_dir", "config_file")]
    # A setting given as a flag is checked, whoever uses it: `status --pca 8` is still an error.
    if getattr(args, "thin", False) and all(getattr(args, name, None) is None for name in others):
        import functools

        from imgwatch.config.client import client_settings

        quick = client_settings(args.data_dir, args.config, functools.cache(lambda: settings_from(args)))
        if quick is not None:
            return quick
    return settings_from(args)


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings for a parsed command line: its flags > environment > config file > default."""
    # Here, not at the top: the parser and --help do without pydantic.
    from imgwatch.config import load_settings

    explicit = {name: getattr(args, name, None) for name in SETTING_FLAGS if name != "config_file"}
    return load_settings(explicit, config_file=args.config, flags=SETTING_FLAGS)
