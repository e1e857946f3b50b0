"""Cancellation at scale: necrocode-cancel side by side with what a user would otherwise pick,
in the same run, on a local control plane of its own (etcd + kube-apiserver +
kube-controller-manager + kube-scheduler + kwok, 10 kwok nodes).

    make bench [BENCH_ARGS="--sizes 100,1000 --reps 3"]
    .venv/bin/python -m benchmarks --help        # from the repository's root

Approaches, each timed from the request to the moment the work is observably done:

  ours            a JobCancellation, creation -> phase Completed (every runner gone, every
                  task Cancelled, every lease released; the operator's own Verify step checks)
  floor           a bare asyncio client making exactly the writes a cancellation promises in
                  mode Cancel without a cooperative window (graceful DELETE per runner, the
                  delete being the signal; once all are gone, task PUT + lease PUT), 100 in
                  flight, nothing else: the floor under any operator keeping the promises
  floor-budgeted  the same writes under the operator's API budget (by default its adaptive
                  in-flight limit, 3 to 50; its settings read from the environment as the
                  operator reads them): the floor as gentle with the API server as ours
  raw-delete      a bare asyncio client: concurrent DELETEs of the same pods, until a watch has
                  seen every pod DELETED
  raw-collection  one DELETE collection (label selector), until every pod is DELETED
  kubectl         `kubectl delete pods -l necrocode.io/job=... --wait`
  job-controller  a batch/v1 Job with N pods, patched to `suspend: true`, until its pods are gone

plus the reaction latency of a TaskCancellation (creation -> first pod deletion seen by a
watch), many JobCancellations at once (100 of 50 runners, 1,000 of 5) against the floor over the
same jobs and the contract's floor (the floor plus the requests themselves and what the contract
promises per cancellation: the dispatch block, the job's phases, an Event per task and one for the
cancellation, the record's status at its start and its end), both floors also under the
operator's API budget, the operator's peak RSS with
10,000 unrelated pods in the cluster, a leak check (RSS and connections before and after 500
sequential cancellations) and the good neighbour (a steady
load's latency in another namespace, idle and during each approach, ours under several API
budgets). --scenario picks among them.

Runner pods carry `necrocode.io/kwok-stop=immediate`: kwok removes them as soon as they are
deleted, so the figures measure the control path, not container shutdown. Results go to
benchmarks/results/<timestamp>/ (results.json, cancel-time.png, neighbour.png, table.md, operator
logs); `--publish` also copies results.json and the plots to docs/benchmarks/.

Not part of the test suite: nothing here asserts; the goals are reported, not enforced.
"""
