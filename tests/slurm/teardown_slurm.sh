#!/usr/bin/env bash
# Stop the test SLURM started by setup_slurm.sh. Idempotent: nothing running is fine.
set -u
command -v scancel >/dev/null && scancel --user=root 2>/dev/null
pkill -x slurmd 2>/dev/null
pkill -x slurmctld 2>/dev/null
pkill -x slurmdbd 2>/dev/null
pkill -x mariadbd 2>/dev/null
pkill -x munged 2>/dev/null
exit 0
