#!/bin/sh
# The reference NecroCode runner: does "work" (one step per STEP_SECONDS), watches the
# necrocode.io/cancel-requested annotation through the downward API, and on SIGTERM saves its
# work to its artifact and exits 0 -- the behaviour the operator's graceful cancellation expects.
#
# Environment (all optional):
#   ARTIFACT_DIR      where the artifact goes (default /artifacts; mount a volume that outlives the pod)
#   PODINFO_DIR       the downward API volume with an `annotations` file (default /etc/podinfo)
#   STEP_SECONDS      seconds per work step (default 0.2)
#   TOTAL_STEPS       finish normally after this many steps (default 0: work until stopped)
#   TERMINATION_LOG   the pod's termination message file (default /dev/termination-log)
#
# Files written in ARTIFACT_DIR:
#   started            the time it started (written once)
#   progress           steps done so far (rewritten each step)
#   cancel-requested   the annotation's value, when it first appears
#   result             on SIGTERM or at the end, one line:
#                      steps=N ended=sigterm|finished at=<UTC> up=<s> boot=<id> cancel-requested=<value|none>
# and TERMINATION_LOG (when the kubelet mounted it) gets the same line, so the saved work is
# readable through the API (the container's terminated state, `message`) after the pod is gone.
# `up` is /proc/uptime (the kernel's CLOCK_BOOTTIME, 10 ms) and `boot` the kernel's boot id: a
# reader on the same kernel (a container runtime on this machine) can time the line precisely.
# The log says when it starts, its first work step ("working (step 1)"), the annotation and SIGTERM.
ARTIFACT_DIR=${ARTIFACT_DIR:-/artifacts}
PODINFO_DIR=${PODINFO_DIR:-/etc/podinfo}
STEP_SECONDS=${STEP_SECONDS:-0.2}
TOTAL_STEPS=${TOTAL_STEPS:-0}
TERMINATION_LOG=${TERMINATION_LOG:-/dev/termination-log}
steps=0
cancel=""
sleeper=""
up=""
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null || boot=unknown
mkdir -p "$ARTIFACT_DIR"

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# sets $up: seconds since boot, from /proc/uptime ("-" where there is none)
uptime_now() { { read -r up _ </proc/uptime; } 2>/dev/null || up=-; }

# write FILE CONTENT: atomically (a reader never sees half a file)
write() { printf '%s\n' "$2" >"$ARTIFACT_DIR/.$1.tmp" && mv "$ARTIFACT_DIR/.$1.tmp" "$ARTIFACT_DIR/$1"; }

save() {
  how=$1
  uptime_now
  write result "steps=$steps ended=$how at=$(now) up=$up boot=$boot cancel-requested=${cancel:-none}"
  head=$(cat "$ARTIFACT_DIR/result")
  # the kubelet mounts the termination-log file; elsewhere (a plain shell) there is none
  if [ -f "$TERMINATION_LOG" ]; then printf '%s' "$head" >"$TERMINATION_LOG"; fi
  echo "runner: $head"
}

on_term() {
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  echo "runner: SIGTERM after $steps steps, saving work"
  save sigterm
  exit 0
}
trap on_term TERM
trap on_term INT

check_cancel() {
  [ -n "$cancel" ] && return
  [ -f "$PODINFO_DIR/annotations" ] || return
  line=$(grep '^necrocode.io/cancel-requested=' "$PODINFO_DIR/annotations") || return
  # the file holds key="value" with Go quoting (\" and \\ escaped): unquote it
  cancel=$(echo "$line" | sed -e 's/^[^=]*="\(.*\)"$/\1/' -e 's/\\\(.\)/\1/g')
  write cancel-requested "$cancel"
  echo "runner: cancel requested ($cancel), waiting for SIGTERM"
}

write started "$(now)"
echo "runner: started, artifact in $ARTIFACT_DIR (boot $boot)"
while [ "$TOTAL_STEPS" -eq 0 ] || [ "$steps" -lt "$TOTAL_STEPS" ]; do
  check_cancel
  sleep "$STEP_SECONDS" &
  sleeper=$!
  wait "$sleeper"   # returns at once when a trapped signal arrives
  sleeper=""
  steps=$((steps + 1))
  write progress "$steps"
  [ "$steps" -eq 1 ] && echo "runner: working (step 1)"
done
save finished
exit 0
