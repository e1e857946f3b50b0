#!/bin/sh
# A runner that ignores SIGTERM (a stuck or misbehaving agent): it works until it is killed.
# The kubelet sends SIGKILL when the grace period ends, so the container exits with 137 and
# nothing is saved beyond `progress`. Same environment and files as runner.sh, minus `result`;
# its termination message (TERMINATION_LOG) is rewritten at each step with
#   steps=N up=<s> boot=<id> cancel-requested=<value|none>
# so after the kill the container's terminated state says how far it got, and when (no `ended=`:
# it never saved anything).
ARTIFACT_DIR=${ARTIFACT_DIR:-/artifacts}
PODINFO_DIR=${PODINFO_DIR:-/etc/podinfo}
STEP_SECONDS=${STEP_SECONDS:-0.2}
TERMINATION_LOG=${TERMINATION_LOG:-/dev/termination-log}
steps=0
cancel=""
up=""
{ read -r boot </proc/sys/kernel/random/boot_id; } 2>/dev/null || boot=unknown
mkdir -p "$ARTIFACT_DIR"
trap '' TERM INT   # explicit: also ignored when not PID 1 (PID 1 ignores unhandled signals anyway)

write() { printf '%s\n' "$2" >"$ARTIFACT_DIR/.$1.tmp" && mv "$ARTIFACT_DIR/.$1.tmp" "$ARTIFACT_DIR/$1"; }

write started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "ignore-sigterm: started, ignoring SIGTERM (boot $boot)"
while :; do
  if [ -z "$cancel" ] && [ -f "$PODINFO_DIR/annotations" ] &&
     line=$(grep '^necrocode.io/cancel-requested=' "$PODINFO_DIR/annotations"); then
    # the file holds key="value" with Go quoting (\" and \\ escaped): unquote it
    cancel=$(echo "$line" | sed -e 's/^[^=]*="\(.*\)"$/\1/' -e 's/\\\(.\)/\1/g')
    write cancel-requested "$cancel"
    echo "ignore-sigterm: cancel requested ($cancel), ignoring it"
  fi
  sleep "$STEP_SECONDS"
  steps=$((steps + 1))
  write progress "$steps"
  { read -r up _ </proc/uptime; } 2>/dev/null || up=-
  if [ -f "$TERMINATION_LOG" ]; then
    printf '%s' "steps=$steps up=$up boot=$boot cancel-requested=${cancel:-none}" >"$TERMINATION_LOG"
  fi
  [ "$steps" -eq 1 ] && echo "ignore-sigterm: working (step 1)"
done
