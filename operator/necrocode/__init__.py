"""necrocode-cancel: a Kubernetes operator that cancels NecroCode jobs and tasks."""

__version__ = "0.1.0"
