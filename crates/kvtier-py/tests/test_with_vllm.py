"""kvtier under vLLM's own TieringOffloadingManager (vLLM 0.33): its CPU primary tier on a
/dev/shm region, kvtier as the secondary tier, driven through the OffloadingManager calls the
scheduler makes. Skipped where vLLM (and torch) cannot be imported, as in CI."""

import os
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("torch")
manager_mod = pytest.importorskip("vllm.v1.kv_offload.tiering.manager")

from vllm.v1.kv_offload.base import LookupResult, ReqContext, ScheduleEndContext, make_offload_key  # noqa: E402
from vllm.v1.kv_offload.cpu.shared_offload_region import SharedOffloadRegion  # noqa: E402

from kvtier.vllm import KvtierTier  # noqa: E402
from test_vllm_g4 import server  # noqa: E402,F401  (the redis-server fixture)

BLOCK = 64 * 1024
CHUNKS = 8


def step(mgr):
    mgr.on_schedule_end(ScheduleEndContext(new_req_ids=(), preempted_req_ids=()))


def settle(mgr, timeout=30.0):
    deadline = time.monotonic() + timeout
    step(mgr)
    while mgr.has_pending_work():
        assert time.monotonic() < deadline
        time.sleep(0.002)
        step(mgr)


def put(mgr, view, keys, ctx, seed):
    """GPU -> primary as the connector does: prepare_store, fill the chunks, complete_store
    (which cascades the chunks to the secondary tiers)."""
    out = mgr.prepare_store(keys, ctx)
    assert out is not None
    data = {}
    for key, chunk in zip(out.keys_to_store, out.store_spec.block_ids):
        page = np.random.default_rng(seed + int(chunk)).integers(0, 256, BLOCK, dtype=np.uint8)
        np.frombuffer(view, dtype=np.uint8).reshape(-1, BLOCK)[chunk] = page
        data[key] = page.tobytes()
    mgr.complete_store(keys, ctx)
    return data


def promote_and_read(mgr, view, key, ctx):
    """Looks `key` up step by step until the manager's promotion makes it a primary HIT, then
    reads its chunk as the connector would; returns the lookup answers and the bytes."""
    results = [mgr.lookup(key, ctx)]
    deadline = time.monotonic() + 30
    while results[-1] is not LookupResult.HIT:
        assert time.monotonic() < deadline, results
        settle(mgr)
        results.append(mgr.lookup(key, ctx))
    spec_out = mgr.prepare_load([key], ctx)
    chunk = int(spec_out.block_ids[0])
    got = np.frombuffer(view, dtype=np.uint8).reshape(-1, BLOCK)[chunk].tobytes()
    mgr.complete_load([key], ctx)
    return results, got


def instance(tmp_path, name, url=None):
    """vLLM's tiering manager over its CPU primary tier, with kvtier (and G4 at `url`) below."""
    region = SharedOffloadRegion(
        engine_id=f"kvtier-{uuid.uuid4().hex[:8]}", num_chunks=CHUNKS, rank=None,
        kv_bytes_per_chunk=BLOCK, cpu_page_size=BLOCK,
    )
    primary = manager_mod.CPUPrimaryTierOffloadingManager(num_chunks=CHUNKS, mmap_region=region)
    view = primary.get_kv_memoryview()
    spec = type("Spec", (), {"config": None, "kv_events_config": None})()
    g4 = {} if url is None else {"g4_url": url}
    tier = KvtierTier(spec, view, "KvtierTier", directory=str(tmp_path / name), capacity_gb=64 * BLOCK / 2**30, **g4)
    return manager_mod.TieringOffloadingManager(primary, [tier], tier_poll_interval_s=0), view, tier, primary


def test_vllm_tiering_manager_with_kvtier(tmp_path):
    mgr, view, tier, primary = instance(tmp_path, "kvtier")
    try:
        ctx = ReqContext(req_id="r1")
        mgr.on_new_request(ctx)
        keys = [make_offload_key(os.urandom(32), 0) for _ in range(4)]
        data = put(mgr, view, keys, ctx, seed=1)
        settle(mgr)
        assert tier.metrics()["keys_stored"] == 4
        # push them out of the primary tier with other chunks
        filler = [make_offload_key(os.urandom(32), 0) for _ in range(CHUNKS)]
        put(mgr, view, filler, ctx, seed=2)
        settle(mgr)
        assert primary.lookup(keys[0], ctx) == LookupResult.MISS
        # a lookup finds it in kvtier and starts a promotion; it becomes a primary HIT
        results, got = promote_and_read(mgr, view, keys[0], ctx)
        assert results[0] is LookupResult.HIT_PENDING
        assert got == data[keys[0]]
        assert tier.metrics()["keys_loaded"] == 1
        mgr.on_request_finished(ctx)
        settle(mgr)
    finally:
        mgr.shutdown()


def test_two_vllm_instances_share_a_prefix_through_g4(tmp_path, server):
    url = f"redis://127.0.0.1:{server}"
    mgr_a, view_a, tier_a, _ = instance(tmp_path, "a", url)
    mgr_b, view_b, tier_b, _ = instance(tmp_path, "b", url)
    try:
        ctx = ReqContext(req_id="r1")
        mgr_a.on_new_request(ctx)
        keys = [make_offload_key(os.urandom(32), 0) for _ in range(4)]
        data = put(mgr_a, view_a, keys, ctx, seed=1)
        settle(mgr_a)
        assert tier_a.metrics()["keys_stored_g4"] == 4
        # instance B never saw these keys: the G4 lookup is RETRY for a step, then a promotion
        ctx_b = ReqContext(req_id="r2")
        mgr_b.on_new_request(ctx_b)
        results, got = promote_and_read(mgr_b, view_b, keys[0], ctx_b)
        assert results[0] is LookupResult.RETRY and LookupResult.HIT_PENDING in results, results
        assert got == data[keys[0]]
        assert tier_b.metrics()["keys_loaded_g4"] == 1
        mgr_b.on_request_finished(ctx_b)
        settle(mgr_b)
    finally:
        mgr_a.shutdown()
        mgr_b.shutdown()


def test_prometheus_metrics_through_vllm_stats(tmp_path):
    mgr, view, tier, _ = instance(tmp_path, "m")
    try:
        defs = KvtierTier.build_metric_definitions({})
        ctx = ReqContext(req_id="r1")
        mgr.on_new_request(ctx)
        put(mgr, view, [make_offload_key(os.urandom(32), 0) for _ in range(4)], ctx, seed=3)
        settle(mgr)
        stats = mgr.get_stats()  # vLLM's manager merges the tier's stats into its own
        types, values = stats.metric_sections()
        assert values["vllm:kv_offload_kvtier_keys_stored"][()] == 4
        assert values["vllm:kv_offload_kvtier_bytes_stored"][()] == 4 * BLOCK
        assert values["vllm:kv_offload_kvtier_used_blocks"][()] == 4
        assert {k for k in values if "kvtier" in k} <= set(defs)
        assert types["vllm:kv_offload_kvtier_keys_stored"] == "counter"
        # the live capacity curve, one gauge per capacity multiple: 4 new blocks, none loaded
        curve = values["vllm:kv_offload_kvtier_estimated_hit_ratio"]
        assert set(curve) == {("0.25x",), ("0.5x",), ("1x",), ("2x",), ("4x",), ("8x",)}
        assert curve[("1x",)] == 0.0
        # counters go as increases: nothing new stored, no increase reported
        again = tier.get_stats().metric_sections()[1]
        assert "vllm:kv_offload_kvtier_keys_stored" not in again
        assert again["vllm:kv_offload_kvtier_used_blocks"][()] == 4
        mgr.on_request_finished(ctx)
    finally:
        mgr.shutdown()
