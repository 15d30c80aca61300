//! The G4 tier against a real Valkey/Redis server (started per test on a free port; see
//! `common/redis_server.rs`): bytes round trip, verification, isolation, and failure as a miss.

mod common;

use std::time::{Duration, Instant};

use common::pattern;
use common::redis_server::RedisServer;
use kvtier::tier::remote::{HEADER_BYTES, RemoteConfig, RemoteTier};
use kvtier::{BlockHash, Dtype, KvLayout};

fn layout() -> KvLayout {
    // 2 layers x 2 heads x 16 dims x f16 x 16 tokens x K,V = 4 KiB pages
    KvLayout::new(2, 2, 16, Dtype::F16, 16).unwrap()
}

fn config(server: &RedisServer) -> RemoteConfig {
    RemoteConfig::new(server.url())
        .with_model_id("test-model")
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
}

fn hashes(n: u64, seed: u64) -> Vec<BlockHash> {
    (0..n).map(|i| BlockHash((u128::from(seed) << 64) | (u128::from(i) * 0x9e37_79b9 + 1))).collect()
}

fn put_all(t: &RemoteTier, hs: &[BlockHash]) -> Vec<bool> {
    let pages: Vec<Vec<u8>> = hs.iter().map(|&h| pattern(h, t.page_bytes())).collect();
    let batch: Vec<(BlockHash, &[u8])> = hs.iter().zip(&pages).map(|(&h, p)| (h, p.as_slice())).collect();
    t.put_pages(&batch)
}

/// Reads `hs` and returns, per page, whether it came back with exactly its pattern.
fn read_back(t: &RemoteTier, hs: &[BlockHash]) -> Vec<bool> {
    let mut bufs: Vec<Vec<u8>> = hs.iter().map(|_| vec![0xEEu8; t.page_bytes()]).collect();
    let mut reqs: Vec<(BlockHash, &mut [u8])> =
        hs.iter().zip(bufs.iter_mut()).map(|(&h, b)| (h, b.as_mut_slice())).collect();
    let ok = t.get_pages(&mut reqs);
    hs.iter()
        .zip(&bufs)
        .zip(&ok)
        .map(|((&h, b), &ok)| {
            if !ok {
                // untouched, or zeroed after an unverified value was read into it
                let untouched = b.iter().all(|&x| x == 0xEE);
                assert!(
                    untouched || b.iter().all(|&x| x == 0),
                    "a page that was not delivered left bytes in the buffer"
                );
            }
            ok && *b == pattern(h, t.page_bytes())
        })
        .collect()
}

#[test]
fn identical_bytes_round_trip_and_a_prefix_is_one_round_trip() {
    let Some(server) = RedisServer::start(&[]) else { return };
    // 3 pages per round trip: the 40 pages travel in several pipelined batches
    let page = layout().page_bytes();
    let t = RemoteTier::open(&layout(), config(&server).with_max_batch_bytes(3 * (page + HEADER_BYTES))).unwrap();
    let hs = hashes(40, 1);
    assert!(put_all(&t, &hs).iter().all(|&x| x));
    assert!(read_back(&t, &hs).iter().all(|&x| x));
    let before = t.metrics().round_trips;
    assert_eq!(t.contains_prefix(&hs), 40);
    assert_eq!(t.metrics().round_trips, before + 1, "a prefix lookup is one round trip");
    // a gap ends the prefix
    let mut gapped = hs[..10].to_vec();
    gapped.push(BlockHash(99));
    gapped.extend_from_slice(&hs[10..]);
    assert_eq!(t.contains_prefix(&gapped), 10);
    let m = t.metrics();
    assert_eq!((m.put_stored, m.get_hits, m.get_bytes), (40, 40, 40 * page as u64));
    assert!(m.up && m.errors == 0, "{m:?}");
    // a page of the wrong length is refused before it is sent
    assert_eq!(t.put_pages(&[(BlockHash(3), &[0u8; 10][..])]), vec![false]);
}

#[test]
fn a_corrupted_or_foreign_value_is_a_miss() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let t = RemoteTier::open(&layout(), config(&server)).unwrap();
    let hs = hashes(4, 2);
    put_all(&t, &hs);
    let mut con = server.connection();
    // flip one byte of page 0's KV
    let _: () =
        redis::cmd("SETRANGE").arg(t.key(hs[0])).arg(HEADER_BYTES + 100).arg(&[0xAAu8][..]).query(&mut con).unwrap();
    // truncate page 1
    let _: () = redis::cmd("SET").arg(t.key(hs[1])).arg(&[1u8; 100][..]).query(&mut con).unwrap();
    // page 3's (valid) value planted under page 2's key
    let v3: Vec<u8> = redis::cmd("GET").arg(t.key(hs[3])).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg(t.key(hs[2])).arg(v3).query(&mut con).unwrap();
    assert_eq!(read_back(&t, &hs), vec![false, false, false, true]);
    assert_eq!(t.metrics().get_rejected, 3);
}

#[test]
fn tenant_salt_and_fingerprint_isolate_keyspaces() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let a = RemoteTier::open(&layout(), config(&server).with_tenant_salt(b"tenant-a")).unwrap();
    let hs = hashes(8, 3);
    put_all(&a, &hs);
    let b = RemoteTier::open(&layout(), config(&server).with_tenant_salt(b"tenant-b")).unwrap();
    let other_model =
        RemoteTier::open(&layout(), config(&server).with_tenant_salt(b"tenant-a").with_model_id("other")).unwrap();
    let fp8 = KvLayout::new(2, 2, 16, Dtype::Fp8, 16).unwrap();
    let other_layout = RemoteTier::open(&fp8, config(&server).with_tenant_salt(b"tenant-a")).unwrap();
    for (name, t) in [("tenant", &b), ("model", &other_model)] {
        assert_eq!(t.contains_prefix(&hs), 0, "{name}");
        assert!(read_back(t, &hs).iter().all(|&x| !x), "{name}");
    }
    assert_eq!(other_layout.contains_prefix(&hs), 0);
    // even a value copied by hand into tenant b's key is refused (its header names tenant a)
    let mut con = server.connection();
    let v: Vec<u8> = redis::cmd("GET").arg(a.key(hs[0])).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg(b.key(hs[0])).arg(v).query(&mut con).unwrap();
    assert_eq!(b.contains_prefix(&hs[..1]), 1);
    assert_eq!(read_back(&b, &hs[..1]), vec![false]);
    assert_eq!(b.metrics().get_rejected, 1);
    assert!(read_back(&a, &hs).iter().all(|&x| x), "tenant a still reads its own pages");
}

#[test]
fn a_server_killed_mid_workload_is_misses_then_recovers() {
    let Some(mut server) = RedisServer::start(&[]) else { return };
    let t = RemoteTier::open(&layout(), config(&server)).unwrap();
    let hs = hashes(16, 4);
    assert!(put_all(&t, &hs).iter().all(|&x| x));
    server.kill();
    // every call answers at once with a miss / not stored; nothing panics or errors
    for _ in 0..20 {
        assert_eq!(t.contains_prefix(&hs), 0);
        assert!(read_back(&t, &hs).iter().all(|&x| !x));
        assert!(put_all(&t, &hs).iter().all(|&x| !x));
    }
    let down = t.metrics();
    assert!(!down.up && down.errors >= 1 && down.skipped_down >= 1, "{down:?}");
    server.restart();
    // the server comes back empty; within the longest backoff the tier is using it again
    let deadline = Instant::now() + Duration::from_secs(5);
    while !put_all(&t, &hs).iter().all(|&x| x) {
        assert!(Instant::now() < deadline, "never recovered: {:?}", t.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(read_back(&t, &hs).iter().all(|&x| x));
    assert!(t.metrics().up);
}

#[test]
fn a_full_server_refuses_writes_without_an_error() {
    let Some(server) = RedisServer::start(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]) else { return };
    let t = RemoteTier::open(&layout(), config(&server)).unwrap();
    let hs = hashes(800, 5); // 3.2 MiB of pages
    let stored = put_all(&t, &hs);
    let m = t.metrics();
    assert!(m.put_rejected > 0 && m.put_stored < 800, "{m:?}");
    assert_eq!(m.errors, 0, "a refused write is not a connection failure: {m:?}");
    // what was stored reads back intact
    let kept: Vec<BlockHash> = hs.iter().zip(&stored).filter(|(_, s)| **s).map(|(h, _)| *h).collect();
    assert!(read_back(&t, &kept).iter().all(|&x| x));
}

#[test]
fn a_wrong_password_is_a_miss_and_never_printed() {
    let Some(server) = RedisServer::start(&["--requirepass", "s3cret-pw"]) else { return };
    let url = server.url().replace("redis://", "redis://:s3cret-pw@");
    let good = RemoteTier::open(&layout(), RemoteConfig::new(&url).with_model_id("m")).unwrap();
    let hs = hashes(4, 6);
    assert!(put_all(&good, &hs).iter().all(|&x| x));
    assert!(!format!("{good:?}").contains("s3cret-pw"));
    // reads authenticate on their own connections too, and select the URL's database
    assert!(read_back(&good, &hs).iter().all(|&x| x));
    let in_db3 = RemoteTier::open(&layout(), RemoteConfig::new(format!("{url}/3")).with_model_id("m")).unwrap();
    assert!(put_all(&in_db3, &hashes(1, 9)).iter().all(|&x| x));
    assert!(read_back(&in_db3, &hashes(1, 9)).iter().all(|&x| x));
    assert!(read_back(&good, &hashes(1, 9)).iter().all(|&x| !x), "db 0 does not see db 3's page");
    let bad_url = server.url().replace("redis://", "redis://:wrong@");
    let bad = RemoteTier::open(&layout(), RemoteConfig::new(&bad_url).with_model_id("m")).unwrap();
    assert_eq!(bad.contains_prefix(&hs), 0);
    let m = bad.metrics();
    assert_eq!(m.auth_failures, 1, "{m:?}");
    assert!(!format!("{bad:?}{m:?}").contains("wrong"));
    let bad_reader = RemoteTier::open(&layout(), RemoteConfig::new(&bad_url).with_model_id("m")).unwrap();
    assert!(read_back(&bad_reader, &hs).iter().all(|&x| !x));
    assert_eq!(bad_reader.metrics().auth_failures, 1);
}

#[test]
fn pages_expire_with_a_ttl() {
    let Some(server) = RedisServer::start(&[]) else { return };
    let t = RemoteTier::open(&layout(), config(&server).with_ttl(Some(Duration::from_millis(300)))).unwrap();
    let hs = hashes(4, 7);
    assert!(put_all(&t, &hs).iter().all(|&x| x));
    // -1 would be a key without expiry; -2 one already expired (a slow machine)
    let ttl: i64 = redis::cmd("PTTL").arg(t.key(hs[0])).query(&mut server.connection()).unwrap();
    assert!(ttl == -2 || (1..=300).contains(&ttl), "pttl {ttl}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.contains_prefix(&hs) > 0 {
        assert!(Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read_back(&t, &hs).iter().all(|&x| !x));
}

#[test]
fn tls_with_a_private_ca_round_trips_and_an_untrusted_server_is_a_miss() {
    let Some((server, ca)) = RedisServer::start_tls() else { return };
    assert!(server.url().starts_with("rediss://"));
    let t = RemoteTier::open(&layout(), config(&server).with_tls_ca_pem(ca)).unwrap();
    let hs = hashes(8, 8);
    assert!(put_all(&t, &hs).iter().all(|&x| x), "{:?}", t.metrics());
    assert!(read_back(&t, &hs).iter().all(|&x| x));
    // the system's trust store does not know the test CA: no connection, a miss
    let untrusted = RemoteTier::open(&layout(), config(&server)).unwrap();
    assert_eq!(untrusted.contains_prefix(&hs), 0);
    assert!(untrusted.metrics().errors >= 1);
    // plain text to a TLS port is a miss too
    let cleartext = server.url().replacen("rediss://", "redis://", 1);
    let plain = RemoteTier::open(&layout(), RemoteConfig::new(cleartext).with_model_id("test-model")).unwrap();
    assert_eq!(plain.contains_prefix(&hs), 0);
    assert!(plain.metrics().errors >= 1);
}
