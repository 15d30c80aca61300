//! `SlotStore` (the runtime-owned-memory tier behind the vLLM package) with a shared G4 tier on
//! a real Valkey/Redis server: what one store writes, another store (another pod, another
//! directory) finds with `probe_remote` and loads, verified.

// `kvtier::external` runs real threads and is left out of `--cfg loom` builds.
#![cfg(not(loom))]

mod common;

use std::sync::Arc;

use common::TestDir;
use common::redis_server::RedisServer;
use kvtier::external::{HeapSlots, SlotStore, SlotStoreConfig};
use kvtier::tier::DiskConfig;
use kvtier::tier::remote::RemoteConfig;

const PAGE: usize = 4096;

fn store(dir: &TestDir, url: &str, salt: &[u8]) -> (SlotStore, Arc<HeapSlots>) {
    let memory = Arc::new(HeapSlots::new(PAGE, 8).unwrap());
    let disk = DiskConfig::new(dir.path()).with_capacity_slots(32).with_model_id("slots-g4");
    let config = SlotStoreConfig::new(disk).with_tenant_salt(salt).with_remote(RemoteConfig::new(url));
    (SlotStore::open(config, memory.clone()).unwrap(), memory)
}

#[test]
fn a_page_stored_by_one_pod_is_found_and_loaded_by_another() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let (dir_a, dir_b) = (TestDir::new("slots-g4-a"), TestDir::new("slots-g4-b"));
    let (a, mem_a) = store(&dir_a, &server.url(), b"t");
    let keys: Vec<_> = (0..4u8).map(|i| a.key_hash(&[i])).collect();
    for i in 0..4 {
        mem_a.set_slot(i, &vec![i as u8 + 1; PAGE]).unwrap();
    }
    a.submit_store(1, &keys, &[0, 1, 2, 3]).unwrap();
    a.drain();
    assert!(a.take_finished()[0].success);
    assert_eq!(a.metrics().keys_stored_g4, 4);

    let (b, mem_b) = store(&dir_b, &server.url(), b"t");
    let absent = b.key_hash(b"never stored");
    assert_eq!(b.probe_remote(&[keys[0], absent, keys[3]]), vec![true, false, true]);
    // b's own SSD tier has none of them: the load reads G4
    let lease = b.prepare_load(&[keys[2], keys[0], absent]);
    assert_eq!(lease.pinned_count(), 0);
    b.submit_load(2, lease, &[5, 6, 7]).unwrap();
    b.drain();
    let result = &b.take_finished()[0];
    assert_eq!(result.succeeded, vec![keys[2], keys[0]]);
    assert_eq!(result.failed, vec![absent]);
    assert_eq!(mem_b.slot(5), Some(vec![3u8; PAGE]));
    assert_eq!(mem_b.slot(6), Some(vec![1u8; PAGE]));
    assert_eq!(mem_b.slot(7), Some(vec![0u8; PAGE]), "a failed key leaves no bytes");
    assert_eq!(b.metrics().keys_loaded_g4, 2);
    assert_eq!(b.remote_metrics().unwrap().get_hits, 2);

    // another tenant sees nothing, even under the same key hash
    let dir_c = TestDir::new("slots-g4-c");
    let (c, _) = store(&dir_c, &server.url(), b"other tenant");
    assert_eq!(c.probe_remote(&keys), vec![false; 4]);
}

#[test]
fn a_corrupted_g4_value_is_a_failed_key_and_a_dead_server_a_miss() {
    let Some(mut server) = RedisServer::start(&[]) else { return };
    let (dir_a, dir_b) = (TestDir::new("slots-g4-d"), TestDir::new("slots-g4-e"));
    let (a, mem_a) = store(&dir_a, &server.url(), b"");
    let key = a.key_hash(b"k");
    mem_a.set_slot(0, &vec![9u8; PAGE]).unwrap();
    a.submit_store(1, &[key], &[0]).unwrap();
    a.drain();
    // flip a byte of the page on the server
    let mut con = server.connection();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("kvtier:g4:*").query(&mut con).unwrap();
    assert_eq!(keys.len(), 1);
    let _: () = redis::cmd("SETRANGE").arg(&keys[0]).arg(100).arg(&[0u8][..]).query(&mut con).unwrap();
    let (b, mem_b) = store(&dir_b, &server.url(), b"");
    assert_eq!(b.probe_remote(&[key]), vec![true]);
    b.submit_load(2, b.prepare_load(&[key]), &[1]).unwrap();
    b.drain();
    assert_eq!(b.take_finished()[0].failed, vec![key]);
    assert_eq!(mem_b.slot(1), Some(vec![0u8; PAGE]));
    assert_eq!(b.remote_metrics().unwrap().get_rejected, 1);
    // the server goes away: probes are misses, loads fail their keys, stores still reach the SSD
    server.kill();
    assert_eq!(b.probe_remote(&[key]), vec![false]);
    mem_b.set_slot(2, &vec![4u8; PAGE]).unwrap();
    let other = b.key_hash(b"other");
    b.submit_store(3, &[other], &[2]).unwrap();
    b.drain();
    assert!(b.take_finished()[0].success, "the SSD write does not depend on G4");
    assert_eq!(b.metrics().keys_stored_g4, 0);
    assert!(!b.remote_metrics().unwrap().up);
}
