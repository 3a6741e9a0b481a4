"""The prediction log's local write-ahead journal: a prediction is answered only once its row
is on disk here (or in the store), so kill -9 of a worker or of the whole server loses no
answered prediction.

Why a journal and not a synchronous insert: a store round trip per request puts the store's
latency and availability on the request path, which is what the log writer exists to avoid.
Why not an fsync per row: the micro-batcher already groups concurrent requests into one
batch, and that batch is appended and fdatasync'd once before any of its answers leave, the
way PostgreSQL's group commit and Kafka's `acks=all` amortise one flush over many writers
(~0.3 ms on this disk, shared by every row of the batch; bench/RESULTS.md).

Layout: each process appends to its own segment, `journal-<ns>-<pid>.jsonl`, one JSON line
per prediction row or per block of rows (`{"columns": …}`), and holds an exclusive flock on
it while it lives. A segment is deleted once it is closed (rotated) and every row appended to
it is committed to the store. Segments left by a dead process (no lock held) or closed while
the store was down are replayed by `replayable()`; the store's inserts are idempotent on
`prediction_id`, so a row both committed live and replayed is still stored once.

A failed append (disk full, I/O error) truncates the segment back to its last whole line and
raises `JournalError`: the batch is not answered. A torn last line can still be left by a
power cut; readers skip it (those rows were never acknowledged)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "journal-"
LEGACY = "spool-"  # segments of riskloop versions before the journal: replayed the same way


class JournalError(OSError):
    """No durable place for these rows: the caller must not acknowledge them."""


@dataclass
class _Segment:
    path: Path
    pending: int = 0  # rows appended and not yet committed to the store
    closed: bool = False


def fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or deletion in `path` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_lines(path: Path) -> tuple[list[bytes], bool]:
    """A segment's complete lines, and whether a torn (unacknowledged) tail was skipped."""
    data = path.read_bytes()
    whole, _, tail = data.rpartition(b"\n")
    return ([line for line in whole.split(b"\n") if line] if whole else []), bool(tail)


class Journal:
    """Append-only, group-committed segments in `directory` (mode 0700, files 0600)."""

    def __init__(self, directory: Path, max_segment_bytes: int = 64 * 2**20,
                 settled_segment_bytes: int = 2**20) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)  # prediction inputs are personal data
        self.max_segment_bytes = max_segment_bytes
        # an open segment whose rows are all in the store is rotated (so deleted) past this
        # size: in steady state the journal holds about a second of traffic, not 64 MB
        self.settled_segment_bytes = settled_segment_bytes
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._next = 0
        self._fd = -1
        self._size = 0
        self._closed = False

    # ------------------------------------------------------------------ appending
    def append(self, payload: bytes, rows: int) -> int:
        """Write `payload` (whole JSON lines) and fdatasync it; returns the segment number to
        `settle` once those rows are in the store. Raises JournalError if it cannot."""
        with self._lock:
            if self._closed:
                raise JournalError(errno.ESHUTDOWN, "prediction journal is closed")
            if self._fd < 0 or self._size >= self.max_segment_bytes:
                self._open_segment()
            start = self._size
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fdatasync(self._fd)
            except OSError as exc:
                self._undo(start)
                raise JournalError(exc.errno, f"prediction journal: {exc.strerror}") from exc
            self._size = start + len(payload)
            seg = self._next
            self._segments[seg].pending += rows
            return seg

    def _open_segment(self) -> None:
        self._close_segment()
        path = self.directory / f"{PREFIX}{time.time_ns():020d}-{os.getpid()}.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(exc.errno, f"prediction journal: {exc.strerror}") from exc
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "a live process appends here"
        with contextlib.suppress(OSError):  # the segment's own fdatasync holds its data
            fsync_dir(self.directory)
        self._fd, self._size = fd, 0
        self._next += 1
        self._segments[self._next] = _Segment(path)

    def _undo(self, start: int) -> None:
        """Back to the last whole line after a failed write (this also frees the space);
        if even that fails, abandon the segment: readers skip its torn tail."""
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            self._close_segment()

    def _close_segment(self) -> None:
        if self._fd < 0:
            return
        os.close(self._fd)  # releases the flock: the segment becomes replayable
        self._fd = -1
        seg = self._segments[self._next]
        seg.closed = True
        self._delete_if_done(self._next)

    # ------------------------------------------------------------------ settling
    def settle(self, seg: int, rows: int) -> None:
        """`rows` appended to segment `seg` are committed to the store."""
        with self._lock:
            if seg not in self._segments:
                return
            self._segments[seg].pending -= rows
            open_and_settled = seg == self._next and self._fd >= 0
            if open_and_settled and self._segments[seg].pending <= 0:
                if self._size >= self.settled_segment_bytes:
                    self._close_segment()  # deleted: every row in it is in the store
                return
            self._delete_if_done(seg)

    def _delete_if_done(self, seg: int) -> None:
        s = self._segments[seg]
        if s.closed and s.pending <= 0:
            del self._segments[seg]
            s.path.unlink(missing_ok=True)

    def rotate(self) -> None:
        """Close the open segment: later appends go to a new one."""
        with self._lock:
            self._close_segment()

    def segments(self) -> list[Path]:
        """Every segment in the directory, live or not, oldest first."""
        return sorted(self.directory.glob(f"{PREFIX}*.jsonl")) + sorted(
            self.directory.glob(f"{LEGACY}*.jsonl")
        )

    def replayable(self) -> list[Path]:
        """Segments no live process appends to, oldest first (this process's closed ones and
        any left by dead processes). Their rows must be replayed, then `discard`ed; the
        caller rotates first if the open segment must be included."""
        with self._lock:
            own_open = self._segments[self._next].path if self._fd >= 0 else None
            # ours are forgotten: replaying them settles everything they hold
            self._segments = {k: v for k, v in self._segments.items() if v.path == own_open}
        return [p for p in self.segments() if p != own_open and not _held(p)]

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fsync_dir(self.directory)

    def free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def pending_rows(self) -> int:
        with self._lock:
            return sum(s.pending for s in self._segments.values())

    def close(self) -> None:
        with self._lock:
            self._close_segment()
            self._closed = True


def _held(path: Path) -> bool:
    """True while another open file (a live process's segment) holds the segment's lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # replayed and deleted meanwhile: nothing to do
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
