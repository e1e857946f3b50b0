"""The commands, one module a verb: `job cancel`, `job cancel-status`, `job cancellations`
and `completion`. They parse flags, ask through the connection, and leave showing to the
views, printers and live progress."""
