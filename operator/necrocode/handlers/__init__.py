"""kopf handlers: they only wire resources to the CancellationService. Importing this package
registers every handler (one module per resource kind)."""

from necrocode.handlers import expiry, jobcancellation, lifecycle, taskcancellation

__all__ = ["expiry", "jobcancellation", "lifecycle", "taskcancellation"]
