# Sourced by train.sh and test.sh: `run_entry SCRIPT ARGS...` runs a Python entry point in NPROC processes (torchrun,
# DDP) or in one.
# - NPROC > 1: torchrun --standalone on this machine, or, with TORCHRUN_ARGS set, torchrun with those arguments
#   instead of --standalone (several nodes: --nnodes, --node_rank, --rdzv_backend, --rdzv_endpoint, --rdzv_id; one
#   torchrun per node, e.g. one srun task per node under SLURM; docs/training.md, "Several nodes").
#   With OMP_NUM_THREADS unset, each process gets the CPU cores this shell may use divided by NPROC (at least 1),
#   and the value is printed; a value the user set is kept (torchrun would otherwise set 1 and warn).
# - The entry point runs as a child of this shell: SIGINT, SIGTERM and SIGHUP to the shell are passed on to it (a
#   training run then saves last.pth at its current iteration and stops; rerunning the command continues it), and
#   the shell waits for it, so no process is left running unseen.
launch=(python)
if [ "${NPROC:-1}" -gt 1 ]; then
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    cores=$(nproc)
    threads=$(( cores / NPROC ))
    [ "$threads" -ge 1 ] || threads=1
    export OMP_NUM_THREADS=$threads
    echo "OMP_NUM_THREADS=$OMP_NUM_THREADS per process ($cores cores / NPROC=$NPROC); set OMP_NUM_THREADS to choose" >&2
  fi
  if [ -n "${TORCHRUN_ARGS:-}" ]; then
    read -r -a torchrun_args <<< "$TORCHRUN_ARGS"
    launch=(torchrun "${torchrun_args[@]}" --nproc_per_node "$NPROC")
  else
    launch=(torchrun --standalone --nproc_per_node "$NPROC")
  fi
fi

run_entry() {
  "${launch[@]}" "$@" &
  local child=$! status=0
  trap 'kill -INT "$child" 2>/dev/null' INT
  trap 'kill -TERM "$child" 2>/dev/null' TERM
  trap 'kill -HUP "$child" 2>/dev/null' HUP
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do  # a signal to this shell ended the wait, not the child: wait on
    status=0
    wait "$child" || status=$?
  done
  trap - INT TERM HUP
  if [ "$status" -ne 0 ] && [ "${launch[0]}" = torchrun ] && [ "$status" -lt 128 ]; then
    echo "error: a process of this $1 run failed (torchrun exit $status; its own error is above): fix that, then run" \
         "the same command again: a training run continues from its last.pth (resume auto)" >&2
  fi
  return "$status"
}
