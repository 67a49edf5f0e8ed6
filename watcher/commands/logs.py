"""Logging for a command: on stderr, our own lines at ``info``, the libraries' chatter kept down."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level == "info":
        # At info, one line per event worth logging: our own, not the libraries' start-up chatter.
        # uvicorn.error says "started" once per surface; its access log (uvicorn.access) stays on.
        for chatty in ("watchdog", "alembic", "faiss", "PIL", "urllib3", "uvicorn.error", "httpx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    if level != "debug":
        # pymilvus logs every failed RPC with a traceback before raising, and Milvus Lite's in-process
        # gRPC server logs the optional RPCs it does not implement; we report the errors that matter.
        quiet_libraries()


def quiet_libraries() -> None:
    for noisy in ("pymilvus", "grpc._server", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
