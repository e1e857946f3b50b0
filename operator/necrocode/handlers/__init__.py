"""kopf handlers: they only wire resources to the CancellationService. Importing this package
registers every handler (one module per resource kind)."""

from necrocode.handlers import jobcancellation, lifecycle, taskcancellation

__all__ = ["jobcancellation", "lifecycle", "taskcancellation"]
