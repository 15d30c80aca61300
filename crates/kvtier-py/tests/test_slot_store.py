"""kvtier.SlotStore from Python: the API vLLM's tier class is built on."""

import threading
import time

import numpy as np
import pytest

import kvtier
from kvtier import Lookup, SlotStore

from conftest import BLOCK, fill


def open_store(buf, directory, capacity=16, **kw):
    kw.setdefault("model_id", "test-model")
    return SlotStore(buf, directory, capacity, **kw)


def wait_all(store, timeout=30.0):
    assert store.drain(timeout)
    return store.take_finished()


def test_store_lookup_load_byte_exact(primary, tier_dir):
    store = open_store(primary, tier_dir)
    assert store.slot_bytes == BLOCK and store.capacity == 16
    pages = [fill(primary, i, i) for i in range(4)]
    keys = [b"key-%d" % i for i in range(4)]
    assert store.submit_store(1, keys, [0, 1, 2, 3]) == 4
    [done] = wait_all(store)
    assert (done.job_id, done.kind, done.success) == (1, "store", True)
    assert done.transfer_bytes == 4 * BLOCK
    assert store.lookup_many(keys) == [Lookup.HIT] * 4
    assert store.lookup(b"other") == Lookup.MISS
    store.submit_load(2, keys, np.array([10, 11, 12, 13]))
    [done] = wait_all(store)
    assert done.success and done.kind == "load"
    for i in range(4):
        assert primary[10 + i].tobytes() == pages[i]
    assert sorted(store.stored_keys()) == sorted(store.key_hash(k) for k in keys)
    events = store.take_events()
    assert [(e.removed, e.medium, len(e.hashes)) for e in events] == [(False, "G3", 4)]
    m = store.metrics()
    assert m["keys_stored"] == 4 and m["keys_loaded"] == 4 and m["disk_corrupt"] == 0


def test_retry_while_store_in_flight(tier_dir):
    buf = np.ones((16, 1 << 20), dtype=np.uint8)
    store = open_store(buf, tier_dir, capacity=32)
    keys = [b"big-%d" % i for i in range(16)]
    store.submit_store(1, keys, list(range(16)))
    # 16 MiB cannot be written within the microseconds before this lookup
    assert store.lookup(keys[-1]) == Lookup.RETRY
    assert store.has_pending_work()
    wait_all(store)
    assert store.lookup(keys[-1]) == Lookup.HIT
    assert not store.has_pending_work()


def test_eviction_when_full_and_pins_hold(primary, tier_dir):
    store = open_store(primary, tier_dir, capacity=4)
    keys = [b"k%d" % i for i in range(4)]
    for i in range(4):
        fill(primary, i, i)
    store.submit_store(1, keys, [0, 1, 2, 3])
    wait_all(store)
    store.take_events()
    result, lease = store.lookup_pin(keys[0])  # the least recently used, pinned
    assert result == Lookup.HIT and lease.pinned == [True]
    store.submit_store(2, [b"n0", b"n1"], [4, 5])
    [done] = wait_all(store)
    assert done.success
    assert store.lookup(keys[0]) == Lookup.HIT
    assert [store.lookup(k) for k in keys[1:3]] == [Lookup.MISS, Lookup.MISS]
    removed = [h for e in store.take_events() if e.removed for h in e.hashes]
    assert sorted(removed) == sorted(store.key_hash(k) for k in keys[1:3])
    lease.release()
    with pytest.raises(kvtier.OutOfBlocksError):
        store.submit_store(3, [b"x%d" % i for i in range(5)], [0, 1, 2, 3, 4])


def test_failed_load_reports_failure_and_leaves_no_wrong_bytes(primary, tier_dir):
    store = open_store(primary, tier_dir)
    page = fill(primary, 0, 7)
    store.submit_store(1, [b"present"], [0])
    wait_all(store)
    primary[20:22] = 0xAB
    store.submit_load(2, [b"present", b"absent"], [20, 21])
    [done] = wait_all(store)
    assert not done.success
    assert done.succeeded == [store.key_hash(b"present")]
    assert done.failed == [store.key_hash(b"absent")]
    assert primary[20].tobytes() == page
    assert set(primary[21].tobytes()) <= {0xAB, 0}


def test_corrupt_page_is_a_failed_key_never_wrong_bytes(primary, tier_dir):
    store = open_store(primary, tier_dir, capacity=8)
    for i in range(4):
        fill(primary, i, 100 + i)
    keys = [b"c%d" % i for i in range(4)]
    store.submit_store(1, keys, [0, 1, 2, 3])
    wait_all(store)
    store.shutdown()
    del store
    slab = f"{tier_dir}/slab-00000.kvt"
    data = bytearray(open(slab, "rb").read())
    for off in range(0, len(data), BLOCK):
        data[off + 17] ^= 0xFF
    open(slab, "wb").write(bytes(data))
    store = open_store(primary, tier_dir, capacity=8)
    primary[24:28] = 0xCD
    store.submit_load(2, keys, [24, 25, 26, 27])
    [done] = wait_all(store)
    assert not done.success and len(done.failed) == 4
    for slot in range(24, 28):
        assert set(primary[slot].tobytes()) <= {0xCD, 0}, "unverified bytes in the primary buffer"
    assert store.lookup_many(keys) == [Lookup.MISS] * 4
    assert store.metrics()["disk_corrupt"] == 4


def test_warm_restart_keeps_pages(primary, tier_dir):
    pages = {}
    with open_store(primary, tier_dir) as store:
        for i in range(3):
            pages[b"w%d" % i] = fill(primary, i, 50 + i)
        store.submit_store(1, list(pages), [0, 1, 2])
        wait_all(store)
    primary[:] = 0
    store = open_store(primary, tier_dir)
    assert store.metrics()["disk_recovered"] == 3
    assert sorted(store.stored_keys()) == sorted(store.key_hash(k) for k in pages)
    store.submit_load(2, list(pages), [5, 6, 7])
    [done] = wait_all(store)
    assert done.success
    for i, page in enumerate(pages.values()):
        assert primary[5 + i].tobytes() == page


def test_another_fingerprint_serves_none(primary, tier_dir):
    with open_store(primary, tier_dir) as store:
        fill(primary, 0, 1)
        store.submit_store(1, [b"fp"], [0])
        wait_all(store)
    with pytest.raises(kvtier.FingerprintError, match="model_id"):
        open_store(primary, tier_dir, model_id="another-model")
    other = open_store(primary, tier_dir, model_id="another-model", wipe_on_mismatch=True)
    assert other.lookup(b"fp") == Lookup.MISS
    assert other.stored_keys() == []


def test_tenants_never_see_each_other(primary, tier_dir):
    with open_store(primary, tier_dir, tenant_salt=b"tenant-a") as a:
        fill(primary, 0, 3)
        a.submit_store(1, [b"system-prompt"], [0])
        wait_all(a)
        assert a.lookup(b"system-prompt") == Lookup.HIT
    b = open_store(primary, tier_dir, tenant_salt=b"tenant-b")
    assert b.lookup(b"system-prompt") == Lookup.MISS
    assert b.key_hash(b"system-prompt") != SlotStore.key_hash(b, b"x")


def test_bad_arguments_raise_and_never_crash(primary, tier_dir):
    store = open_store(primary, tier_dir)
    with pytest.raises(kvtier.ConfigError):
        store.submit_store(1, [b"a"], [32])  # slot out of range
    with pytest.raises(kvtier.ConfigError):
        store.submit_store(1, [b"a", b"b"], [0])  # one slot for two keys
    with pytest.raises(kvtier.ConfigError):
        store.submit_load(1, [b"a", b"b"], [3, 3])  # same destination twice
    with pytest.raises(TypeError):
        store.submit_store(1, ["not bytes"], [0])
    with pytest.raises(TypeError):
        store.lookup(42)
    with pytest.raises(OverflowError):
        store.submit_store(1, [b"a"], [-1])
    with pytest.raises(ValueError):
        store.drain(-1.0)
    with pytest.raises(ValueError):
        SlotStore(np.zeros(1000, np.uint8), tier_dir + "2", 4, slot_bytes=300)  # not whole blocks
    with pytest.raises(ValueError):
        SlotStore(np.zeros((8, 4096), np.uint8)[:, ::2], tier_dir + "3", 4)  # not contiguous
    with pytest.raises(TypeError):
        SlotStore(object(), tier_dir + "4", 4)  # no buffer protocol
    with pytest.raises(kvtier.ConfigError):
        SlotStore(np.zeros((4, 4096), np.uint8), tier_dir + "5", 0, model_id="m")  # no capacity
    with pytest.raises(kvtier.ConfigError):
        SlotStore(np.zeros((4, 4096), np.uint8), tier_dir + "6", 4, io_backend="spdk")
    with pytest.raises(kvtier.ConfigError):
        SlotStore(np.zeros((4, 4095), np.uint8), tier_dir + "7", 4)  # odd block size
    with pytest.raises(kvtier.KvtierError):
        SlotStore(np.zeros((4, 4096), np.uint8), "/proc/no-such-dir/kvtier", 4)
    store.shutdown()
    with pytest.raises(kvtier.ClosedError):
        store.submit_store(2, [b"a"], [0])
    store.shutdown()  # idempotent


def test_read_only_buffer_stores_but_cannot_be_loaded_into(tmp_path):
    data = np.arange(4 * 4096, dtype=np.uint32).view(np.uint8).reshape(16, 4096).copy()
    ro = memoryview(data.tobytes()).cast("B", (16, 4096))  # bytes: read-only
    store = SlotStore(ro, str(tmp_path / "ro"), 8, model_id="m")
    store.submit_store(1, [b"r"], [0])
    [done] = wait_all(store)
    assert done.success
    store.submit_load(2, [b"r"], [1])
    [done] = wait_all(store)
    assert not done.success


def test_gil_is_released_while_draining(tier_dir):
    buf = np.ones((32, 1 << 20), dtype=np.uint8)
    store = open_store(buf, tier_dir, capacity=64)
    ticks = 0
    stop = False

    def spin():
        nonlocal ticks
        while not stop:
            ticks += 1
            time.sleep(0.0005)

    t = threading.Thread(target=spin)
    t.start()
    store.submit_store(1, [b"g%d" % i for i in range(32)], list(range(32)))
    before = ticks
    store.drain()
    stop = True
    t.join()
    assert store.take_finished()[0].success
    assert ticks > before, "no Python thread ran while drain waited"


def test_psync_backend_and_seen_twice_admission(primary, tier_dir):
    store = open_store(primary, tier_dir, io_backend="psync", admission="seen_twice")
    assert store.backend == "psync"
    fill(primary, 0, 9)
    assert store.submit_store(1, [b"once"], [0]) == 0  # first sighting: not written
    assert store.submit_store(2, [b"once"], [0]) == 1  # second: written
    done = wait_all(store)
    assert [r.success for r in done] == [True, True]
    assert store.lookup(b"once") == Lookup.HIT
    assert store.metrics()["keys_not_admitted"] == 1
