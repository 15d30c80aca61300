//! The engine with a shared G4 tier on a real Valkey/Redis server: one engine's prefixes are
//! onboarded by another (in this process and in another process), and a server that is gone
//! never fails the runtime's calls.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pattern;
use common::redis_server::RedisServer;
use kvtier::offload::{Admission, OffloadConfig, OnboardOutcome, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::tier::remote::{Publish, RemoteConfig};
use kvtier::{BlockHash, CacheConfig, Dtype, ExtraKeys, KvLayout};

const BS: u32 = 16;

fn remote(url: &str) -> RemoteConfig {
    RemoteConfig::new(url).with_model_id("g4-test").with_backoff(Duration::from_millis(5), Duration::from_millis(50))
}

fn engine(remote: RemoteConfig, disk: Option<DiskConfig>) -> TieredCache {
    engine_with_workers(remote, disk, 0)
}

fn engine_with_workers(remote: RemoteConfig, disk: Option<DiskConfig>, workers: usize) -> TieredCache {
    engine_sized(remote, disk, workers, 8)
}

fn engine_sized(remote: RemoteConfig, disk: Option<DiskConfig>, workers: usize, g2: usize) -> TieredCache {
    let layout = KvLayout::new(2, 2, 32, Dtype::F16, BS).unwrap();
    let mut config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(g2))
        .with_remote(remote)
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_workers(workers);
    if let Some(d) = disk {
        config = config.with_disk(d).with_admission(Admission::All);
    }
    TieredCache::new(CacheConfig::new(layout, 16).with_watermark(0.0), config).unwrap()
}

fn prompt(i: u32, blocks: u32) -> Vec<u32> {
    (0..blocks * BS + 1).map(|t| i * 100_000 + t).collect()
}

/// Computes a request's KV in G1 (each page the pattern of its hash), then lets G1 give it
/// up (copied down, and published to G4 by the default policy).
fn compute(t: &TieredCache, tokens: &[u32]) -> Vec<BlockHash> {
    let mut core = t.g1().lock();
    let mut hashes = Vec::new();
    core.hash_tokens(tokens, &ExtraKeys::default(), &mut hashes);
    let added = core.add_sequence(tokens, &ExtraKeys::default()).unwrap();
    let table = core.block_table(added.seq).unwrap().to_vec();
    let page = core.layout().page_bytes();
    for (&b, h) in table.iter().zip(&hashes) {
        core.write_page(b, &pattern(*h, page)).unwrap();
    }
    core.commit(added.seq).unwrap();
    core.free(added.seq).unwrap();
    drop(core);
    t.make_room(16).unwrap();
    hashes
}

/// Onboards the prefix of `tokens`, admits it, and checks every page it shares byte for byte.
fn onboard_verified(t: &TieredCache, tokens: &[u32]) -> OnboardOutcome {
    let hashes = compute_hashes(t, tokens);
    let ticket = t.onboard(&hashes).unwrap();
    let outcome = ticket.wait();
    let mut core = t.g1().lock();
    let added = core.add_sequence(tokens, &ExtraKeys::default()).unwrap();
    assert_eq!(added.cached_tokens / BS as usize, outcome.cached_blocks());
    let table = core.block_table(added.seq).unwrap().to_vec();
    for (h, &b) in hashes.iter().zip(&table).take(outcome.cached_blocks()) {
        let page = core.page(b).unwrap();
        assert!(page == pattern(*h, page.len()).as_slice(), "wrong bytes for {h:?}");
    }
    core.free(added.seq).unwrap();
    drop(core);
    drop(ticket);
    outcome
}

#[test]
fn a_prefix_computed_by_one_engine_is_onboarded_by_another() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let a = engine(remote(&server.url()), None);
    let hashes = compute(&a, &prompt(1, 6));
    assert_eq!(a.metrics().engine.to_g4.pages, 6, "{:?}", a.metrics().engine);
    let b = engine(remote(&server.url()), None);
    let hit = b.longest_prefix(&hashes);
    assert_eq!((hit.total, hit.g4), (6, 6));
    let outcome = onboard_verified(&b, &prompt(1, 6));
    assert_eq!((outcome.from_g4, outcome.cached_blocks(), outcome.failed), (6, 6, 0));
    let m = b.metrics();
    assert_eq!(m.engine.g4_to_g1.pages, 6);
    assert_eq!(m.g4.unwrap().get_hits, 6);
    // B got them from G4: giving them up again does not send them back
    b.make_room(16).unwrap();
    assert_eq!(b.metrics().engine.to_g4.pages, 0);
    // another model never sees them
    let c = engine(remote(&server.url()).with_model_id("other-model"), None);
    assert_eq!(c.longest_prefix(&hashes).total, 0);
}

#[test]
fn a_page_evicted_from_g4_after_the_lookup_is_a_failed_block_not_an_error() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let a = engine(remote(&server.url()), None);
    let hashes = compute(&a, &prompt(2, 6));
    let b = engine_with_workers(remote(&server.url()), None, 1);
    // the lookup happens inside onboard, the read in the (paused) worker; page 3 goes away
    // between the two
    let key = kvtier::tier::remote::RemoteTier::open(
        &KvLayout::new(2, 2, 32, Dtype::F16, BS).unwrap(),
        remote(&server.url()),
    )
    .unwrap()
    .key(hashes[3]);
    let ticket = {
        let _paused = b.pause_workers();
        let ticket = b.onboard(&hashes).unwrap();
        let _: () = redis::cmd("DEL").arg(&key).query(&mut server.connection()).unwrap();
        ticket
    };
    let outcome = ticket.wait();
    drop(ticket);
    assert_eq!((outcome.from_g4, outcome.cached_blocks(), outcome.failed), (3, 3, 3), "{outcome:?}");
}

#[test]
fn a_server_that_is_gone_never_fails_the_runtime() {
    let Some(mut server) = RedisServer::start(&[]) else { return };
    let t = engine(remote(&server.url()), None);
    let first = compute(&t, &prompt(3, 4));
    server.kill();
    for i in 0..8 {
        let hashes = compute(&t, &prompt(10 + i, 4));
        let hit = t.longest_prefix(&hashes);
        assert_eq!(hit.g4, 0);
        let outcome = onboard_verified(&t, &prompt(10 + i, 4));
        assert_eq!(outcome.from_g4, 0);
    }
    let m = t.metrics().g4.unwrap();
    assert!(!m.up && m.errors >= 1, "{m:?}");
    // back (empty): publishing resumes
    server.restart();
    std::thread::sleep(Duration::from_millis(60));
    compute(&t, &prompt(99, 4));
    let b = engine(remote(&server.url()), None);
    assert_eq!(b.longest_prefix(&compute_hashes(&t, &prompt(99, 4))).g4, 4);
    assert_eq!(b.longest_prefix(&first).g4, 0, "the restarted server is empty");
}

fn compute_hashes(t: &TieredCache, tokens: &[u32]) -> Vec<BlockHash> {
    let mut hashes = Vec::new();
    t.g1().lock().hash_tokens(tokens, &ExtraKeys::default(), &mut hashes);
    hashes
}

#[test]
fn spill_policy_publishes_only_what_leaves_g2() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let dir = common::TestDir::new("engine-g4-spill");
    let disk = DiskConfig::new(dir.path()).with_model_id("g4-test").with_capacity_slots(64);
    let t = engine_sized(remote(&server.url()).with_publish(Publish::Spill), Some(disk), 0, 64);
    let first = compute(&t, &prompt(4, 4));
    assert_eq!(t.metrics().engine.to_g4.pages, 0, "in G2: not published yet");
    for i in 0..12 {
        compute(&t, &prompt(40 + i, 4));
    }
    // every page that left G2 was written to G3 (admission: all) and published; those still
    // in G2 were not
    let m = t.metrics().engine;
    assert!(m.to_g4.pages >= 4 && m.to_g4.pages == m.g2_to_g3.pages && m.to_g4.pages < m.g1_to_g2.pages, "{m:?}");
    let other = engine(remote(&server.url()), None);
    assert_eq!(other.longest_prefix(&first).g4, 4);
}

/// The other process of [`two_processes_share_a_prefix_through_g4`]: with
/// `KVTIER_G4_CHILD_URL` set, computes prompt 7 and publishes it; without, it has nothing to do.
#[test]
fn child_process_publisher() {
    let Ok(url) = std::env::var("KVTIER_G4_CHILD_URL") else { return };
    let t = engine(remote(&url), None);
    compute(&t, &prompt(7, 5));
    assert_eq!(t.metrics().engine.to_g4.pages, 5);
}

#[test]
fn two_processes_share_a_prefix_through_g4() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_publisher", "--test-threads", "1"])
        .env("KVTIER_G4_CHILD_URL", server.url())
        .status()
        .unwrap();
    assert!(status.success());
    let t = engine(remote(&server.url()), None);
    let outcome = onboard_verified(&t, &prompt(7, 5));
    assert_eq!((outcome.from_g4, outcome.cached_blocks()), (5, 5));
}
