"""Errors that reach the user. Each builds its own message from the fields that matter."""

from __future__ import annotations

from pathlib import Path


class ImgwatchError(Exception):
    """Base class for errors the CLI reports as a one-line message and a non-zero exit."""


class ConfigError(ImgwatchError):
    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"bad configuration in {source}: {problem}")


class WeightsUnavailableError(ImgwatchError):
    def __init__(self, expected_file: Path, url: str, reason: str) -> None:
        self.expected_file = expected_file
        super().__init__(
            f"the VGG16 ImageNet weights are not cached and could not be downloaded ({reason}).\n"
            f"  Put the file at: {expected_file}\n"
            f"  (it is {url}, 528 MB), or pass --weights PATH / set IMGWATCH_WEIGHTS=PATH to a VGG16 "
            "state-dict file.\n"
            "  For tests and offline demos only: --weights random:SEED (random features, not useful for "
            "real searches)."
        )


class WeightsFileError(ImgwatchError):
    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot load VGG16 weights from {path}: {reason}")


class ExtractorMismatchError(ImgwatchError):
    """The index was built by one extractor and this run is configured with another."""

    def __init__(self, stored: str, configured: str, differences: list[str]) -> None:
        self.stored = stored
        self.configured = configured
        self.differences = differences
        super().__init__(
            "this index was built with a different feature extractor; its vectors cannot be compared "
            "with the configured one's.\n"
            + "".join(f"  {d}\n" for d in differences)
            + "Move the index to the new extractor (searches keep answering from the old vectors "
            "until the new ones are all made; `imgwatch watch` does this by itself):\n"
            "  imgwatch reindex ROOT...\n"
            "or start over (drops every vector and extracts them again):\n"
            "  imgwatch index --rebuild ROOT...\n"
            "or run with the settings the index was built with, or use another --data-dir."
        )


class DataDirBusyError(ImgwatchError):
    def __init__(self, data_dir: Path, pid: int | None, command: str | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"PID {pid}" if pid else "another process"
        what = f" (imgwatch {command})" if command else ""
        super().__init__(
            f"the data dir {data_dir} is in use by {who}{what}. Milvus Lite admits one process per "
            "data dir: wait for it to finish, or use another --data-dir."
        )


class StoreUnavailableError(ImgwatchError):
    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        super().__init__(f"cannot open the vector store at {uri}: {reason}")


class StoreAuthError(ImgwatchError):
    """The Milvus server refused the token (wrong, missing, or no longer valid). Fatal: unlike a server
    that is down, this does not come right by waiting, so nothing retries it."""

    def __init__(self, uri: str, detail: str, *, token_given: bool) -> None:
        from imgwatch.config import ENV_MILVUS_TOKEN  # config imports this module

        self.uri = uri
        self.detail = detail
        self.token_given = token_given
        refused = "refused the token" if token_given else "wants a token, and none is set"
        super().__init__(
            f"the Milvus server at {uri} {refused} ({detail}). Set the right one in {ENV_MILVUS_TOKEN} "
            "or as `milvus_token` in the config file: `user:password` or an API key"
        )


class ImageError(Exception):
    """A file that cannot become a feature vector. Per-file: recorded as failed, never fatal."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RootInUseError(ImgwatchError):
    """A root cannot be forgotten while the daemon watches it."""

    def __init__(self, root: str) -> None:
        self.root = root
        super().__init__(f"the daemon is watching {root}: stop watching it (imgwatch watch without it) first")


class DaemonStoppingError(ImgwatchError):
    """A job asked for while the daemon is shutting down."""

    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"the daemon is stopping: {job} not started (run it again once it is back)")
