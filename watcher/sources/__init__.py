"""Event sources: they turn the outside world into typed events and do nothing else."""
