"""GPU leases hand concurrent jobs distinct devices via flocked slot files; no GPU needed."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from unitablation.lease import (
    LOCK_DIR_ENV,
    SIMULATED_GATE_ENV,
    SIMULATED_GPUS_ENV,
    VISIBLE_ENV,
    gpu_lease,
)

# Takes a lease with a faked GPU count, reports it on stdout, holds it until a line on stdin.
# Each poll of a taken slot prints POLL, so a test can wait for polls instead of sleeping.
HOLDER_SCRIPT = """
import sys, time
from unitablation.lease import gpu_lease
name, lock_dir, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
timeout = None if timeout == "none" else float(timeout)
def log(message):
    print("LOG", message, flush=True)
def sleep(seconds):
    print("POLL", seconds, flush=True)
    time.sleep(seconds)
with gpu_lease(name, lock_dir, device_count=lambda: count, poll_seconds=0.05,
               timeout_seconds=timeout, log=log, sleep=sleep) as lease:
    print("LEASED", lease.device, lease.lock_path, flush=True)
    sys.stdin.readline()
    print("RELEASING", flush=True)
"""
#: Guards against a hung holder only (a loaded 2-core machine takes seconds to import torch);
#: no test asserts how long anything takes.
LINE_TIMEOUT = 120.0


@dataclass
class Holder:
    """A subprocess holding (or waiting for) a lease, with its stdout lines in a queue."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    def next_line(self) -> str:
        """The next stdout line, waiting for it (the deadline only guards against a hang)."""
        try:
            return self.lines.get(timeout=LINE_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"holder {self.process.pid} printed nothing in {LINE_TIMEOUT} s")

    def expect(self, kind: str) -> str:
        """Next stdout line other than POLL, which must start with `kind`; returns the rest."""
        line = self.next_line()
        while line.startswith("POLL ") and kind != "POLL":
            line = self.next_line()
        head, _, rest = line.partition(" ")
        assert head == kind, f"expected {kind}, got {line!r}"
        return rest

    def leased(self) -> tuple[str, str]:
        """Wait for the LEASED line; returns the device and the lock path."""
        device, lock_path = self.expect("LEASED").split(" ", 1)
        return device, lock_path

    def stop(self) -> None:
        """Tell the holder to leave its lease block, and wait until it has exited cleanly."""
        assert self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        self.expect("RELEASING")
        assert self.process.wait(timeout=LINE_TIMEOUT) == 0


def _pump(holder: Holder) -> None:
    """Copy a holder's stdout lines into its queue (a thread, so reads can time out)."""
    assert holder.process.stdout is not None
    for line in holder.process.stdout:
        holder.lines.put(line.rstrip("\n"))


@pytest.fixture
def start_holder() -> Iterator[Callable[..., Holder]]:
    """Factory for lease-holding subprocesses; any still alive are killed at teardown."""
    started: list[Holder] = []

    def start(
        name: str,
        lock_dir: Path,
        count: int,
        timeout: float | None = None,
        visible: str | None = None,
    ) -> Holder:
        env = {key: value for key, value in os.environ.items() if key != VISIBLE_ENV}
        if visible is not None:
            env[VISIBLE_ENV] = visible
        timeout_arg = "none" if timeout is None else str(timeout)
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, name, str(lock_dir), str(count), timeout_arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        holder = Holder(process)
        holder.reader = threading.Thread(target=_pump, args=(holder,), daemon=True)
        holder.reader.start()
        started.append(holder)
        return holder

    yield start
    for holder in started:
        if holder.process.poll() is None:
            holder.process.kill()
        holder.process.wait()
        if holder.reader is not None:
            holder.reader.join(timeout=LINE_TIMEOUT)  # reads to EOF before the pipe is closed
        for stream in (holder.process.stdin, holder.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test without CUDA_VISIBLE_DEVICES, whatever the machine sets."""
    monkeypatch.delenv(VISIBLE_ENV, raising=False)


def fake(count: int) -> Callable[[], int]:
    """A device_count that reports `count` GPUs."""
    return lambda: count


def test_cpu_auto_and_missing_cuda(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    with gpu_lease("cpu", lock_dir, device_count=fake(2)) as lease:
        assert lease.device == torch.device("cpu")
        assert (lease.slot, lease.lock_path) == (None, None)
        assert lease.description.startswith("cpu")
    with gpu_lease("auto", lock_dir, device_count=fake(0)) as lease:
        assert lease.device == torch.device("cpu")
        assert lease.lock_path is None
    assert not lock_dir.exists()  # no GPU, no lock dir
    for name in ("cuda", "cuda:0"):
        with (
            pytest.raises(RuntimeError, match="CUDA is not available"),
            gpu_lease(name, lock_dir, device_count=fake(0)),
        ):
            pass


def test_auto_with_gpus_leases_like_cuda(tmp_path: Path) -> None:
    with gpu_lease("auto", tmp_path, device_count=fake(2)) as lease:
        assert (lease.device, lease.slot) == (torch.device("cuda", 0), 0)
        assert lease.lock_path == tmp_path / "gpu-0.lock"
        assert lease.description.startswith("cuda:0 (slot 0 of 2, physical GPU 0;")


def test_default_device_count_is_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", fake(0))
    with gpu_lease("auto", tmp_path) as lease:
        assert lease.device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", fake(3))
    with gpu_lease("cuda:2", tmp_path) as lease:
        assert lease.device == torch.device("cuda", 2)


@pytest.mark.parametrize("name", ["gpu", "", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1"])
def test_unknown_names(name: str, tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=rf"unknown device {name!r}.*'cuda:N'"),
        gpu_lease(name, tmp_path, device_count=fake(2)),
    ):
        pass


def test_bad_polling_arguments() -> None:
    with pytest.raises(ValueError, match="poll_seconds"), gpu_lease("cpu", poll_seconds=0):
        pass
    with pytest.raises(ValueError, match="timeout_seconds"), gpu_lease("cpu", timeout_seconds=-1):
        pass


def test_exact_index(tmp_path: Path) -> None:
    with gpu_lease("cuda:1", tmp_path, device_count=fake(2)) as lease:
        assert (lease.device, lease.slot) == (torch.device("cuda", 1), 1)
        assert lease.lock_path == tmp_path / "gpu-1.lock"
        # Slot 1 is taken: cuda:1 waits and times out, while plain cuda takes the free slot 0.
        with (
            pytest.raises(TimeoutError, match=str(tmp_path)),
            gpu_lease(
                "cuda:1", tmp_path, device_count=fake(2), poll_seconds=0.05, timeout_seconds=0.2
            ),
        ):
            pass
        with gpu_lease("cuda", tmp_path, device_count=fake(2), timeout_seconds=0) as other:
            assert other.slot == 0
    with (
        pytest.raises(ValueError, match=r"'cuda:5' but only 2 GPU\(s\) are visible"),
        gpu_lease("cuda:5", tmp_path, device_count=fake(2)),
    ):
        pass


@dataclass
class FakeClock:
    """A monotonic clock that only moves when the lease sleeps; records every sleep."""

    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        assert len(self.sleeps) < 1000, "the lease polls on and on without timing out"


def test_nested_lease_in_one_process_times_out(tmp_path: Path) -> None:
    messages: list[str] = []
    clock = FakeClock()
    with gpu_lease("cuda", tmp_path, device_count=fake(1)) as held:
        assert held.slot == 0
        with (
            pytest.raises(TimeoutError, match=rf"after 0\.5 s: slots \[0\].*lock dir {tmp_path}"),
            gpu_lease(
                "cuda",
                tmp_path,
                device_count=fake(1),
                poll_seconds=0.125,
                timeout_seconds=0.5,
                log=messages.append,
                clock=clock,
                sleep=clock.sleep,
            ),
        ):
            pass
    # It polls every poll_seconds and gives up once timeout_seconds have passed on its clock.
    assert clock.sleeps == [0.125] * 4
    assert len(messages) == 1  # logs the wait once, not on every poll
    assert f"slot 0 (gpu-0.lock, pid {os.getpid()} on {socket.gethostname()}) taken" in messages[0]
    # Released on exit, so the slot is free again at once.
    with gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0) as again:
        assert again.slot == 0


def test_released_on_exception(tmp_path: Path) -> None:
    with pytest.raises(KeyError), gpu_lease("cuda", tmp_path, device_count=fake(1)):
        raise KeyError("job failed")
    with gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0) as lease:
        assert lease.slot == 0


def test_lock_file_holds_pid_and_host(tmp_path: Path) -> None:
    with gpu_lease("cuda", tmp_path, device_count=fake(1)) as lease:
        assert lease.lock_path is not None
        assert lease.lock_path.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert lease.lock_path.read_text() == ""  # cleared before release: no stale holder named


def test_lock_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "from-env"))
    with gpu_lease("cuda", device_count=fake(1)) as lease:
        assert lease.lock_path == tmp_path / "from-env" / "gpu-0.lock"
    monkeypatch.delenv(LOCK_DIR_ENV)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with gpu_lease("cuda", device_count=fake(1)) as lease:
        per_user = tmp_path / f"unitablation-gpu-locks-{os.getuid()}"
        assert lease.lock_path == per_user / "gpu-0.lock"
        assert per_user.stat().st_mode & 0o777 == 0o700


def test_visible_devices_name_the_lock_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(VISIBLE_ENV, "2,3")
    with gpu_lease("cuda", tmp_path, device_count=fake(2)) as first:
        with gpu_lease("cuda", tmp_path, device_count=fake(2)) as second:
            assert (first.device, second.device) == (
                torch.device("cuda", 0),
                torch.device("cuda", 1),
            )
            assert (first.lock_path, second.lock_path) == (
                tmp_path / "gpu-2.lock",
                tmp_path / "gpu-3.lock",
            )
            assert "physical GPU 3 from CUDA_VISIBLE_DEVICES=2,3" in second.description
        # Another job that sees only GPU 2 (as its cuda:0) is blocked by `first`.
        monkeypatch.setenv(VISIBLE_ENV, "2")
        with (
            pytest.raises(TimeoutError),
            gpu_lease(
                "cuda", tmp_path, device_count=fake(1), poll_seconds=0.05, timeout_seconds=0.1
            ),
        ):
            pass


def test_visible_uuids_and_empty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(VISIBLE_ENV, "GPU-ab12, MIG-GPU-cd/1/0")
    with gpu_lease("cuda:1", tmp_path, device_count=fake(2)) as lease:
        assert lease.lock_path == tmp_path / "gpu-MIG-GPU-cd_1_0.lock"
        assert "physical GPU MIG-GPU-cd/1/0" in lease.description
    monkeypatch.setenv(VISIBLE_ENV, "")
    with gpu_lease("auto", tmp_path, device_count=fake(2)) as lease:
        assert lease.device == torch.device("cpu")
    with (
        pytest.raises(RuntimeError, match="CUDA is not available"),
        gpu_lease("cuda", tmp_path, device_count=fake(2)),
    ):
        pass


def test_processes_share_gpus_and_third_waits(
    start_holder: Callable[..., Holder], tmp_path: Path
) -> None:
    first = start_holder("cuda", tmp_path, 2)
    second = start_holder("cuda", tmp_path, 2)
    leases = {first.leased()[0]: first, second.leased()[0]: second}
    assert sorted(leases) == ["cuda:0", "cuda:1"]
    for device, holder in leases.items():
        lock_file = tmp_path / f"gpu-{device[-1]}.lock"
        assert lock_file.read_text().split() == [str(holder.process.pid), socket.gethostname()]

    third = start_holder("cuda", tmp_path, 2)
    message = third.expect("LOG")
    assert "waiting for a GPU lease" in message
    for holder in leases.values():
        assert f"pid {holder.process.pid} " in message
    for _ in range(3):  # three polls go by with both slots still taken, and nothing else
        assert third.next_line() == "POLL 0.05"
    leases["cuda:1"].stop()  # returns once the holder has exited, so slot 1 is free
    assert third.expect("LOG").startswith("got GPU slot 1 after ")
    device, _ = third.leased()
    assert device == "cuda:1"
    third.stop()
    leases["cuda:0"].stop()


def test_lease_dies_with_a_killed_process(
    start_holder: Callable[..., Holder], tmp_path: Path
) -> None:
    holder = start_holder("cuda", tmp_path, 1)
    assert holder.leased()[0] == "cuda:0"
    with (
        pytest.raises(TimeoutError),
        gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0),
    ):
        pass
    holder.process.send_signal(signal.SIGKILL)
    assert holder.process.wait(timeout=LINE_TIMEOUT) == -signal.SIGKILL
    with gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0) as lease:
        assert lease.slot == 0


def test_disjoint_visible_devices_do_not_block(
    start_holder: Callable[..., Holder], tmp_path: Path
) -> None:
    on_two = start_holder("cuda", tmp_path, 1, timeout=0, visible="2")
    on_three = start_holder("cuda", tmp_path, 1, timeout=0, visible="3")
    device_two, lock_two = on_two.leased()
    device_three, lock_three = on_three.leased()
    assert (device_two, device_three) == ("cuda:0", "cuda:0")
    assert (lock_two, lock_three) == (str(tmp_path / "gpu-2.lock"), str(tmp_path / "gpu-3.lock"))
    on_two.stop()
    on_three.stop()


def test_simulated_gate_holds_the_slot_until_go(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(SIMULATED_GPUS_ENV, "1")
    monkeypatch.setenv(SIMULATED_GATE_ENV, str(gate))
    (gate / f"{os.getpid()}.go").touch()  # a stale go file from an earlier process is removed
    polls: list[float] = []
    announced = gate / f"{os.getpid()}.held"

    def sleep(seconds: float) -> None:
        """At the gate: the slot is announced and still held; the second poll lets it go."""
        polls.append(seconds)
        assert announced.read_text() == "0\n"
        with (
            pytest.raises(TimeoutError),
            gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0),
        ):
            pass
        if len(polls) == 2:
            (gate / f"{os.getpid()}.go").touch()

    with gpu_lease("cuda", tmp_path, sleep=sleep) as lease:
        assert (lease.device, lease.slot) == (torch.device("cpu"), 0)
        assert "simulated by UNITABLATION_SIMULATED_GPUS=1" in lease.description
    assert len(polls) == 2
    monkeypatch.delenv(SIMULATED_GPUS_ENV)
    with gpu_lease("cuda", tmp_path, device_count=fake(1), timeout_seconds=0) as again:
        assert again.slot == 0  # released after the gate opened
