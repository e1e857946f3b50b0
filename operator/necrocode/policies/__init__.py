"""When to act: the time and restart rules of the executors, as pure decisions over plain data
and the time passed in (no I/O, no clock read), each with table tests in tests/unit.

termination    when the terminator forces a runner, calls it stuck, deletes it, wakes up
status_writes  when the tracker writes a cancellation's status
resume         what the engine runs, keeps or skips on a (re)start, and how long it has left
drain          mode Drain: which tasks are let run, where a drain stands, when it is over
budget         the API budget's token bucket: when a request may be sent
adaptive       how many requests may be in flight, from the API server's round trips
"""
