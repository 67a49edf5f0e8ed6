"""What a command covers: the roots it was given or the index remembers, and the files in them."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from imgwatch.errors import ImgwatchError

if TYPE_CHECKING:
    from imgwatch.config import Settings
    from imgwatch.scan import ScanRules


def scan_rules(settings: Settings) -> ScanRules:
    from imgwatch.scan import ScanRules

    return ScanRules(settings.include, settings.exclude, settings.include_hidden, settings.follow_symlinks)


def remembered(settings: Settings, command: str) -> list[str]:
    """For ``command`` run without roots: the ones the index remembers, said on stderr (a missing
    one too: it is still passed on, so its entries are kept, not deleted)."""
    from imgwatch.roots import remembered_roots

    roots = [root.path for root in remembered_roots(settings)]
    if not roots:
        raise ImgwatchError(
            f"{command}: no roots: give ROOT arguments, set `roots = [...]` in the config file, or index "
            "a folder first (`imgwatch index ROOT`; the index then remembers it)"
        )
    missing = [root for root in roots if not os.path.isdir(root)]
    shown = ", ".join(f"{root} (missing)" if root in missing else root for root in roots)
    print(f"imgwatch: using the roots this index remembers: {shown}", file=sys.stderr)  # noqa: T201
    for root in missing:
        print(  # noqa: T201
            f"imgwatch: warning: the remembered root {root} does not exist; its entries are kept "
            f"(`imgwatch forget {root}` removes them)",
            file=sys.stderr,
        )
    return roots


def is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)
