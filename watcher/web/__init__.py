"""The daemon's HTTP surfaces on one stack: FastAPI applications served by uvicorn.

- :mod:`imgwatch.web.webhook`: events from machines (``POST /events``), health and metrics;
- :mod:`imgwatch.web.page`: the search page for people, its API and thumbnails;
- :mod:`imgwatch.web.local`: the control socket in the data dir, for the CLI;
- :mod:`imgwatch.web.common`: what they share (error bodies, body limits, secrets compared as bytes);
- :mod:`imgwatch.web.server`: uvicorn inside the daemon, on a TCP port or the Unix socket.

:func:`create_app` is the one factory: it receives the services each surface needs (no globals)
and includes one router per surface.
"""

from imgwatch.web.app import create_app

__all__ = ["create_app"]
