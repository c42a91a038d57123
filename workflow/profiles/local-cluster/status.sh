#!/usr/bin/env bash
# Report the state of a job started by submit.sh: prints running, success or
# failed, as Snakemake's cluster-generic executor expects.
#
# Usage: status.sh JOB_ID
# Each query is appended to $LOCAL_CLUSTER_DIR/status.log (job id and state).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "status.sh: expected JOB_ID, got $# arguments: $*" >&2
    exit 2
fi
job_id=$1
state_dir=${LOCAL_CLUSTER_DIR:-.local-cluster}
exit_file="$state_dir/jobs/$job_id.exit"

if [[ ! -f "$exit_file" ]]; then
    state=running
elif [[ "$(cat "$exit_file")" == 0 ]]; then
    state=success
else
    state=failed
fi
printf '%s\t%s\n' "$job_id" "$state" >> "$state_dir/status.log"
echo "$state"
