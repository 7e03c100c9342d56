# Sourced by train.sh and test.sh: sets `launch`, the command that runs a Python entry point in NPROC processes
# (torchrun, DDP) or in one. With NPROC > 1 and OMP_NUM_THREADS unset, each process gets the CPU cores this
# shell may use divided by NPROC (at least 1) as OMP_NUM_THREADS, and the value is printed; a value the user set
# is kept. (torchrun would otherwise set 1 and warn.)
launch=(python)
if [ "${NPROC:-1}" -gt 1 ]; then
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    cores=$(nproc)
    threads=$(( cores / NPROC ))
    [ "$threads" -ge 1 ] || threads=1
    export OMP_NUM_THREADS=$threads
    echo "OMP_NUM_THREADS=$OMP_NUM_THREADS per process ($cores cores / NPROC=$NPROC); set OMP_NUM_THREADS to choose" >&2
  fi
  launch=(torchrun --standalone --nproc_per_node "$NPROC")
fi
