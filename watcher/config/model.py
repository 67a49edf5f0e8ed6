"""``Settings``: the values every command needs, their types, their defaults and their rules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from imgwatch.config import checks
from imgwatch.config.checks import CHOICES, DEFAULT_JOBS, POSITIVE_INTS, POSITIVE_NUMBERS
from imgwatch.config.paths import DEFAULT_MAX_FILE_BYTES, default_data_dir

#: Pillow's own decompression-bomb threshold; a 48 MP photo is well inside it.
DEFAULT_MAX_PIXELS = 89_478_485


class Settings(BaseModel):
    """Everything a command needs to build the services. Immutable once resolved.

    The secrets (``SECRET_SETTINGS``) are plain strings, so every consumer passes them on as before,
    but they are left out of ``repr()`` and ``str()``: a settings object in a log line, a traceback's
    locals or an error message does not carry them along.
    """

    # defer_build: a command's settings come from ``Sources`` (its own schema) and are copied out with
    # model_construct, which validates nothing; so the CLI never needs this class's validator, and
    # building it at import cost every command, a thin client of the daemon too, ~15 ms.
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, defer_build=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    """Where the catalog (SQLite), the Milvus Lite file and the daemon's lock live."""
    weights: str = "imagenet"
    """``imagenet``, a path to a VGG16 state-dict file, or ``random:SEED`` (tests/offline demos only)."""
    milvus_uri: str | None = None
    """A Milvus server (``http://host:19530``); ``None`` means Milvus Lite at ``data_dir/vectors.db``."""
    milvus_token: str | None = Field(default=None, repr=False)
    """``user:password`` or an API key for the Milvus server. A secret: not in ``repr()``."""
    collection: str = "imgwatch"
    node: str | None = None
    """This watcher's name when several share one Milvus collection (each with its own catalog and
    roots): its entities' keys are scoped to it, results from others say which node they came from,
    and its reconcile touches only its own. None: alone in its collection."""
    device: str = "auto"
    precision: str = "auto"
    """``auto`` picks bf16 on CPUs with AMX/avx512-bf16 (after a cosine check), fp16 on CUDA, else fp32.
    ``int8`` (CPUs, opt-in) quantizes the convolutions and compiles them once (a C++ compiler is
    needed); it falls back to ``auto``'s choice where its fidelity gate or the compile fails. int8
    vectors never mix with float ones: switching to or from it reindexes in the background."""
    batch_size: int = 16
    pca: int | Literal["auto"] | None = None
    """Project vectors to this many dimensions with PCA fitted on the index (256 or 512 are typical);
    ``None`` keeps the model's 4096. Changing it reindexes in the background (see README). ``auto``
    keeps 4096 until the collection reaches ``pca_auto_at`` vectors, then projects it to 512 (a shadow
    reindex, no model run), and stays there."""
    pca_auto_at: int | None = None
    """With ``pca = auto``: the vector count at which PCA-512 is applied (at least 512). ``None``:
    where ``status`` starts to propose it on Milvus Lite, half of what it holds at full size on this
    machine, by memory or search time (:func:`imgwatch.capacity.pca_auto_threshold`); never on a
    server, whose memory is not ours. Never in a shared collection (``node``): see wanted_pca."""
    index_type: str = "AUTO"
    """``auto``: exact search (FLAT) up to ``exact_search_up_to`` vectors, then an ANN index sized for
    the collection; a change moves the index in the background (a shadow reindex, no model run). Any
    Milvus index type (``FLAT``, ``HNSW``, ``IVF_FLAT``...) is obeyed as given."""
    index_params: Mapping[str, Any] = Field(default_factory=dict)
    exact_search_up_to: int = 20_000
    """With ``index_type = auto``: collections up to this many vectors are searched exactly."""
    include: tuple[str, ...] = ()
    """Glob patterns a file's path relative to its root (or its name) must match; empty means all."""
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = False
    """Descend into symlinked directories (with loop detection). Symlinked files are always indexed."""
    roots: tuple[str, ...] = ()
    """Folders ``imgwatch watch`` watches when none are given on the command line."""
    protect: tuple[str, ...] = ()
    """Folders whose files ``imgwatch dedupe`` never moves to the trash (absolute, ``~`` expanded;
    ``--protect`` adds more): a group's members inside one are all kept."""
    poll: bool = False
    """Poll every root instead of using inotify (network filesystems are polled anyway)."""
    poll_roots: tuple[str, ...] = ()
    """Roots to poll even though inotify looks available."""
    poll_interval: float = 5.0
    settle_seconds: float = 1.0
    """How long a file written without a close event must stay unchanged before it is read."""
    mass_delete_fraction: float = 0.5
    """Deletions of more than this share of a root's files at once are held back (see README)."""
    mass_delete_min_files: int = 20
    webhook: str | None = None
    """``HOST:PORT`` for the HTTP event endpoint of ``imgwatch watch``; off when unset."""
    webhook_token: str | None = Field(default=None, repr=False)
    """Shared secret callers send as ``Authorization: Bearer TOKEN`` (the search page's too). A secret:
    not in ``repr()``."""
    webhook_hmac_secret: str | None = Field(default=None, repr=False)
    """When set, callers must also sign each body: ``X-Imgwatch-Signature: sha256=<hex HMAC>``. A
    secret: not in ``repr()``."""
    webhook_max_bytes: int = 1024 * 1024
    metrics_public: bool = False
    """Serve the webhook port's ``/metrics`` without the token even off loopback (a trusted scraper)."""
    search_page: str | None = None
    """``HOST:PORT`` for the daemon's search page; off when unset. Off loopback it needs ``webhook_token``."""
    search_page_max_bytes: int = 32 * 1024 * 1024
    """Largest query image the search page accepts (a phone photo is 3-15 MB)."""
    s3_mounts: Mapping[str, str] = Field(default_factory=dict)
    """S3/MinIO bucket name -> local directory where that bucket's objects appear."""
    jobs: Mapping[str, Mapping[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_JOBS))
    """When the daemon runs its maintenance jobs: APScheduler trigger name and arguments per job."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    config_file: Path | None = None
    """The config file these settings were read from (``load_settings``); not itself a file setting."""

    @property
    def workers(self) -> int:
        """Threads that read, hash and decode files for the model. Each waits for its own vector, so
        while a batch of ``batch_size`` runs only the others can queue the next one: with
        ``batch_size + 4`` batches settled near 10 of 16 and int8 ``index`` ran at 0.68-0.8x the model
        alone; twice the batch keeps the next batch full (docs/decisions.md, "Where an int8 `imgwatch
        index` loses against int8 model only")."""
        return 2 * self.batch_size + 4

    @property
    def vectors_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir / "vectors.db")

    @property
    def uses_milvus_lite(self) -> bool:
        # The same schemes as MilvusVectorStore: a unix: socket is a server too (the tests reach theirs so).
        server = ("http://", "https://", "tcp://", "unix:")
        return self.milvus_uri is None or not self.milvus_uri.startswith(server)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked as a new ``Settings`` is (``model_copy`` would not check)."""
        return Settings.model_validate(
            {**{name: getattr(self, name) for name in Settings.model_fields}, **changes}
        )

    # The checks, in imgwatch.config.checks; here only which field gets which.

    @field_validator(
        "webhook_token",
        "webhook_hmac_secret",
        "milvus_token",
        "webhook",
        "milvus_uri",
        "search_page",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty secret is no secret: unset, never "any". `search_page = ""` is off, like unset.
        return None if value == "" else value

    @field_validator("include", "exclude", "roots", "poll_roots", "protect", mode="wrap")
    @classmethod
    def _strings(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        return checks.strings(str(info.field_name), value, handler)

    @field_validator("protect", mode="after")
    @classmethod
    def _protect(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return checks.absolute_folders("protect", value)

    @field_validator(*CHOICES, mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> str:
        return checks.choice(str(info.field_name), value)

    @field_validator("index_params", mode="after")
    @classmethod
    def _index_params(cls, value: Mapping[str, Any], info: ValidationInfo) -> Mapping[str, Any]:
        if value and info.data.get("index_type") == "AUTO":
            # They would be ignored: auto sizes its own, and parameters of one type are wrong for another.
            raise checks.problem("index_params needs an explicit index_type (auto chooses its own)")
        return value

    @field_validator(*POSITIVE_INTS, mode="wrap")
    @classmethod
    def _positive_int(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> int:
        return checks.positive_int(str(info.field_name), value, handler)

    @field_validator(*POSITIVE_NUMBERS, mode="wrap")
    @classmethod
    def _positive_number(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> float:
        return checks.positive_number(str(info.field_name), value, handler)

    @field_validator("include_hidden", "follow_symlinks", "poll", mode="wrap")
    @classmethod
    def _boolean(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> bool:
        return checks.boolean(str(info.field_name), value, handler)

    @field_validator("pca", mode="wrap")
    @classmethod
    def _pca(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int | Literal["auto"] | None:
        return checks.pca(value, handler)

    @field_validator("pca_auto_at", mode="wrap")
    @classmethod
    def _pca_auto_at(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        at = checks.positive_int("pca_auto_at", value, handler)
        if at < 512:  # a PCA-512 needs at least as many vectors as dimensions to be fitted at all
            raise checks.problem(f"pca_auto_at must be at least 512 vectors, not {at}")
        return at

    @field_validator("s3_mounts", mode="before")
    @classmethod
    def _s3_mounts(cls, value: Any) -> dict[str, str]:
        return checks.s3_mounts(value)

    @field_validator("jobs", mode="before")
    @classmethod
    def _jobs(cls, value: Any) -> dict[str, Mapping[str, Any]]:
        return checks.jobs(value)


#: The settings that hold secrets: never shown, in ``repr()`` or in an error message about their value.
SECRET_SETTINGS = frozenset(name for name, info in Settings.model_fields.items() if not info.repr)
