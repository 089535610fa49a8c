"""The thread rule: never more torch threads than free cores; one clear line when it takes fewer."""
from __future__ import annotations

import io
import logging

import pytest

from vitlab.train import threads
from vitlab.train.threads import choose_threads


@pytest.mark.parametrize("cores,load,processes,expected", [
    (2, 0.1, 1, 2),    # idle 2-core machine: both cores
    (2, 1.0, 1, 1),    # one core busy with another job: 1 thread (2 were 4-5x slower there)
    (2, 14.0, 1, 1),   # overloaded: still 1, never 0
    (16, 0.0, 4, 4),   # torchrun with 4 processes on 16 idle cores: a quarter each
    (16, 8.0, 4, 2),   # half the cores busy: 2 each
    (8, 2.6, 1, 5),    # load rounds to the nearest core
])
def test_threads_follow_free_cores(cores, load, processes, expected) -> None:
    choice = choose_threads(None, cores=cores, load=load, processes=processes)
    assert choice.threads == expected
    full_share = cores // processes
    assert (choice.warning is not None) == (expected < full_share)
    if choice.warning:
        assert "\n" not in choice.warning and "train.num_threads" in choice.warning


def test_an_explicit_count_is_kept_with_a_warning_when_it_oversubscribes() -> None:
    assert choose_threads(2, cores=2, load=0.0).warning is None
    busy = choose_threads(2, cores=2, load=1.5)
    assert busy.threads == 2 and "train.num_threads=1" in busy.warning


def test_pick_threads_reads_the_machine_and_logs_one_line(monkeypatch, caplog) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "load_average", lambda: 1.2)
    with caplog.at_level(logging.WARNING):
        assert threads.pick_threads(None) == 1
    assert len(caplog.records) == 1 and "load average 1.2" in caplog.text
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    assert threads.pick_threads(None) == 2


def test_the_load_of_this_process_s_previous_phase_does_not_count(tmp_path, monkeypatch) -> None:
    """A lagging 1-min load of 1.9 from our own finished pre-training, and only this thread runnable now: 0 busy."""
    proc = tmp_path / "loadavg"
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.9, 1.0, 0.5))
    monkeypatch.setattr(threads, "PROC_LOADAVG", str(proc))
    monkeypatch.setattr(threads, "PROC_SELF_TASKS", _tasks(tmp_path / "task", "RS"))  # this thread alone
    proc.write_text("1.90 1.00 0.50 1/120 4242\n")
    assert threads.load_average() == 0
    proc.write_text("1.90 1.00 0.50 3/120 4242\n")  # two other threads running: the lagging 1.9 stands
    assert threads.load_average() == 1.9
    proc.write_text("garbled\n")
    assert threads.load_average() == 1.9


def _tasks(root, states: str) -> str:
    """A fake ``/proc/self/task`` with one thread per letter of ``states`` (R runnable, S sleeping)."""
    for tid, state in enumerate(states, start=100):
        (root / str(tid)).mkdir(parents=True)
        (root / str(tid) / "stat").write_text(f"{tid} (pt_main (thread)) {state} 1 2 3\n")
    return str(root)


def test_this_process_s_spinning_threads_are_not_another_job(tmp_path, monkeypatch) -> None:
    """Just after another job ended (lagging load 0.8), with three of our own threads runnable (the caller and two
    OpenMP workers still spinning): nothing else is busy, so both cores are free. One more runnable thread than
    ours is another job's, and counts."""
    proc = tmp_path / "loadavg"
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.8, 1.0, 1.0))
    monkeypatch.setattr(threads, "PROC_LOADAVG", str(proc))
    monkeypatch.setattr(threads, "PROC_SELF_TASKS", _tasks(tmp_path / "task", "RRSRS"))
    assert threads.own_runnable_threads() == 3
    proc.write_text("0.80 1.00 1.00 3/120 4242\n")
    assert threads.load_average() == 0
    assert choose_threads(None, cores=2, load=threads.load_average()).threads == 2
    proc.write_text("0.80 1.00 1.00 4/120 4242\n")
    assert threads.load_average() == 0.8
    assert choose_threads(None, cores=2, load=threads.load_average()).threads == 1


def test_own_runnable_threads_reads_this_process() -> None:
    """On Linux the calling thread is runnable while it reads, so at least 1; elsewhere the fallback 1."""
    assert threads.own_runnable_threads() >= 1


def test_a_passer_by_in_one_reading_is_not_a_busy_core(monkeypatch) -> None:
    """Another thread runnable in one reading of ten (a process exiting, a kernel worker) is not a job; one
    runnable in all ten is."""
    readings: list[str] = []

    def fake_open(path, *args, **kwargs):
        return io.StringIO(readings.pop(0))

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.0, 1.5, 1.0))
    monkeypatch.setattr(threads, "own_runnable_threads", lambda: 1)
    monkeypatch.setattr(threads, "LOAD_SAMPLE_GAP_S", 0.0)
    monkeypatch.setattr(threads, "open", fake_open, raising=False)
    readings[:] = ["2.00 1.50 1.00 2/90 1\n"] + ["2.00 1.50 1.00 1/90 1\n"] * 9
    assert threads.load_average() == 0
    readings[:] = ["2.00 1.50 1.00 2/90 1\n"] * 10
    assert threads.load_average() == 1
