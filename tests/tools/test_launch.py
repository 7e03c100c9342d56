"""util/launch.sh, sourced by train.sh and test.sh: the launcher and the OMP_NUM_THREADS it sets for DDP."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOW = 'source util/launch.sh; echo "${launch[*]}|${OMP_NUM_THREADS:-unset}"'


def launch(**env: str) -> tuple[str, str]:
    """(stdout, stderr) of sourcing util/launch.sh with ``env`` (OMP_NUM_THREADS removed unless given)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NPROC")}
    done = subprocess.run(["bash", "-c", SHOW], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip(), done.stderr.strip()


def test_one_process_runs_python_and_leaves_the_threads_alone():
    assert launch() == ("python|unset", "")
    assert launch(NPROC="1") == ("python|unset", "")


def test_ddp_divides_the_cores_between_processes_and_says_so():
    cores = len(os.sched_getaffinity(0))
    threads = max(cores // 3, 1)
    out, err = launch(NPROC="3")
    assert out == f"torchrun --standalone --nproc_per_node 3|{threads}"
    assert err == f"OMP_NUM_THREADS={threads} per process ({cores} cores / NPROC=3); set OMP_NUM_THREADS to choose"


def test_a_thread_count_the_user_set_is_kept():
    assert launch(NPROC="2", OMP_NUM_THREADS="5") == ("torchrun --standalone --nproc_per_node 2|5", "")
