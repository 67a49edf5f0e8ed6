from imgwatch.cli import run

raise SystemExit(run())
