"""kvtier: an SSD tier for LLM KV caches (slab files, io_uring, a checksum on every page,
fingerprinted warm restart), driven from Python over a KV buffer the caller owns.

``SlotStore`` is the tier; ``kvtier.vllm.KvtierTier`` plugs it into vLLM's tiered KV
offloading as a secondary tier (see the package README). Importing kvtier needs neither vLLM
nor torch nor numpy.
"""

from kvtier._kvtier import (
    ClosedError,
    ConfigError,
    FingerprintError,
    JobResult,
    KvtierError,
    LoadLease,
    Lookup,
    OutOfBlocksError,
    SlotStore,
    StorageError,
    TierEvent,
    __version__,
)

__all__ = [
    "ClosedError",
    "ConfigError",
    "FingerprintError",
    "JobResult",
    "KvtierError",
    "LoadLease",
    "Lookup",
    "OutOfBlocksError",
    "SlotStore",
    "StorageError",
    "TierEvent",
    "__version__",
]
