"""Type stubs of kvtier's native module (see ``kvtier/__init__.py``)."""

import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar

from typing_extensions import Buffer

__version__: str

class KvtierError(Exception):
    """Base class of every kvtier error."""

class ConfigError(KvtierError):
    """An argument or configuration value is out of range or unknown."""

class FingerprintError(KvtierError):
    """The directory was written for another model, layout or geometry: never served."""

class StorageError(KvtierError):
    """An IO operation failed, the device is full, or a path is not trusted."""

class OutOfBlocksError(KvtierError):
    """More blocks were asked for than the tier can ever hold."""

class ClosedError(KvtierError):
    """The store was shut down."""

class Lookup:
    """The answer of ``SlotStore.lookup`` (hashable, comparable, ``int()`` gives 0, 1, 2)."""

    HIT: ClassVar[Lookup]
    """Stored and ready to load."""
    MISS: ClassVar[Lookup]
    """Not stored."""
    RETRY: ClassVar[Lookup]
    """Being stored: ask again later."""
    def __int__(self) -> int: ...

class LoadLease:
    """Pins on stored blocks: they are not evicted until released (or garbage-collected)."""

    @property
    def pinned(self) -> list[bool]:
        """Whether each key was found and is pinned, in order."""
    def release(self) -> None:
        """Unpins now (idempotent)."""

class JobResult:
    """The outcome of one job."""

    job_id: int
    kind: str
    """``"store"`` or ``"load"``."""
    success: bool
    """Whether every key succeeded."""
    succeeded: list[int]
    """Hashes of the keys loaded (loads) or written (stores)."""
    failed: list[int]
    """Hashes of the keys that failed (absent, failed verification, IO error, cancelled)."""
    refused: list[int]
    """Hashes of keys a store could not place now (every slot pinned): retry later."""
    transfer_time: float
    """Seconds from submission to completion."""
    transfer_bytes: int

class TierEvent:
    """Blocks stored in or removed from the tier."""

    removed: bool
    medium: str
    """``"G3"``: the SSD tier (vLLM's ``Medium.STORAGE``)."""
    hashes: list[int]

class SlotStore:
    """kvtier's SSD tier over a KV buffer the caller owns.

    ``buffer`` is any C-contiguous object with the buffer protocol; slot ``i`` is bytes
    ``[i * slot_bytes, (i + 1) * slot_bytes)`` (``slot_bytes`` defaults to the first stride).
    IO threads read and fill it in place: a slot named in a job must not be touched until the
    job is reported by ``take_finished``.
    """

    def __init__(
        self,
        buffer: Buffer,
        directory: str | os.PathLike[str],
        capacity_blocks: int,
        *,
        slot_bytes: int | None = None,
        model_id: str = "",
        tenant_salt: bytes = b"",
        io_backend: str = "auto",
        workers: int = 2,
        wipe_on_mismatch: bool = False,
        slots_per_file: int = 256,
        direct_io: bool = True,
        admission: str = "all",
        write_budget_bytes_per_s: int | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
        queue_depth: int = 32,
        read_chunk_bytes: int = 64 << 20,
        max_batch_bytes: int = 64 << 20,
        remote_url: str | None = None,
        remote_ttl_s: float | None = None,
        remote_timeout_ms: int = 250,
        remote_tls_ca_pem: bytes | None = None,
        curve_keys: int = 0,
    ) -> None:
        """``remote_url`` (``redis://[user:password@]host:port[/db]`` or ``rediss://``) adds
        the shared G4 tier on a Valkey/Redis server: stores also go there, loads read what
        this store lacks from it (verified), ``probe_remote`` asks it which keys it holds.
        A server that is down, slow or refusing is a miss, never an exception."""
    def key_hash(self, key: bytes) -> int:
        """The 128-bit hash a key is stored under (XXH3-128 seeded by the tenant salt)."""
    def lookup(self, key: bytes) -> Lookup:
        """HIT, MISS or RETRY (being stored). Pins nothing."""
    def lookup_many(self, keys: Iterable[bytes]) -> list[Lookup]:
        """``lookup`` of each key."""
    def probe_remote(self, keys: Iterable[bytes]) -> list[bool]:
        """Which keys the G4 tier holds, in one round trip (GIL released; waits on the
        network: for a background thread). All False without G4 or while it is down."""
    @property
    def has_remote(self) -> bool:
        """Whether this store has a G4 tier."""
    def lookup_pin(self, key: bytes) -> tuple[Lookup, LoadLease | None]:
        """Looks a key up and pins it on a HIT."""
    def prepare_load(self, keys: Iterable[bytes]) -> LoadLease:
        """Pins the stored blocks of ``keys`` until the lease is released."""
    def touch(self, keys: Iterable[bytes]) -> int:
        """Marks the stored blocks of ``keys`` most recently used; returns how many."""
    def submit_store(self, job_id: int, keys: Iterable[bytes], slots: Sequence[int]) -> int:
        """Queues writing ``slots[i]`` under ``keys[i]``; returns how many keys will be written."""
    def submit_load(
        self,
        job_id: int,
        keys: Iterable[bytes],
        slots: Sequence[int],
        leases: Sequence[LoadLease] | None = None,
    ) -> None:
        """Queues loading ``keys[i]`` into ``slots[i]`` (distinct); releases ``leases``."""
    def take_finished(self) -> list[JobResult]:
        """Results of the jobs finished since the last call."""
    def take_events(self) -> list[TierEvent]:
        """Stored / removed events since the last call."""
    def has_pending_work(self) -> bool:
        """Whether a job is queued or running, or a result waits to be taken."""
    def drain(self, timeout: float | None = None) -> bool:
        """Waits (GIL released) until every job finished; False if ``timeout`` ran out."""
    def stored_keys(self) -> list[int]:
        """Hashes of every block the tier holds."""
    def live_curve(self, capacities: list[int]) -> dict[str, Any] | None:
        """This tier's live hit-rate-vs-capacity estimate (``curve_keys`` > 0), read at
        ``capacities`` blocks: ``points`` [(capacity, hit rate)], ``sample_rate``,
        ``sampled_accesses``, ``tracked_blocks``, ``hot_blocks``. Loads count as hits, new
        stored keys as misses. None when off."""
    def metrics(self) -> dict[str, Any]:
        """Counters and gauges."""
    def shutdown(self) -> None:
        """Stops the IO workers; queued jobs are reported failed. Idempotent."""
    @property
    def slot_bytes(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def backend(self) -> str: ...
    @property
    def direct_io(self) -> bool: ...
    @property
    def directory(self) -> str: ...
    def __enter__(self) -> "SlotStore": ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
