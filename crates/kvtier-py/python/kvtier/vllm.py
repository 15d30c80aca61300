"""kvtier as a secondary storage tier of vLLM's tiered KV offloading (vLLM >= 0.33).

vLLM loads it out of tree from the tier config (no fork, no registration)::

    --kv-transfer-config '{"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
      "kv_connector_extra_config": {"cpu_bytes_to_use": 32000000000,
        "secondary_tiers": [{"type": "KvtierTier", "module_path": "kvtier.vllm",
                             "directory": "/mnt/nvme/kvtier", "capacity_gb": 500}]}}'

(see the package README for every key). The class is a thin layer over
``kvtier.SlotStore``: every method returns without waiting for IO, which runs on kvtier's
threads with the GIL released.

Keys: vLLM's ``OffloadKey`` (the block hash followed by the 4-byte KV-cache group index) is
hashed with XXH3-128, seeded by the tenant salt, into kvtier's 128-bit block hash. The tier
directory's fingerprint is the model id (by default derived from the offloading spec: model
name, dtype, tokens per hash, KV-cache groups, parallel layout, block bytes), so a restarted
vLLM with the same model serves what the last run stored, and another model is refused.

When vLLM (and torch) cannot be imported, ``KvtierTier`` is a plain class with the same
methods, and ``LookupResult``, ``Medium``, ``JobResult``, ``OffloadingEvent`` and
``RequestOffloadingContext`` are stand-ins with vLLM's names and fields, so the tier can be
driven and tested without vLLM.
"""

from __future__ import annotations

import enum
import hashlib
import json
import queue
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from kvtier._kvtier import KvtierError, LoadLease, Lookup, SlotStore

try:  # vLLM's own types when vLLM (and torch) are importable
    from vllm.v1.kv_offload.base import (
        Locality,
        LookupResult,
        Medium,
        OffloadingEvent,
        RequestOffloadingContext,
    )
    from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager

    HAVE_VLLM = True
except Exception:  # noqa: BLE001 - vLLM absent, or present without torch
    HAVE_VLLM = False

    class LookupResult(enum.Enum):  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.base.LookupResult``."""

        MISS = enum.auto()
        HIT = enum.auto()
        HIT_PENDING = enum.auto()
        RETRY = enum.auto()

    class Medium(enum.Enum):  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.base.Medium``."""

        CPU = "CPU"
        STORAGE = "STORAGE"

    class Locality(enum.Enum):  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.base.Locality``."""

        LOCAL = "LOCAL"
        REMOTE = "REMOTE"

    @dataclass
    class OffloadingEvent:  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.base.OffloadingEvent``."""

        keys: list[bytes]
        medium: Medium
        removed: bool
        locality: Locality | None = None
        ownership: str | None = None
        removal_expected: bool = False
        metadata_only: bool = False

    @dataclass
    class RequestOffloadingContext:  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.base.RequestOffloadingContext``."""

        policy: Any = None

    @dataclass
    class JobResult:  # type: ignore[no-redef]
        """Stand-in for ``vllm.v1.kv_offload.tiering.base.JobResult``."""

        job_id: int
        success: bool
        successful_keys: Collection[bytes] | None = None
        transfer_time: float | None = None
        transfer_bytes: int | None = None

    class SecondaryTierManager:  # type: ignore[no-redef]
        """Stand-in for vLLM's ``SecondaryTierManager``: the attributes its constructor sets
        and the defaults of its optional methods."""

        medium: ClassVar[Any] = None

        def __init__(self, offloading_spec, primary_kv_view, tier_type, backpressure_detector=None):
            self._offloading_spec = offloading_spec
            self._primary_kv_view = primary_kv_view
            self._block_size_bytes = primary_kv_view.strides[0]
            self.tier_type = tier_type
            self.locality = None
            self._bp_detector = backpressure_detector

        @property
        def block_size_bytes(self) -> int:
            return self._block_size_bytes

        @property
        def bp_detector(self):
            return self._bp_detector

        def serve_external_requests(self, parent) -> None:
            return

        def get_stats(self):
            return None

        @classmethod
        def build_metric_definitions(cls, extra_config):
            return {}


# Prometheus metrics through vLLM's offloading stats: name -> (SlotStore.metrics() key, help).
_COUNTERS = {
    "vllm:kv_offload_kvtier_lookups": ("lookups", "Lookups asked of the kvtier tier."),
    "vllm:kv_offload_kvtier_lookup_hits": ("lookup_hits", "Lookups the kvtier SSD tier answered HIT."),
    "vllm:kv_offload_kvtier_keys_stored": ("keys_stored", "Blocks written to the kvtier SSD tier."),
    "vllm:kv_offload_kvtier_keys_loaded": ("keys_loaded", "Blocks loaded and verified by the kvtier tier."),
    "vllm:kv_offload_kvtier_keys_load_failed": (
        "keys_load_failed",
        "Blocks whose load failed (absent, corrupt or an IO error); never wrong bytes.",
    ),
    "vllm:kv_offload_kvtier_keys_not_admitted": ("keys_not_admitted", "Blocks the admission filter declined."),
    "vllm:kv_offload_kvtier_keys_over_budget": ("keys_over_budget", "Blocks dropped by the SSD write budget."),
    "vllm:kv_offload_kvtier_keys_store_failed": ("keys_store_failed", "Blocks whose store failed."),
    "vllm:kv_offload_kvtier_bytes_stored": ("bytes_stored", "Bytes written to the kvtier SSD tier."),
    "vllm:kv_offload_kvtier_bytes_loaded": ("bytes_loaded", "Bytes loaded from the kvtier tier."),
    "vllm:kv_offload_kvtier_corrupt_blocks": ("disk_corrupt", "Blocks that failed their checksum on the SSD."),
    "vllm:kv_offload_kvtier_evictions": ("disk_evictions", "Blocks the kvtier SSD tier evicted for room."),
    "vllm:kv_offload_kvtier_g4_keys_stored": ("keys_stored_g4", "Blocks stored in the shared G4 server."),
    "vllm:kv_offload_kvtier_g4_keys_loaded": ("keys_loaded_g4", "Blocks loaded, verified, from the G4 server."),
    "vllm:kv_offload_kvtier_g4_errors": ("g4_errors", "Failed round trips to the G4 server (each a miss)."),
}
_GAUGES = {
    "vllm:kv_offload_kvtier_used_blocks": ("disk_used_blocks", "Blocks the kvtier SSD tier holds."),
    "vllm:kv_offload_kvtier_capacity_blocks": ("disk_capacity_blocks", "Blocks the kvtier SSD tier can hold."),
    "vllm:kv_offload_kvtier_queued_jobs": ("queued_jobs", "kvtier jobs waiting for an IO worker."),
    "vllm:kv_offload_kvtier_g4_up": ("g4_up", "1 if the last G4 round trip reached the server."),
}
# The live capacity curve: one gauge, labelled by capacity as a multiple of this tier's.
_CURVE_GAUGE = "vllm:kv_offload_kvtier_estimated_hit_ratio"
_CURVE_DOC = (
    "Live estimate (kvtier::curve, sampled LRU stack distances): the share of the blocks vLLM loaded"
    " from or stored to this tier that an LRU tier of `capacity` times this one's size would have held."
)
CURVE_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_LOOKUP = {Lookup.HIT: LookupResult.HIT, Lookup.MISS: LookupResult.MISS, Lookup.RETRY: LookupResult.RETRY}


class _RemoteLookups:
    """Non-blocking G4 existence checks for the scheduler thread.

    ``lookup`` answers from what a background thread has learned: True (the server holds the
    key), False (it does not, or could not be asked), or None (not known yet: the key joins
    this step's batch). ``flush`` (once per scheduler step) hands the batch to the thread,
    which asks the server about all of it in one pipelined round trip
    (``SlotStore.probe_remote``, GIL released). An answer is kept while a request that asked
    for it lives, so a request retried next step finds it; ``forget`` drops a finished
    request's interest. Every method but ``close`` runs on the scheduler thread.
    """

    def __init__(self, store: SlotStore, max_keys: int) -> None:
        self._store = store
        self._max_keys = max_keys
        # key -> [answer or None, ids of the requests that asked]
        self._state: dict[bytes, list[Any]] = {}
        # request id -> the keys it asked for (so a finished request costs its own keys only)
        self._keys_of: dict[str, list[bytes]] = {}
        self._batch: list[bytes] = []
        self._in_flight = 0  # keys sent to the thread, not answered yet
        self._todo: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[list[bytes], list[bool]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kvtier-g4-lookup", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (keys := self._todo.get()) is not None:
            try:
                found = self._store.probe_remote(keys)
            except KvtierError:  # the store was shut down: nothing is found any more
                found = [False] * len(keys)
            self._done.put((keys, found))

    def _drain(self) -> None:
        while True:
            try:
                keys, found = self._done.get_nowait()
            except queue.Empty:
                return
            self._in_flight -= len(keys)
            for key, hit in zip(keys, found, strict=True):
                st = self._state.get(key)
                if st is None:
                    continue
                if st[1]:
                    st[0] = hit
                else:
                    del self._state[key]  # nobody waits for it any more

    def lookup(self, key: bytes, req_id: str) -> bool | None:
        self._drain()
        st = self._state.get(key)
        if st is None:
            if len(self._state) >= self._max_keys:
                return False  # too many keys in flight: a miss rather than unbounded state
            st = self._state[key] = [None, set()]
            self._batch.append(key)
        if req_id not in st[1]:
            st[1].add(req_id)
            self._keys_of.setdefault(req_id, []).append(key)
        return st[0]

    def flush(self) -> None:
        self._drain()
        if self._batch:
            self._in_flight += len(self._batch)
            self._todo.put(self._batch)
            self._batch = []

    def mark_missing(self, keys: Iterable[bytes]) -> None:
        """A load of these keys from G4 failed: answer False until their requests finish."""
        for key in keys:
            st = self._state.get(key)
            if st is not None:
                st[0] = False

    def forget(self, req_id: str) -> None:
        for key in self._keys_of.pop(req_id, ()):
            st = self._state.get(key)
            if st is None:
                continue
            st[1].discard(req_id)
            if not st[1] and st[0] is not None:
                del self._state[key]

    def pending(self) -> bool:
        """Whether a flushed batch is still being asked about."""
        self._drain()
        return self._in_flight > 0

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=5.0)


def model_id_from_spec(offloading_spec: Any, block_bytes: int) -> str:
    """The fingerprint's model id for an offloading spec: the model name, then a digest of
    everything that changes the bytes of a block (dtype, tokens per hash, KV-cache groups and
    their layers, parallel layout and rank, block bytes). Falls back to the block size alone
    for a spec without these fields (tests)."""
    config = getattr(offloading_spec, "config", None)
    if config is None:
        return f"unknown-model|block={block_bytes}"
    model = getattr(config, "model", None)
    cache = getattr(config, "cache", None)
    parallel = getattr(config, "parallel", None)
    fields = {
        "dtype": str(getattr(model, "dtype", "")),
        "tokens_per_hash": getattr(cache, "tokens_per_hash", None),
        "groups": [
            [getattr(g, "tokens_per_block", None), list(getattr(g, "layer_names", ()))]
            for g in getattr(config, "groups", ())
        ],
        "parallel": [getattr(parallel, f, None) for f in ("rank", "tp_size", "pp_size", "pcp_size", "dcp_size")],
        "layout": [getattr(config, "kv_cache_layout", None), getattr(config, "canonical_layout", None)],
        "block_bytes": block_bytes,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]
    name = str(getattr(model, "name", "unknown-model"))[:200]
    return f"{name}|{digest}"


class KvtierTier(SecondaryTierManager):
    """vLLM secondary tier backed by kvtier's SSD tier (``kvtier.SlotStore``).

    Tier config keys (besides vLLM's ``type`` = ``"KvtierTier"`` and
    ``module_path`` = ``"kvtier.vllm"``):

    - ``directory`` (required): the tier directory (created 0700; one per model and rank).
    - ``capacity_gb``: SSD space in GiB (default 16); preallocated when the tier opens.
    - ``io_backend``: ``"auto"`` (io_uring, else pread/pwrite threads), ``"uring"``, ``"psync"``.
    - ``admission``: ``"all"`` (default) or ``"seen_twice"`` (write a block the second time
      vLLM offloads it).
    - ``write_budget_mb_s``: cap on SSD writes in MB/s (blocks beyond it are not stored).
    - ``tenant_salt``: string mixed into every key; tenants with different salts never see
      each other's blocks.
    - ``model_id``: overrides the fingerprint derived from the offloading spec.
    - ``workers`` (2), ``direct_io`` (True), ``wipe_on_mismatch`` (False: a directory of
      another model is an error; True: it is wiped), ``enable_kv_events`` (False),
      ``locality``.
    - ``g4_url``: a Valkey/Redis server shared by many vLLM instances
      (``redis://[user:password@]host:port[/db]``, ``rediss://`` for TLS): every block this
      tier stores also goes there, and a block no local SSD holds is looked up and loaded
      from it (every page verified; another model's or tenant's never served). ``g4_ttl_s``
      (none: the server's eviction policy decides), ``g4_timeout_ms`` (250),
      ``g4_tls_ca_file`` (a PEM CA for a private server certificate). A server that is down,
      slow or refusing is a miss, never an error. A lookup of a block that is not on the
      local SSD answers RETRY for the step in which the server is asked (one pipelined round
      trip per scheduler step, on a background thread), then HIT or MISS.
    - ``live_curve_blocks`` (65536; 0 turns it off): blocks tracked by the tier's live
      hit-rate-vs-capacity estimate (about 10 MiB at the default). Every block vLLM loads
      from the tier counts as a hit and every new block it stores as a miss; the estimate says
      what share of them an LRU tier of 1/4 to 8 times this size would have held
      (``capacity_curve()``, and the Prometheus gauge
      ``vllm:kv_offload_kvtier_estimated_hit_ratio{capacity="2x"}``): size the SSD from live
      traffic.
    """

    medium: ClassVar[Any] = Medium.STORAGE

    def __init__(
        self,
        offloading_spec: Any,
        primary_kv_view: memoryview,
        tier_type: str = "KvtierTier",
        backpressure_detector: Any = None,
        *,
        directory: str,
        capacity_gb: float = 16.0,
        io_backend: str = "auto",
        admission: str = "all",
        write_budget_mb_s: float | None = None,
        tenant_salt: str | bytes = b"",
        model_id: str | None = None,
        workers: int = 2,
        direct_io: bool = True,
        wipe_on_mismatch: bool = False,
        enable_kv_events: bool = False,
        locality: str | None = None,
        g4_url: str | None = None,
        g4_ttl_s: float | None = None,
        g4_timeout_ms: int = 250,
        g4_tls_ca_file: str | None = None,
        live_curve_blocks: int = 65536,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality(locality) if locality is not None else None
        block = primary_kv_view.strides[0]
        if not capacity_gb > 0:
            raise ValueError(f"capacity_gb must be positive, got {capacity_gb!r}")
        capacity = int(capacity_gb * (1 << 30)) // block
        if capacity < 1:
            raise ValueError(f"capacity_gb={capacity_gb} holds no block of {block} bytes")
        salt = tenant_salt.encode() if isinstance(tenant_salt, str) else bytes(tenant_salt)
        budget = None if write_budget_mb_s is None else max(1, int(write_budget_mb_s * 1e6))
        self.model_id = model_id if model_id is not None else model_id_from_spec(offloading_spec, block)
        self.store = SlotStore(
            primary_kv_view,
            directory,
            capacity,
            slot_bytes=block,
            model_id=self.model_id,
            tenant_salt=salt,
            io_backend=io_backend,
            workers=workers,
            direct_io=direct_io,
            wipe_on_mismatch=wipe_on_mismatch,
            admission=admission,
            write_budget_bytes_per_s=budget,
            remote_url=g4_url,
            remote_ttl_s=g4_ttl_s,
            remote_timeout_ms=g4_timeout_ms,
            remote_tls_ca_pem=None if g4_tls_ca_file is None else _read(g4_tls_ca_file),
            curve_keys=max(0, int(live_curve_blocks)),
        )
        self.capacity_blocks = capacity
        self._remote = _RemoteLookups(self.store, 4 * capacity + 1024) if g4_url is not None else None
        self._events_on = bool(enable_kv_events)
        kv_events_config = getattr(offloading_spec, "kv_events_config", None)
        if kv_events_config is not None and not getattr(kv_events_config, "enable_kv_cache_events", True):
            self._events_on = False
        # job id -> (is_load, keys); keys map kvtier hashes back to vLLM keys.
        self._jobs: dict[int, tuple[bool, list[bytes]]] = {}
        # Results of jobs refused at submission (reported by the next get_finished_jobs).
        self._refused: list[JobResult] = []
        # request id -> key -> lease pinning a HIT until the load is submitted.
        self._leases: dict[str, dict[bytes, LoadLease]] = {}
        # hash -> key for blocks this process stored or found (events name vLLM keys).
        self._key_of: dict[int, bytes] = {}
        self._key_of_limit = 4 * capacity + 1024
        # metrics() values already reported by get_stats (counters go to vLLM as increases)
        self._reported: dict[str, int] = {}

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, key: bytes, req_context: Any) -> Any:
        """HIT (pinned until this request's load is submitted or it finishes), MISS, or
        RETRY while a store of the key is in flight. With G4, a key the local SSD lacks is
        RETRY until the server has been asked, then HIT (the load reads it from the server)
        or MISS."""
        result, lease = self.store.lookup_pin(key)
        if result is Lookup.MISS and self._remote is not None:
            found = self._remote.lookup(key, req_context.req_id)
            if found is None:
                return LookupResult.RETRY
            if found:
                self._remember(key)
                return LookupResult.HIT
            return LookupResult.MISS
        if lease is not None:
            held = self._leases.setdefault(req_context.req_id, {})
            old = held.pop(key, None)
            if old is not None:
                old.release()
            held[key] = lease
            self._remember(key)
        return _LOOKUP[result]

    def touch(self, keys: Collection[bytes], req_context: Any) -> None:
        self.store.touch(keys)

    # -- jobs ------------------------------------------------------------------------------

    @staticmethod
    def _slots(chunk_ids: Any) -> list[int]:
        tolist = getattr(chunk_ids, "tolist", None)
        return [int(c) for c in (tolist() if tolist is not None else chunk_ids)]

    def submit_store(self, job_metadata: Any) -> None:
        """Queues writing the primary slots ``chunk_ids`` under ``keys``; returns at once."""
        keys = list(job_metadata.keys)
        job_id = job_metadata.job_id
        try:
            self.store.submit_store(job_id, keys, self._slots(job_metadata.chunk_ids))
        except KvtierError:
            self._refused.append(JobResult(job_id=job_id, success=False, transfer_bytes=0))
            return
        self._jobs[job_id] = (False, keys)

    def submit_load(self, job_metadata: Any) -> None:
        """Queues loading ``keys`` into the primary slots ``chunk_ids`` (pinned until done);
        returns at once. Every page is verified; a failed one is a failed key."""
        keys = list(job_metadata.keys)
        job_id = job_metadata.job_id
        held = self._leases.get(job_metadata.req_context.req_id, {})
        leases = [lease for key in keys if (lease := held.pop(key, None)) is not None]
        try:
            self.store.submit_load(job_id, keys, self._slots(job_metadata.chunk_ids), leases)
        except KvtierError:
            for lease in leases:
                lease.release()
            self._refused.append(JobResult(job_id=job_id, success=False, transfer_bytes=0))
            return
        self._jobs[job_id] = (True, keys)

    def get_finished_jobs(self) -> Iterable[Any]:
        results, self._refused = self._refused, []
        for r in self.store.take_finished():
            job = self._jobs.pop(r.job_id, None)
            keys = job[1] if job is not None else []
            successful = None
            if job is not None and job[0] and not r.success:
                loaded = set(r.succeeded)
                if r.succeeded:
                    successful = tuple(k for k in keys if self.store.key_hash(k) in loaded)
                if self._remote is not None:
                    self._remote.mark_missing(k for k in keys if self.store.key_hash(k) not in loaded)
            if job is not None and not job[0] and self._events_on:
                for k in keys:
                    self._remember(k)
            results.append(
                JobResult(
                    job_id=r.job_id,
                    success=r.success,
                    successful_keys=successful,
                    transfer_time=r.transfer_time,
                    transfer_bytes=r.transfer_bytes,
                )
            )
        return results

    def has_pending_work(self) -> bool:
        remote = self._remote is not None and self._remote.pending()
        return bool(self._refused) or remote or self.store.has_pending_work()

    def drain_jobs(self) -> None:
        """Blocks (GIL released) until every submitted job has finished."""
        self.store.drain()

    # -- events ----------------------------------------------------------------------------

    def _remember(self, key: bytes) -> None:
        if not self._events_on:
            return
        if len(self._key_of) >= self._key_of_limit:
            for old in list(self._key_of)[: self._key_of_limit // 4]:
                del self._key_of[old]
        self._key_of[self.store.key_hash(key)] = key

    def take_events(self) -> Iterable[Any]:
        """Stored / removed events for blocks whose vLLM key this process knows (stored or
        looked up since it started)."""
        events = self.store.take_events()
        if not self._events_on:
            return ()
        out = []
        for e in events:
            keys = [k for h in e.hashes if (k := (self._key_of.pop(h, None) if e.removed else self._key_of.get(h)))]
            if keys:
                out.append(OffloadingEvent(keys=keys, medium=Medium.STORAGE, removed=e.removed, locality=self.locality))
        return out

    # -- request lifecycle -----------------------------------------------------------------

    def on_new_request(self, req_context: Any) -> Any:
        return RequestOffloadingContext()

    def on_request_finished(self, req_context: Any) -> None:
        """Releases the pins of this request's HITs that no load used, and its G4 answers."""
        for lease in self._leases.pop(req_context.req_id, {}).values():
            lease.release()
        if self._remote is not None:
            self._remote.forget(req_context.req_id)

    def on_schedule_end(self, context: Any) -> None:
        """Releases the pins of preempted requests; sends this step's G4 lookups."""
        for req_id in getattr(context, "preempted_req_ids", ()):
            for lease in self._leases.pop(req_id, {}).values():
                lease.release()
        if self._remote is not None:
            self._remote.flush()

    def shutdown(self) -> None:
        for held in self._leases.values():
            for lease in held.values():
                lease.release()
        self._leases.clear()
        if self._remote is not None:
            self._remote.close()
        self.store.shutdown()

    # -- metrics ---------------------------------------------------------------------------

    @classmethod
    def build_metric_definitions(cls, extra_config: dict[str, Any]) -> dict[str, Any]:
        """The Prometheus metrics ``get_stats`` reports (counters and gauges of ``metrics()``),
        as vLLM's offloading metric metadata; none without vLLM."""
        if not HAVE_VLLM:
            return {}
        from vllm.v1.kv_offload.base import OffloadingCounterMetadata, OffloadingGaugeMetadata

        defs: dict[str, Any] = {name: OffloadingCounterMetadata(documentation=doc) for name, (_, doc) in _COUNTERS.items()}
        defs.update({name: OffloadingGaugeMetadata(documentation=doc) for name, (_, doc) in _GAUGES.items()})
        defs[_CURVE_GAUGE] = OffloadingGaugeMetadata(documentation=_CURVE_DOC, labelnames=("capacity",))
        return defs

    def capacity_curve(self) -> dict[str, Any] | None:
        """The live hit-rate-vs-capacity estimate at 1/4 to 8 times this tier's capacity:
        ``{"multiple": [...], "blocks": [...], "hit_ratio": [...], "sample_rate",
        "sampled_accesses", "tracked_blocks", "hot_blocks"}``; None with ``live_curve_blocks=0``."""
        blocks = [max(1, int(m * self.capacity_blocks)) for m in CURVE_MULTIPLES]
        reading = self.store.live_curve(blocks)
        if reading is None:
            return None
        out = {k: v for k, v in reading.items() if k != "points"}
        out["multiple"] = list(CURVE_MULTIPLES)
        out["blocks"] = [c for c, _ in reading["points"]]
        out["hit_ratio"] = [h for _, h in reading["points"]]
        return out

    def get_stats(self) -> Any:
        """Counter increases since the last call and current gauges, as vLLM's
        ``OffloadingConnectorStats`` (None without vLLM)."""
        if not HAVE_VLLM:
            return None
        from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import OffloadingConnectorStats

        m = self.store.metrics()
        stats = OffloadingConnectorStats()
        for name, (key, _) in _COUNTERS.items():
            if key in m and (delta := int(m[key]) - self._reported.get(key, 0)) > 0:
                stats.increase_counter(name, delta)
                self._reported[key] = int(m[key])
        for name, (key, _) in _GAUGES.items():
            if key in m:
                stats.set_gauge(name, int(m[key]))
        curve = self.capacity_curve()
        if curve is not None:
            for multiple, ratio in zip(curve["multiple"], curve["hit_ratio"]):
                stats.set_gauge(_CURVE_GAUGE, float(ratio), labelvalues=(f"{multiple:g}x",))
        return stats

    def metrics(self) -> dict[str, Any]:
        """kvtier's counters and gauges (lookups, keys stored/loaded, SSD hits, corrupt pages,
        evictions, recovered blocks, ...)."""
        return self.store.metrics()

    @classmethod
    def config_info_keys(cls, tier_config: dict[str, Any]) -> tuple[str, ...]:
        return ("kvtier_capacity_blocks", "kvtier_io_backend")

    def config_info(self) -> dict[str, Any]:
        return {"kvtier_capacity_blocks": self.store.capacity, "kvtier_io_backend": self.store.backend}


__all__ = ["HAVE_VLLM", "KvtierTier", "model_id_from_spec"]
