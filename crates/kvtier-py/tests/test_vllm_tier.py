"""kvtier.vllm.KvtierTier against vLLM's documented SecondaryTierManager contract
(vllm/v1/kv_offload/tiering/base.py, vLLM 0.33), driven the way its tiering manager drives a
secondary tier: lookup per key, submit_store / submit_load with primary-tier chunk ids, poll
get_finished_jobs every step, take_events, on_request_finished. The primary tier is a numpy
buffer exposed as a memoryview whose first stride is the block size, as vLLM's is."""

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

import kvtier
from kvtier.vllm import HAVE_VLLM, KvtierTier, LookupResult, Medium, model_id_from_spec

from conftest import BLOCK, fill


@dataclass
class ReqContext:
    req_id: str


@dataclass
class TransferJob:
    job_id: int
    keys: list
    chunk_ids: np.ndarray
    is_promotion: bool
    req_context: ReqContext
    submit_time: float = field(default_factory=time.monotonic)


def offload_key(block_hash: bytes, group: int = 0) -> bytes:
    """vLLM's make_offload_key: block hash + big-endian 4-byte group index."""
    return block_hash + group.to_bytes(4, "big")


def spec(model="org/model-a", dtype="bfloat16", events=True):
    cfg = SimpleNamespace(
        model=SimpleNamespace(name=model, dtype=dtype),
        cache=SimpleNamespace(tokens_per_hash=16),
        groups=(SimpleNamespace(tokens_per_block=16, layer_names=("l0", "l1")),),
        parallel=SimpleNamespace(rank=0, tp_size=1, pp_size=1, pcp_size=1, dcp_size=1),
        kv_cache_layout=None,
        canonical_layout=False,
    )
    return SimpleNamespace(config=cfg, kv_events_config=SimpleNamespace(enable_kv_cache_events=events))


def make_tier(primary, directory, **kw):
    kw.setdefault("capacity_gb", 16 * BLOCK / 2**30)  # 16 blocks
    kw.setdefault("enable_kv_events", True)
    s = kw.pop("spec", None) or spec()
    return KvtierTier(s, memoryview(primary), "KvtierTier", directory=directory, **kw)


def poll(tier, timeout=30.0):
    """Polls get_finished_jobs each 'step' until nothing is pending, as the manager does."""
    results = []
    deadline = time.monotonic() + timeout
    while True:
        results.extend(tier.get_finished_jobs())
        if not tier.has_pending_work():
            return {r.job_id: r for r in results}
        assert time.monotonic() < deadline, "jobs never finished"
        time.sleep(0.001)


KEYS = [offload_key(bytes([i]) * 32) for i in range(8)]


def store(tier, primary, job_id, keys, slots, req="r-store"):
    ctx = ReqContext(req)
    tier.submit_store(TransferJob(job_id, keys, np.array(slots, dtype=np.int64), False, ctx))


def test_is_a_vllm_tier_class():
    if HAVE_VLLM:
        from vllm.v1.kv_offload.tiering.base import SecondaryTierManager

        assert issubclass(KvtierTier, SecondaryTierManager)
    assert KvtierTier.medium == Medium.STORAGE
    for method in (
        "lookup", "submit_store", "submit_load", "get_finished_jobs", "has_pending_work", "take_events",
        "touch", "on_new_request", "on_request_finished", "on_schedule_end", "drain_jobs", "shutdown",
    ):
        assert callable(getattr(KvtierTier, method))


def test_store_then_hit_then_load_byte_exact(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    assert tier.block_size_bytes == BLOCK
    pages = [fill(primary, i, i) for i in range(4)]
    ctx = ReqContext("r1")
    tier.on_new_request(ctx)
    assert tier.lookup(KEYS[0], ctx) == LookupResult.MISS
    store(tier, primary, 1, KEYS[:4], [0, 1, 2, 3])
    done = poll(tier)
    assert done[1].success and done[1].transfer_bytes == 4 * BLOCK
    events = list(tier.take_events())
    assert [(e.removed, e.medium, sorted(e.keys)) for e in events] == [(False, Medium.STORAGE, sorted(KEYS[:4]))]
    assert [tier.lookup(k, ctx) for k in KEYS[:4]] == [LookupResult.HIT] * 4
    tier.submit_load(TransferJob(2, KEYS[:4], np.array([20, 21, 22, 23]), True, ctx))
    done = poll(tier)
    assert done[2].success and done[2].successful_keys is None
    for i in range(4):
        assert primary[20 + i].tobytes() == pages[i]
    tier.touch(KEYS[:2], ctx)
    tier.on_request_finished(ctx)
    tier.shutdown()


def test_retry_while_store_in_flight(tmp_path):
    primary = np.ones((16, 1 << 20), dtype=np.uint8)
    tier = make_tier(primary, str(tmp_path / "t"), capacity_gb=32 / 1024)
    keys = [offload_key(bytes([i]) * 32) for i in range(16)]
    store(tier, primary, 1, keys, list(range(16)))
    assert tier.lookup(keys[-1], ReqContext("r")) == LookupResult.RETRY
    assert tier.has_pending_work()
    assert poll(tier)[1].success
    assert tier.lookup(keys[-1], ReqContext("r")) == LookupResult.HIT


def test_eviction_when_full_reports_removed(primary, tier_dir):
    tier = make_tier(primary, tier_dir, capacity_gb=4 * BLOCK / 2**30)
    for i in range(6):
        fill(primary, i, i)
    store(tier, primary, 1, KEYS[:4], [0, 1, 2, 3])
    poll(tier)
    store(tier, primary, 2, KEYS[4:6], [4, 5])
    assert poll(tier)[2].success
    ctx = ReqContext("r")
    hits = [tier.lookup(k, ctx) for k in KEYS[:6]]
    assert hits.count(LookupResult.HIT) == 4 and hits[4:] == [LookupResult.HIT] * 2
    removed = [k for e in tier.take_events() if e.removed for k in e.keys]
    assert sorted(removed) == sorted(k for k, h in zip(KEYS, hits) if h == LookupResult.MISS)
    tier.on_request_finished(ctx)


def test_lookup_hit_is_pinned_until_the_load(primary, tier_dir):
    tier = make_tier(primary, tier_dir, capacity_gb=2 * BLOCK / 2**30)
    page = fill(primary, 0, 42)
    fill(primary, 1, 43)
    store(tier, primary, 1, KEYS[:2], [0, 1])
    poll(tier)
    ctx = ReqContext("pinned")
    assert tier.lookup(KEYS[0], ctx) == LookupResult.HIT
    assert tier.lookup(KEYS[1], ctx) == LookupResult.HIT
    # both blocks pinned: a store of new keys finds no room (and says so), evicting nothing
    store(tier, primary, 2, KEYS[2:3], [2])
    assert not poll(tier)[2].success
    tier.submit_load(TransferJob(3, KEYS[:1], np.array([30]), True, ctx))
    assert poll(tier)[3].success
    assert primary[30].tobytes() == page
    tier.on_request_finished(ctx)  # releases the unused pin on KEYS[1]
    store(tier, primary, 4, KEYS[2:3], [2])
    assert poll(tier)[4].success


def test_partial_failure_names_the_keys_that_loaded(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    page = fill(primary, 0, 5)
    store(tier, primary, 1, KEYS[:1], [0])
    poll(tier)
    primary[10:12] = 0x5A
    ctx = ReqContext("partial")
    tier.submit_load(TransferJob(2, [KEYS[0], KEYS[7]], np.array([10, 11]), True, ctx))
    r = poll(tier)[2]
    assert not r.success and tuple(r.successful_keys) == (KEYS[0],)
    assert primary[10].tobytes() == page
    assert set(primary[11].tobytes()) <= {0x5A, 0}


def test_corrupt_block_fails_its_key_and_never_reaches_the_primary(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    for i in range(3):
        fill(primary, i, 60 + i)
    store(tier, primary, 1, KEYS[:3], [0, 1, 2])
    poll(tier)
    tier.shutdown()
    slab = f"{tier_dir}/slab-00000.kvt"
    data = bytearray(open(slab, "rb").read())
    for off in range(0, len(data), BLOCK):
        data[off + 1000] ^= 0x01
    open(slab, "wb").write(bytes(data))
    tier = make_tier(primary, tier_dir)
    ctx = ReqContext("c")
    assert tier.lookup(KEYS[0], ctx) == LookupResult.HIT  # the record is intact; the data is not
    primary[12:15] = 0x77
    tier.submit_load(TransferJob(2, KEYS[:3], np.array([12, 13, 14]), True, ctx))
    r = poll(tier)[2]
    assert not r.success and not r.successful_keys
    for slot in (12, 13, 14):
        assert set(primary[slot].tobytes()) <= {0x77, 0}
    assert tier.lookup(KEYS[0], ctx) == LookupResult.MISS
    assert tier.metrics()["disk_corrupt"] == 3


def test_warm_restart_with_same_model_serves(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    page = fill(primary, 3, 77)
    store(tier, primary, 1, KEYS[3:4], [3])
    poll(tier)
    tier.shutdown()
    primary[:] = 0
    tier = make_tier(primary, tier_dir)  # "vLLM restarted"
    ctx = ReqContext("again")
    assert tier.lookup(KEYS[3], ctx) == LookupResult.HIT
    tier.submit_load(TransferJob(9, KEYS[3:4], np.array([0]), True, ctx))
    assert poll(tier)[9].success
    assert primary[0].tobytes() == page


def test_another_model_never_serves(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    fill(primary, 0, 1)
    store(tier, primary, 1, KEYS[:1], [0])
    poll(tier)
    tier.shutdown()
    other = spec(model="org/model-b")
    assert model_id_from_spec(other, BLOCK) != model_id_from_spec(spec(), BLOCK)
    with pytest.raises(kvtier.FingerprintError):
        make_tier(primary, tier_dir, spec=other)
    tier = make_tier(primary, tier_dir, spec=other, wipe_on_mismatch=True)
    assert tier.lookup(KEYS[0], ReqContext("b")) == LookupResult.MISS


def test_two_tenants_never_share(primary, tier_dir):
    a = make_tier(primary, tier_dir, tenant_salt="tenant-a")
    fill(primary, 0, 1)
    store(a, primary, 1, KEYS[:1], [0])
    poll(a)
    a.shutdown()
    b = make_tier(primary, tier_dir, tenant_salt="tenant-b")
    assert b.lookup(KEYS[0], ReqContext("b")) == LookupResult.MISS


def test_bad_jobs_are_reported_failed_not_raised(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    ctx = ReqContext("bad")
    tier.submit_store(TransferJob(1, KEYS[:2], np.array([0]), False, ctx))  # one slot, two keys
    tier.submit_load(TransferJob(2, KEYS[:2], np.array([5, 5]), True, ctx))  # same slot twice
    tier.submit_store(TransferJob(3, KEYS[:1], np.array([999]), False, ctx))  # out of range
    done = poll(tier)
    assert {j: r.success for j, r in done.items()} == {1: False, 2: False, 3: False}
    with pytest.raises(TypeError):
        tier.lookup("not-bytes", ctx)
    with pytest.raises(ValueError):
        make_tier(primary, tier_dir + "-x", capacity_gb=0)
    with pytest.raises(TypeError):
        make_tier(primary, tier_dir + "-y", no_such_key=1)


def test_drain_and_shutdown(primary, tier_dir):
    tier = make_tier(primary, tier_dir)
    for i in range(8):
        fill(primary, i, i)
    store(tier, primary, 1, KEYS, list(range(8)))
    tier.drain_jobs()
    assert [r.job_id for r in tier.get_finished_jobs()] == [1]
    assert not tier.has_pending_work()
    tier.on_schedule_end(SimpleNamespace(new_req_ids=(), preempted_req_ids=()))
    tier.shutdown()
    tier.shutdown()


def test_events_off_emits_nothing(primary, tier_dir):
    tier = make_tier(primary, tier_dir, enable_kv_events=False)
    fill(primary, 0, 1)
    store(tier, primary, 1, KEYS[:1], [0])
    poll(tier)
    assert list(tier.take_events()) == []


def test_capacity_curve_counts_loads_as_hits_and_new_stores_as_misses(primary, tier_dir):
    tier = make_tier(primary, tier_dir)  # 16 blocks
    assert tier.capacity_blocks == 16
    for i in range(8):
        fill(primary, i, i)
    store(tier, primary, 1, KEYS[:8], list(range(8)))
    assert poll(tier)[1].success
    ctx = ReqContext("r1")
    assert [tier.lookup(k, ctx) for k in KEYS[:4]] == [LookupResult.HIT] * 4
    tier.submit_load(TransferJob(2, KEYS[:4], np.array([20, 21, 22, 23]), True, ctx))
    assert poll(tier)[2].success
    tier.on_request_finished(ctx)
    curve = tier.capacity_curve()
    assert curve["multiple"] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert curve["blocks"] == [4, 8, 16, 32, 64, 128]
    # 8 misses (stored), then 4 hits each 8 blocks back in LRU order: held from 8 blocks on
    assert curve["hit_ratio"][0] == 0.0
    assert curve["hit_ratio"][1:] == [pytest.approx(4 / 12)] * 5
    assert curve["sample_rate"] == 1.0
    # repeated lookups are not uses: only loads and new stores count
    for _ in range(3):
        assert tier.lookup(KEYS[0], ctx) == LookupResult.HIT
    tier.on_request_finished(ctx)
    assert tier.capacity_curve()["sampled_accesses"] == 12
    tier.shutdown()
    off = make_tier(primary, tier_dir + "-off", live_curve_blocks=0)
    assert off.capacity_curve() is None
    off.shutdown()
