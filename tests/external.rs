//! `kvtier::external::SlotStore` through its public API: runtime-owned slots to and from the
//! SSD tier, the way vLLM's tiering manager drives a secondary tier.
// `kvtier::external` runs real threads and is left out of `--cfg loom` builds.
#![cfg(not(loom))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kvtier::external::{EventKind, HeapSlots, JobKind, Lookup, SlotMemory, SlotStore, SlotStoreConfig};
use kvtier::io::{BackendKind, IoConfig};
use kvtier::tier::DiskConfig;
use kvtier::{BlockHash, Error, Tier};

const PAGE: usize = 8192;

/// A directory removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("kvtier-slots-{tag}-{}-{n}", std::process::id())))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn disk(dir: &Path, slots: usize) -> DiskConfig {
    DiskConfig::new(dir).with_capacity_slots(slots).with_slots_per_file(8).with_model_id("test-model")
}

fn page(seed: u8) -> Vec<u8> {
    (0..PAGE).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect()
}

fn open(dir: &Path, slots: usize, memory: &Arc<HeapSlots>) -> SlotStore {
    SlotStore::open(SlotStoreConfig::new(disk(dir, slots)), memory.clone()).unwrap()
}

/// Stores slots `0..n` (filled with `page(i)`) under keys `k0..kn`, waits, checks success.
fn store_n(store: &SlotStore, memory: &HeapSlots, n: usize) -> Vec<BlockHash> {
    let keys: Vec<BlockHash> = (0..n).map(|i| store.key_hash(format!("k{i}").as_bytes())).collect();
    for i in 0..n {
        memory.set_slot(i, &page(i as u8)).unwrap();
    }
    let slots: Vec<usize> = (0..n).collect();
    assert_eq!(store.submit_store(100, &keys, &slots).unwrap(), n);
    store.drain();
    let done = store.take_finished();
    assert_eq!(done.len(), 1);
    assert!(done[0].success, "{:?}", done[0]);
    assert_eq!(done[0].succeeded.len(), n);
    keys
}

#[test]
fn store_lookup_load_is_byte_exact_and_reports_events() {
    let dir = TestDir::new("roundtrip");
    let memory = Arc::new(HeapSlots::new(PAGE, 8).unwrap());
    let store = open(dir.path(), 16, &memory);
    let keys = store_n(&store, &memory, 3);
    assert!(keys.iter().all(|k| store.lookup(*k) == Lookup::Hit));
    assert_eq!(store.lookup(store.key_hash(b"other")), Lookup::Miss);
    let events = store.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind, events[0].tier), (EventKind::Stored, Tier::G3));
    let lease = store.prepare_load(&keys);
    assert!(lease.all_pinned());
    store.submit_load(7, lease, &[5, 6, 7]).unwrap();
    assert!(store.drain_for(Duration::from_secs(30)));
    let done = store.take_finished();
    assert_eq!((done[0].job_id, done[0].kind, done[0].success), (7, JobKind::Load, true));
    assert_eq!(done[0].bytes, 3 * PAGE as u64);
    for i in 0..3 {
        assert_eq!(memory.slot(5 + i).unwrap(), page(i as u8));
    }
    // storing the same keys again writes nothing and still reports the job
    assert_eq!(store.submit_store(8, &keys, &[0, 1, 2]).unwrap(), 0);
    let done = store.take_finished();
    assert!(done[0].success && done[0].succeeded.is_empty());
    assert_eq!(store.metrics().keys_already_present, 3);
    store.disk().check_invariants(true).unwrap();
}

/// Memory whose reads wait for a signal, to hold a store job in flight.
#[derive(Debug)]
struct GatedSlots {
    inner: HeapSlots,
    gate: std::sync::Mutex<mpsc::Receiver<()>>,
}

impl SlotMemory for GatedSlots {
    fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes()
    }
    fn slot_count(&self) -> usize {
        self.inner.slot_count()
    }
    fn read_slots(&self, slots: &[usize], f: &mut dyn FnMut(&[&[u8]])) -> kvtier::Result<()> {
        let _ = self.gate.lock().unwrap().recv_timeout(Duration::from_secs(30));
        self.inner.read_slots(slots, f)
    }
    fn write_slots(&self, slots: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) -> kvtier::Result<()> {
        self.inner.write_slots(slots, f)
    }
}

#[test]
fn lookup_says_retry_while_a_store_is_in_flight() {
    let dir = TestDir::new("retry");
    let (open_gate, gate) = mpsc::channel();
    let memory = Arc::new(GatedSlots { inner: HeapSlots::new(PAGE, 4).unwrap(), gate: std::sync::Mutex::new(gate) });
    let store = SlotStore::open(SlotStoreConfig::new(disk(dir.path(), 8)), memory).unwrap();
    let key = store.key_hash(b"slow");
    store.submit_store(1, &[key], &[0]).unwrap();
    assert_eq!(store.lookup(key), Lookup::Retry);
    assert!(store.has_pending_work());
    // a second store of the key while it is in flight is skipped
    assert_eq!(store.submit_store(2, &[key], &[1]).unwrap(), 0);
    open_gate.send(()).unwrap();
    store.drain();
    assert_eq!(store.lookup(key), Lookup::Hit);
    let ids: Vec<u64> = store.take_finished().iter().map(|r| r.job_id).collect();
    assert_eq!(ids.len(), 2);
    assert!(!store.has_pending_work());
}

#[test]
fn full_tier_evicts_lru_but_never_a_pinned_page() {
    let dir = TestDir::new("evict");
    let memory = Arc::new(HeapSlots::new(PAGE, 16).unwrap());
    let store = open(dir.path(), 4, &memory);
    let keys = store_n(&store, &memory, 4);
    store.take_events();
    let lease = store.prepare_load(&keys[..1]); // pins k0, the LRU page
    store.touch(&keys[1..2]); // k1 most recent
    let new: Vec<BlockHash> = (0..2).map(|i| store.key_hash(format!("new{i}").as_bytes())).collect();
    store.submit_store(2, &new, &[8, 9]).unwrap();
    store.drain();
    assert!(store.take_finished()[0].success);
    assert_eq!(store.lookup(keys[0]), Lookup::Hit, "pinned page evicted");
    assert_eq!(store.lookup(keys[1]), Lookup::Hit, "touched page evicted");
    assert_eq!(store.lookup(keys[2]), Lookup::Miss);
    assert_eq!(store.lookup(keys[3]), Lookup::Miss);
    let removed: Vec<BlockHash> =
        store.take_events().into_iter().filter(|e| e.kind == EventKind::Removed).flat_map(|e| e.hashes).collect();
    assert_eq!(removed.len(), 2);
    assert!(removed.contains(&keys[2]) && removed.contains(&keys[3]));
    // more new keys than the capacity can never fit
    let many: Vec<BlockHash> = (0..5).map(|i| store.key_hash(format!("many{i}").as_bytes())).collect();
    let err = store.submit_store(3, &many, &[10, 11, 12, 13, 14]).unwrap_err();
    assert!(matches!(err, Error::NeverFits { requested: 5, capacity: 4 }), "{err}");
    drop(lease);
    store.disk().check_invariants(true).unwrap();
}

#[test]
fn every_slot_pinned_refuses_a_store_as_retryable() {
    let dir = TestDir::new("refuse");
    let memory = Arc::new(HeapSlots::new(PAGE, 8).unwrap());
    let store = open(dir.path(), 2, &memory);
    let keys = store_n(&store, &memory, 2);
    let lease = store.prepare_load(&keys);
    let new = store.key_hash(b"new");
    store.submit_store(2, &[new], &[3]).unwrap();
    store.drain();
    let done = store.take_finished();
    assert!(!done[0].success);
    assert_eq!(done[0].refused, vec![new]);
    drop(lease);
    store.submit_store(3, &[new], &[3]).unwrap();
    store.drain();
    assert!(store.take_finished()[0].success);
}

#[test]
fn warm_restart_keeps_pages_and_lists_them_and_corruption_is_a_failed_key() {
    let dir = TestDir::new("restart");
    let memory = Arc::new(HeapSlots::new(PAGE, 8).unwrap());
    let keys = {
        let store = open(dir.path(), 8, &memory);
        store_n(&store, &memory, 4)
    };
    let store = open(dir.path(), 8, &memory);
    let mut listed = store.stored_keys();
    listed.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let lease = store.prepare_load(&keys[..2]);
    store.submit_load(1, lease, &[6, 7]).unwrap();
    store.drain();
    assert!(store.take_finished()[0].success);
    assert_eq!(memory.slot(6).unwrap(), page(0));
    drop(store);
    // flip one byte in every slot of the first slab file: every page there fails its checksum
    let slab = dir.path().join("slab-00000.kvt");
    let mut bytes = std::fs::read(&slab).unwrap();
    for slot in 0..bytes.len() / PAGE {
        bytes[slot * PAGE + 100] ^= 0xff;
    }
    std::fs::write(&slab, &bytes).unwrap();
    let store = open(dir.path(), 8, &memory);
    memory.set_slot(5, &[0xAA; PAGE]).unwrap();
    let lease = store.prepare_load(&keys[2..3]);
    store.submit_load(2, lease, &[5]).unwrap();
    store.drain();
    let done = store.take_finished();
    assert!(!done[0].success);
    assert_eq!(done[0].failed, vec![keys[2]]);
    let slot = memory.slot(5).unwrap();
    assert!(slot == vec![0u8; PAGE] || slot == vec![0xAA; PAGE], "unverified bytes left in the slot");
    assert_eq!(store.lookup(keys[2]), Lookup::Miss, "a corrupt page stays");
    assert!(store.take_events().iter().any(|e| e.kind == EventKind::Removed && e.hashes == [keys[2]]));
    assert_eq!(store.metrics().disk.corrupt, 1);
}

#[test]
fn another_fingerprint_serves_nothing() {
    let dir = TestDir::new("fingerprint");
    let memory = Arc::new(HeapSlots::new(PAGE, 4).unwrap());
    {
        let store = open(dir.path(), 8, &memory);
        store_n(&store, &memory, 2);
    }
    let other = SlotStoreConfig::new(disk(dir.path(), 8).with_model_id("another-model"));
    let err = SlotStore::open(other.clone(), memory.clone()).unwrap_err();
    assert!(matches!(err, Error::Fingerprint { field: "model_id", .. }), "{err}");
    let mut wiped = other;
    wiped.disk.wipe_on_mismatch = true;
    let store = SlotStore::open(wiped, memory.clone()).unwrap();
    assert!(store.stored_keys().is_empty());
    assert_eq!(store.lookup(store.key_hash(b"k0")), Lookup::Miss);
}

#[test]
fn tenants_never_see_each_others_pages() {
    let dir = TestDir::new("tenants");
    let memory = Arc::new(HeapSlots::new(PAGE, 4).unwrap());
    let key = {
        let config = SlotStoreConfig::new(disk(dir.path(), 8)).with_tenant_salt(b"tenant-a");
        let store = SlotStore::open(config, memory.clone()).unwrap();
        memory.set_slot(0, &page(1)).unwrap();
        let key = store.key_hash(b"shared prompt");
        store.submit_store(1, &[key], &[0]).unwrap();
        store.drain();
        assert_eq!(store.lookup(key), Lookup::Hit);
        key
    };
    let config = SlotStoreConfig::new(disk(dir.path(), 8)).with_tenant_salt(b"tenant-b");
    let store = SlotStore::open(config, memory.clone()).unwrap();
    assert_ne!(store.key_hash(b"shared prompt"), key);
    assert_eq!(store.lookup(store.key_hash(b"shared prompt")), Lookup::Miss);
}

#[test]
fn bad_arguments_are_errors_and_shutdown_cancels() {
    let dir = TestDir::new("args");
    let memory = Arc::new(HeapSlots::new(PAGE, 4).unwrap());
    let config =
        SlotStoreConfig::new(disk(dir.path(), 8).with_io(IoConfig::default().with_backend(BackendKind::Psync)));
    let store = SlotStore::open(config, memory.clone()).unwrap();
    let k = store.key_hash(b"a");
    assert!(matches!(store.submit_store(1, &[k], &[4]), Err(Error::OutOfRange { field: "slot", .. })));
    assert!(matches!(store.submit_store(1, &[k], &[0, 1]), Err(Error::OutOfRange { field: "slots", .. })));
    let lease = store.prepare_load(&[k, k]);
    assert!(!lease.is_pinned(0));
    assert!(matches!(store.submit_load(1, lease, &[1, 1]), Err(Error::OutOfRange { field: "slots", .. })));
    // a load of an absent key is a failed key, not an error
    store.submit_load(2, store.prepare_load(&[k]), &[0]).unwrap();
    store.drain();
    let done = store.take_finished();
    assert_eq!((done[0].success, done[0].failed.len()), (false, 1));
    // odd slot sizes cannot be pages
    let odd = Arc::new(HeapSlots::new(4095, 2).unwrap());
    assert!(SlotStore::open(SlotStoreConfig::new(disk(TestDir::new("odd").path(), 8)), odd).is_err());
    store.shutdown();
    assert!(matches!(store.submit_store(3, &[k], &[0]), Err(Error::Closed)));
    store.shutdown();
    store.disk().check_invariants(true).unwrap();
}

#[test]
fn queued_jobs_run_in_batches_without_merging_loads_into_one_slot() {
    let dir = TestDir::new("batch");
    let memory = Arc::new(HeapSlots::new(PAGE, 64).unwrap());
    let config = SlotStoreConfig::new(disk(dir.path(), 64)).with_workers(1).with_max_batch_bytes(8 * PAGE);
    let store = SlotStore::open(config, memory.clone()).unwrap();
    let keys: Vec<BlockHash> = (0..32).map(|i| store.key_hash(format!("b{i}").as_bytes())).collect();
    for i in 0..32 {
        memory.set_slot(i, &page(i as u8)).unwrap();
    }
    for (j, chunk) in keys.chunks(4).enumerate() {
        let slots: Vec<usize> = (j * 4..j * 4 + 4).collect();
        store.submit_store(j as u64, chunk, &slots).unwrap();
    }
    store.drain();
    let done = store.take_finished();
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|r| r.success && r.succeeded.len() == 4));
    // eight one-page loads into the same slot: never one batch, so they land in order
    for (j, key) in keys.iter().take(8).enumerate() {
        store.submit_load(100 + j as u64, store.prepare_load(&[*key]), &[40]).unwrap();
    }
    store.drain();
    let done = store.take_finished();
    assert_eq!(done.iter().map(|r| r.job_id).collect::<Vec<_>>(), (100..108).collect::<Vec<_>>());
    assert!(done.iter().all(|r| r.success));
    assert_eq!(memory.slot(40).unwrap(), page(7));
    store.disk().check_invariants(true).unwrap();
}

#[test]
fn the_live_curve_counts_loads_as_hits_and_new_stored_keys_as_misses() {
    let dir = TestDir::new("curve");
    let memory = Arc::new(HeapSlots::new(PAGE, 16).unwrap());
    let config = SlotStoreConfig::new(disk(dir.path(), 16)).with_curve_keys(4096);
    let store = SlotStore::open(config, memory.clone()).unwrap();
    // 10 keys stored (misses), then the first 5 loaded (hits), twice over: a key loaded again
    // right after its last use needs only 5 blocks of LRU, the first loads need 10
    let keys = store_n(&store, &memory, 10);
    for round in 0..2 {
        let lease = store.prepare_load(&keys[..5]);
        assert!(lease.all_pinned());
        store.submit_load(200 + round, lease, &[10, 11, 12, 13, 14]).unwrap();
        store.drain();
        assert!(store.take_finished().iter().all(|r| r.success));
    }
    // the same keys stored again are already present: not a use the curve sees
    assert_eq!(store.submit_store(300, &keys[..3], &[0, 1, 2]).unwrap(), 0);
    let r = store.live_curve(&[4, 5, 9, 10, 100]).expect("on");
    let total = 10.0 + 5.0 + 5.0;
    assert_eq!(r.at(4), Some(0.0));
    assert!((r.at(5).unwrap() - 5.0 / total).abs() < 1e-9, "{r:?}");
    assert!((r.at(9).unwrap() - 5.0 / total).abs() < 1e-9, "{r:?}");
    assert!((r.at(10).unwrap() - 10.0 / total).abs() < 1e-9, "{r:?}");
    assert!((r.at(100).unwrap() - 10.0 / total).abs() < 1e-9, "{r:?}");
    assert_eq!(r.sample_rate, 1.0);
    // off unless asked for
    let other = TestDir::new("curve-off");
    assert!(open(other.path(), 4, &memory).live_curve(&[4]).is_none());
}
