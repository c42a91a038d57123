#!/usr/bin/env bash
# Submit a Snakemake job script to a "cluster" on this machine: run it in the
# background and print the job id, as sbatch --parsable does.
#
# Usage: submit.sh NAME MEM_MB RUNTIME_MIN THREADS JOBSCRIPT
# Snakemake's cluster-generic executor fills in the first four from the job
# ({name} {resources.mem_mb} {resources.runtime} {threads}) and appends the
# job script. Every submission is appended to $LOCAL_CLUSTER_DIR/submissions.tsv
# (id, name, mem_mb, runtime, threads); the job's output goes to
# $LOCAL_CLUSTER_DIR/jobs/ID.out and its exit status to jobs/ID.exit.
# LOCAL_CLUSTER_DIR defaults to .local-cluster in the working directory.
set -euo pipefail

if [[ $# -ne 5 ]]; then
    echo "submit.sh: expected NAME MEM_MB RUNTIME_MIN THREADS JOBSCRIPT, got $# arguments: $*" >&2
    exit 2
fi
name=$1
mem_mb=$2
runtime=$3
threads=$4
jobscript=$5

state_dir=${LOCAL_CLUSTER_DIR:-.local-cluster}
mkdir -p "$state_dir/jobs"
job_id="local-$(date +%s%N)-$$"
printf '%s\t%s\t%s\t%s\t%s\n' "$job_id" "$name" "$mem_mb" "$runtime" "$threads" >> "$state_dir/submissions.tsv"

# The exit status is written to a temporary name first, so status.sh never reads half a file.
nohup bash -c 'bash "$1" > "$2.out" 2>&1; echo $? > "$2.exit.part"; mv "$2.exit.part" "$2.exit"' \
    submit "$jobscript" "$state_dir/jobs/$job_id" > /dev/null 2>&1 &

echo "$job_id"
