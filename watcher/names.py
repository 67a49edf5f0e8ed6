"""The names users type outside Python: environment variables, and the values of the choice settings.

Light on purpose (no pydantic): the CLI builds its parser from these, so ``imgwatch --help`` and a
mistyped flag are answered without loading the settings machinery. ``imgwatch.config`` re-exports
every name here.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The cosine similarity from which ``duplicates`` groups two images and ``check`` counts a match
#: (both take ``--threshold``); here so that ``--help`` shows it without importing either.
DUPLICATE_THRESHOLD = 0.95
#: The keep rules, as ``dedupe --keep`` names them (``imgwatch.dedupe``); the first is the default.
KEEP_RULES = ("largest", "smallest", "oldest", "newest", "shortest-path")

#: Every setting NAME can be given as the environment variable IMGWATCH_<NAME> (upper case).
ENV_PREFIX = "IMGWATCH_"
ENV_DATA_DIR = "IMGWATCH_DATA_DIR"
ENV_WEIGHTS = "IMGWATCH_WEIGHTS"
ENV_MILVUS_URI = "IMGWATCH_MILVUS_URI"
ENV_MILVUS_TOKEN = "IMGWATCH_MILVUS_TOKEN"  # noqa: S105 - a variable name, not a secret
#: The config file, not a setting: it names where the file-settings come from.
ENV_CONFIG = "IMGWATCH_CONFIG"
ENV_DEVICE = "IMGWATCH_DEVICE"
ENV_PCA = "IMGWATCH_PCA"
ENV_NODE = "IMGWATCH_NODE"
ENV_WEBHOOK_TOKEN = "IMGWATCH_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_WEBHOOK_HMAC_SECRET = "IMGWATCH_WEBHOOK_HMAC_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_SEARCH_PAGE = "IMGWATCH_SEARCH_PAGE"

#: The documented variables (systemd/imgwatch.env.example) and the setting each feeds. Any other
#: setting may be given as IMGWATCH_<NAME> too; lists and tables as JSON.
ENV_VARS: Mapping[str, str] = {
    "data_dir": ENV_DATA_DIR,
    "weights": ENV_WEIGHTS,
    "milvus_uri": ENV_MILVUS_URI,
    "milvus_token": ENV_MILVUS_TOKEN,
    "device": ENV_DEVICE,
    "pca": ENV_PCA,
    "node": ENV_NODE,
    "webhook_token": ENV_WEBHOOK_TOKEN,
    "webhook_hmac_secret": ENV_WEBHOOK_HMAC_SECRET,
    "search_page": ENV_SEARCH_PAGE,
}

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float", "fp32", "bf16", "fp16", "int8")
"""``auto``: int8 for a new index where the CPU runs it faithfully, else the fastest float precision;
an existing index keeps its precision class. ``float``: the fastest float precision measured here
(fp32 or bf16 on a CPU, fp16 on CUDA), never int8. The rest are obeyed as given."""
INDEX_TYPES = ("AUTO", "FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "HNSW_SQ", "AUTOINDEX")
"""``AUTO``: imgwatch's choice by the collection's size (FLAT, then an ANN index; see
``services.milvus_collection.auto_index_type``). ``AUTOINDEX`` is Milvus' own choice."""

#: The settings' names, which are the config file's keys (``Settings``' fields but ``config_file``):
#: for thin clients, which check a config file's keys without loading pydantic (``config.client``).
#: tests/test_client_settings.py keeps it equal to the model's fields.
SETTING_NAMES = frozenset(
    {
        "data_dir", "weights", "milvus_uri", "milvus_token", "collection", "node", "device",
        "precision", "batch_size", "pca", "pca_auto_at", "index_type", "index_params",
        "exact_search_up_to", "include", "exclude", "include_hidden", "follow_symlinks", "roots",
        "protect", "poll", "poll_roots",
        "poll_interval", "settle_seconds", "mass_delete_fraction", "mass_delete_min_files",
        "webhook", "webhook_token", "webhook_hmac_secret", "webhook_max_bytes", "metrics_public",
        "search_page", "search_page_max_bytes", "s3_mounts", "jobs", "max_pixels", "max_file_bytes",
    }
)  # fmt: skip
