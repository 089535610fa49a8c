"""How many torch threads a training process uses: never more than the cores that are free.

torch starts one thread per core it sees. On a machine whose cores other jobs already keep busy, those threads
fight over the same cores and spin at every synchronisation; on a shared 2-core machine, 2 threads made training
4-5x slower than 1 (docs/performance.md). The rule:

* ``train.num_threads`` (or ``OMP_NUM_THREADS``) given: used as is, with a warning when it exceeds the cores left.
* otherwise: the cores this process may run on (``os.sched_getaffinity``), shared among the processes of this
  machine (torchrun's ``LOCAL_WORLD_SIZE``), minus the cores other work keeps busy (:func:`load_average`), at least 1.

When the rule takes fewer threads than there are cores, it says so in one line (and how to override it).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)
PROC_LOADAVG = "/proc/loadavg"  # Linux: "1min 5min 15min runnable/total lastpid"
LOAD_SAMPLES, LOAD_SAMPLE_GAP_S = 10, 0.01  # readings of the runnable count, and the pause between them
PROC_SELF_TASKS = "/proc/self/task"  # Linux: one directory per thread of this process, each with its "stat"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    warning: Optional[str]  # one line for the user when the choice is not "all my cores"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def own_runnable_threads() -> int:
    """Threads of this process in state R (running or runnable) now, this one included; 1 where unreadable.

    Besides the calling thread, an OpenMP pool that has just finished a parallel region spins for a while and
    shows as runnable: its threads are this process's, not another job's."""
    task_dir = PROC_SELF_TASKS
    try:
        names = os.listdir(task_dir)
    except OSError:
        return 1
    running = 0
    for name in names:
        try:
            with open(os.path.join(task_dir, name, "stat")) as file:
                state = file.read().rsplit(")", 1)[1].split()[0]  # after "pid (comm)": the state letter
        except (OSError, IndexError):
            continue  # the thread ended while we looked
        running += state == "R"
    return max(1, running)


def load_average() -> float:
    """Cores other work keeps busy: the 1-minute load average, capped by other processes' threads runnable now.

    The load average lags by about a minute, so on its own it would count this process's own previous phase
    (the demo's pre-training before its fine-tuning, a study's previous point) or a job that has just ended as
    another job; the kernel's count of runnable threads at this instant (``/proc/loadavg``), less this process's
    own (:func:`own_runnable_threads`), does not. One reading catches passers-by (a process exiting, a kernel
    worker, the shell that started us), so the count is the least of ``LOAD_SAMPLES`` readings over a tenth of a
    second: a job that keeps a core busy is runnable in every one of them.
    """
    try:
        lagging = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    others = []
    for sample in range(LOAD_SAMPLES):
        if sample:
            time.sleep(LOAD_SAMPLE_GAP_S)
        try:
            with open(PROC_LOADAVG) as file:
                running = int(file.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):  # not Linux: the load average alone
            return lagging
        others.append(max(0, running - own_runnable_threads()))
    return min(lagging, min(others))


def choose_threads(requested: Optional[int], *, cores: int, load: float, processes: int = 1) -> ThreadChoice:
    """The rule of the module docstring, with the machine's numbers passed in (so a test can inject them)."""
    share = max(1, cores // max(processes, 1))  # this process's share of the cores
    busy = min(cores, max(0.0, load))
    free = max(1, math.floor((cores - busy) / max(processes, 1) + 0.5))
    if requested:
        if requested > free:
            return ThreadChoice(requested, (
                f"train.num_threads={requested} but only {free} of {cores} cores are free (1-min load average "
                f"{load:.1f}): expect a slow run; train.num_threads={free} avoids oversubscribing"))
        return ThreadChoice(requested, None)
    threads = min(share, free)
    if threads < share:
        return ThreadChoice(threads, (
            f"{cores} cores, 1-min load average {load:.1f}: training with {threads} torch thread(s) instead of "
            f"{share} so as not to oversubscribe a busy machine (set train.num_threads=N to choose)"))
    return ThreadChoice(threads, None)


def pick_threads(requested: Optional[int]) -> int:
    """Apply :func:`choose_threads` to this machine; logs its warning, if any, once."""
    if not requested and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        requested = int(os.environ["OMP_NUM_THREADS"])  # the user's explicit choice for this shell
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    choice = choose_threads(requested, cores=usable_cores(), load=load_average(), processes=processes)
    if choice.warning:
        log.warning(choice.warning)
    return choice.threads
