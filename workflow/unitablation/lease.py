"""GPU leases: each GPU job flocks one slot file, so concurrent local jobs get distinct devices.

Snakemake's `--resources gpu=N` only caps how many GPU jobs run at once; it assigns no device.
A job therefore takes a lease: a non-blocking `fcntl.flock` on `gpu-<physical id>.lock` in a
lock directory, and the slot index it wins picks the torch device. The kernel drops the lock
when the process exits, even on SIGKILL, so a crashed job never leaves a slot stuck.

An existing CUDA_VISIBLE_DEVICES (SLURM sets it) is respected: torch index i is the i-th entry
of that list, and the entry (the physical id) names the lock file, so jobs that see disjoint
GPUs never block each other while jobs that see the same GPU do. The lock directory must be
node-local (the default under the system temp dir is). A child made by fork inherits the lock's
file descriptor and keeps the slot held until it, too, exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)

LOCK_DIR_ENV = "UNITABLATION_LOCK_DIR"
#: Pretend this many GPUs are visible and run on the CPU: exercises leases and scheduling on a
#: machine without GPUs (tests, dry rehearsals). Never set it for real work.
SIMULATED_GPUS_ENV = "UNITABLATION_SIMULATED_GPUS"
#: With simulated GPUs, a directory through which a test decides how long each lease is held:
#: the holder announces `<pid>.held` (its slot) there and keeps the lease until `<pid>.go` or
#: `open` appears, so a test can make two jobs hold slots at once without timing them.
SIMULATED_GATE_ENV = "UNITABLATION_SIMULATED_GATE_DIR"
#: How often a gated simulated lease looks for its go file (seconds).
GATE_POLL_SECONDS = 0.05
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
DEVICE_FORMS = "'auto', 'cpu', 'cuda' or 'cuda:N'"
_CUDA_INDEX = re.compile(r"cuda:(\d+)")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Lease:
    """The device a job may use, and the slot lock that reserves it (None for cpu)."""

    device: torch.device
    slot: int | None
    lock_path: Path | None
    description: str


@dataclass(frozen=True)
class _Slot:
    """One visible GPU: its torch index, physical id and lock file."""

    index: int
    physical_id: str
    lock_path: Path


def default_lock_dir() -> Path:
    """$UNITABLATION_LOCK_DIR, else a per-user directory under the system temp dir."""
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"unitablation-gpu-locks-{os.getuid()}"


def visible_physical_ids(device_count: Callable[[], int]) -> tuple[list[str], str | None]:
    """Physical ids of the GPUs torch sees (index order), and CUDA_VISIBLE_DEVICES if set."""
    visible = os.environ.get(VISIBLE_ENV)
    if visible is None:
        return [str(index) for index in range(device_count())], None
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not entries:
        return [], visible  # an empty list hides every GPU; no need to ask torch
    # torch never sees more GPUs than the variable lists; it may see fewer (it stops at a bad one).
    return entries[: device_count()], visible


def lock_file_name(physical_id: str) -> str:
    """Lock file name for one physical GPU id; UUID-like ids are sanitised for file names."""
    return f"gpu-{_UNSAFE_FILE_CHARS.sub('_', physical_id)}.lock"


def _parse_device_name(device_name: str) -> tuple[str, int | None]:
    """Split a config device name into its kind ('cpu', 'auto', 'cuda') and requested index."""
    if device_name in ("cpu", "auto", "cuda"):
        return device_name, None
    match = _CUDA_INDEX.fullmatch(device_name)
    if match is None:
        raise ValueError(f"unknown device {device_name!r}; expected {DEVICE_FORMS}")
    return "cuda", int(match.group(1))


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """Open (creating if needed) a lock file; returns the fd and whether it is writable."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        # Another user's file in a shared lock dir: flock works on a read-only fd too.
        return os.open(path, os.O_RDONLY), False


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without blocking; False if another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """What a taken lock file says about its holder ('pid 123 on host'), for the waiting log."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if len(text) >= 2:
        return f"pid {text[0]} on {text[1]}"
    if text:
        return f"pid {text[0]}"
    return "unknown holder"


def _waiting_message(
    slots: Sequence[_Slot], fds: Sequence[int], poll_seconds: float, timeout_seconds: float | None
) -> str:
    """One line saying which slots are taken, by whom, and how the lease will wait."""
    taken = ", ".join(
        f"slot {slot.index} ({slot.lock_path.name}, {_holder(fd)})"
        for slot, fd in zip(slots, fds, strict=True)
    )
    limit = "no timeout" if timeout_seconds is None else f"timeout {timeout_seconds} s"
    return f"waiting for a GPU lease: {taken} taken; polling every {poll_seconds} s, {limit}"


def _acquire(
    slots: Sequence[_Slot],
    lock_dir: Path,
    poll_seconds: float,
    timeout_seconds: float | None,
    log: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[_Slot, int, bool]:
    """Lock the first free slot, polling while all are taken; returns it, its fd and writability."""
    start = clock()
    opened = [_open_lock_file(slot.lock_path) for slot in slots]
    fds = [fd for fd, _ in opened]
    won: int | None = None
    try:
        waiting = False
        while (won := next((i for i, fd in enumerate(fds) if _try_lock(fd)), None)) is None:
            waited = clock() - start
            if timeout_seconds is not None and waited >= timeout_seconds:
                raise TimeoutError(
                    f"no GPU lease after {waited:.1f} s: slots {[slot.index for slot in slots]} "
                    f"stayed taken (lock dir {lock_dir})"
                )
            if not waiting:
                log(_waiting_message(slots, fds, poll_seconds, timeout_seconds))
                waiting = True
            remaining = float("inf") if timeout_seconds is None else timeout_seconds - waited
            sleep(min(poll_seconds, remaining))
        if waiting:
            log(f"got GPU slot {slots[won].index} after {clock() - start:.1f} s")
        return slots[won], *opened[won]
    finally:
        for i, fd in enumerate(fds):
            if i != won:
                os.close(fd)


def _write_holder(fd: int) -> None:
    """Record this process's PID and hostname in the held lock file, for humans debugging."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


def _wait_at_gate(gate: Path, slot: int, sleep: Callable[[float], None]) -> None:
    """Announce a held simulated lease in `gate` and keep it until the test lets it go."""
    pid = os.getpid()
    go, is_open = gate / f"{pid}.go", gate / "open"
    go.unlink(missing_ok=True)  # left by an earlier process with the same pid
    partial = gate / f".{pid}.held.partial"
    partial.write_text(f"{slot}\n")
    partial.replace(gate / f"{pid}.held")  # whole, so a reader never sees it empty
    while not (go.exists() or is_open.exists()):
        sleep(GATE_POLL_SECONDS)


def _release(fd: int, writable: bool) -> None:
    """Clear the holder note while still holding, then unlock and close."""
    try:
        if writable:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def gpu_lease(
    device_name: str,
    lock_dir: str | Path | None = None,
    device_count: Callable[[], int] | None = None,
    poll_seconds: float = 1.0,
    timeout_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Lease]:
    """Hold a device for the block: cpu needs no lock; a GPU is reserved by flocking its slot.

    device_name is the config value: 'cpu'; 'auto' (cpu when no GPU is visible, else as 'cuda');
    'cuda' (the first free visible GPU); 'cuda:N' (exactly visible GPU N, waiting while taken).
    device_count defaults to torch.cuda.device_count and is injectable so tests can fake GPUs.
    While every wanted slot is taken it logs once (default: this module's logger at INFO) and
    polls every poll_seconds; past timeout_seconds it raises TimeoutError. clock and sleep time
    that wait (injectable so tests can count polls instead of watching a wall clock). The lock is
    released when the block exits, on exceptions too, and by the kernel if the process dies.
    Moving tensors to lease.device (and any torch.cuda.set_device) is the caller's job.
    """
    kind, requested = _parse_device_name(device_name)
    if poll_seconds <= 0:
        raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
    if timeout_seconds is not None and timeout_seconds < 0:
        raise ValueError(f"timeout_seconds must be >= 0 or None, got {timeout_seconds}")
    if kind == "cpu":
        yield Lease(torch.device("cpu"), None, None, "cpu (config device 'cpu'; no GPU lease)")
        return

    simulated = os.environ.get(SIMULATED_GPUS_ENV) if device_count is None else None
    if simulated:
        if not simulated.isdigit():
            raise ValueError(f"{SIMULATED_GPUS_ENV} must be a GPU count, got {simulated!r}")
        counter: Callable[[], int] = lambda: int(simulated)  # noqa: E731
    else:
        counter = torch.cuda.device_count if device_count is None else device_count
    physical_ids, visible = visible_physical_ids(counter)
    if not physical_ids:
        if kind == "auto":
            yield Lease(torch.device("cpu"), None, None, "cpu (config device 'auto'; no GPU)")
            return
        where = "" if visible is None else f" ({VISIBLE_ENV}={visible!r})"
        raise RuntimeError(
            f"config asks for device {device_name!r} but CUDA is not available here{where}"
        )
    if requested is not None and requested >= len(physical_ids):
        raise ValueError(
            f"config asks for device {device_name!r} but only {len(physical_ids)} GPU(s) are "
            f"visible (cuda:0 to cuda:{len(physical_ids) - 1})"
        )

    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    directory.mkdir(mode=0o700 if lock_dir is None else 0o777, parents=True, exist_ok=True)
    slots = [
        _Slot(index, physical_id, directory / lock_file_name(physical_id))
        for index, physical_id in enumerate(physical_ids)
    ]
    wanted = slots if requested is None else [slots[requested]]
    slot, fd, writable = _acquire(
        wanted, directory, poll_seconds, timeout_seconds, log or LOG.info, clock, sleep
    )
    try:
        if writable:
            _write_holder(fd)
        origin = "" if visible is None else f" from {VISIBLE_ENV}={visible}"
        description = (
            f"cuda:{slot.index} (slot {slot.index} of {len(slots)}, physical GPU "
            f"{slot.physical_id}{origin}; lock {slot.lock_path})"
        )
        device = torch.device("cuda", slot.index)
        if simulated:
            device = torch.device("cpu")
            description += f", simulated by {SIMULATED_GPUS_ENV}={simulated}: running on cpu"
        LOG.info(f"GPU lease: slot {slot.index} held from {time.time():.3f}")
        gate = os.environ.get(SIMULATED_GATE_ENV) if simulated else None
        if gate:
            _wait_at_gate(Path(gate), slot.index, sleep)
        yield Lease(device, slot.index, slot.lock_path, description)
    finally:
        LOG.info(f"GPU lease: slot {slot.index} released at {time.time():.3f}")
        _release(fd, writable)
