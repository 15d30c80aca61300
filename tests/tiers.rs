//! Behaviour of the tiered engine through the public API: pages move G1 -> G2 -> G3 and back
//! with identical bytes, under both IO backends.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use kvtier::io::{BackendKind, IoConfig};
use kvtier::offload::{Admission, OffloadConfig, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{BlockHash, CacheConfig, Dtype, ExtraKeys, KvLayout};

mod common;
use common::pattern;

const BS: usize = 16;

fn layout() -> KvLayout {
    // 2 layers x 2 heads x 32 dims x f16 x 16 tokens x K,V = 8 KiB pages
    KvLayout::new(2, 2, 32, Dtype::F16, BS as u32).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn prompt(i: u32, blocks: usize) -> Vec<u32> {
    (0..(blocks * BS) as u32 + 1).map(|t| i * 100_000 + t).collect()
}

fn engine(name: &str, backend: BackendKind, g1: usize, g2: usize) -> (TieredCache, PathBuf) {
    let d = dir(name);
    let disk = DiskConfig::new(&d)
        .with_model_id("tiers")
        .with_capacity_slots(64)
        .with_io(IoConfig::default().with_backend(backend));
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(g2))
        .with_disk(disk)
        .with_admission(Admission::All)
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_workers(0);
    let cache = CacheConfig::new(layout(), g1).with_watermark(0.0);
    (TieredCache::new(cache, config).unwrap(), d)
}

/// Runs a request: writes the KV of every block (pattern of its hash), commits, frees.
fn serve(t: &TieredCache, tokens: &[u32]) -> Vec<BlockHash> {
    let g1 = t.g1();
    let mut hashes = Vec::new();
    g1.lock().hash_tokens(tokens, &ExtraKeys::default(), &mut hashes);
    // Blocks pinned by copies in flight are not allocatable: like a scheduler, wait and retry.
    let mut tries = 0;
    let (mut core, added) = loop {
        let mut core = g1.lock();
        match core.add_sequence(tokens, &ExtraKeys::default()) {
            Ok(a) => break (core, a),
            Err(kvtier::Error::OutOfBlocks { .. }) if tries < 2000 => {
                drop(core);
                tries += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let table = core.block_table(added.seq).unwrap().to_vec();
    let page = core.layout().page_bytes();
    for (i, &b) in table.iter().enumerate().skip(added.cached_tokens / BS) {
        let data = hashes.get(i).map_or_else(|| vec![0xAB; page], |h| pattern(*h, page));
        core.write_page(b, &data).unwrap();
    }
    core.commit(added.seq).unwrap();
    core.free(added.seq).unwrap();
    hashes
}

/// Brings `hashes` into G1 and checks every page byte for byte.
fn onboard_and_verify(t: &TieredCache, tokens: &[u32], hashes: &[BlockHash]) -> kvtier::offload::OnboardOutcome {
    let ticket = t.onboard(hashes).unwrap();
    let outcome = ticket.wait();
    let g1 = t.g1();
    let mut core = g1.lock();
    let added = core.add_sequence(tokens, &ExtraKeys::default()).unwrap();
    assert_eq!(added.cached_tokens / BS, outcome.cached_blocks().min((tokens.len() - 1) / BS));
    let table = core.block_table(added.seq).unwrap().to_vec();
    for (i, h) in hashes.iter().enumerate().take(added.cached_tokens / BS) {
        let page = core.page(table[i]).unwrap();
        assert!(page == pattern(*h, page.len()).as_slice(), "block {i} came back with wrong bytes");
    }
    core.free(added.seq).unwrap();
    drop(core);
    drop(ticket);
    outcome
}

fn round_trip(backend: BackendKind, name: &str) {
    let (t, d) = engine(name, backend, 16, 8);
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 4)).collect();
    let mut all = Vec::new();
    for p in &prompts {
        all.push(serve(&t, p));
        t.quiesce().unwrap();
        t.check_invariants().unwrap();
    }
    let m = t.metrics();
    assert!(m.engine.g1_to_g2.pages > 0, "nothing offloaded: {m:?}");
    assert!(m.engine.g2_to_g3.pages > 0, "nothing spilled: {m:?}");
    // The first prompt left G1 and G2 long ago: it comes back from G3.
    assert_eq!(m.g1.unbacked_evictions, 0, "the watermark keeps G1 ahead of a 5-block request");
    let where_ = t.longest_prefix(&all[0]);
    assert_eq!(where_.total, 4);
    assert!(where_.g3 > 0, "{where_:?}");
    let o = onboard_and_verify(&t, &prompts[0], &all[0]);
    assert_eq!(o.cached_blocks(), 4);
    assert!(o.from_g3 > 0);
    // A recent prompt comes back from G2 (or is still in G1).
    let o = onboard_and_verify(&t, &prompts[11], &all[11]);
    assert_eq!(o.cached_blocks(), 4);
    t.check_invariants().unwrap();
    let m = t.metrics();
    assert!(m.engine.g3_to_g1.pages > 0);
    assert_eq!(m.g3.unwrap().corrupt, 0);
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn round_trip_psync() {
    round_trip(BackendKind::Psync, "psync");
}

#[test]
fn round_trip_uring_or_fallback() {
    // Auto picks io_uring where the kernel allows it and falls back to psync otherwise.
    round_trip(BackendKind::Auto, "auto");
}

#[test]
fn restart_recovers_pages_from_ssd() {
    let (t, d) = engine("restart", BackendKind::Auto, 16, 8);
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 4)).collect();
    let all: Vec<_> = prompts.iter().map(|p| serve(&t, p)).inspect(|_| t.quiesce().unwrap()).collect();
    let in_g3: Vec<usize> = (0..12).filter(|&i| t.g3().unwrap().longest_prefix(&all[i]) == 4).collect();
    assert!(!in_g3.is_empty());
    drop(t);
    // a new process: empty G1 and G2, the same SSD directory
    let disk = DiskConfig::new(&d).with_model_id("tiers").with_capacity_slots(64);
    let config = OffloadConfig::default().with_disk(disk).with_workers(1);
    let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
    for &i in &in_g3 {
        let o = onboard_and_verify(&t, &prompts[i], &all[i]);
        assert_eq!(o.from_g3, 4, "prompt {i} not recovered");
    }
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn flipped_byte_on_ssd_is_a_miss_not_wrong_data() {
    let (t, d) = engine("flip", BackendKind::Psync, 16, 8);
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 4)).collect();
    let all: Vec<_> = prompts.iter().map(|p| serve(&t, p)).inspect(|_| t.quiesce().unwrap()).collect();
    let victim = (0..12).find(|&i| t.longest_prefix(&all[i]).g3 == 4).expect("a prompt only on SSD");
    drop(t);
    // Flip one byte in every slot of every slab file: whatever slot holds the prompt is hit.
    let mut flipped = 0;
    for entry in std::fs::read_dir(&d).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kvt") {
            let mut bytes = std::fs::read(&path).unwrap();
            let slot = layout().page_bytes().next_multiple_of(4096);
            for off in (100..bytes.len()).step_by(slot) {
                bytes[off] ^= 0x40;
                flipped += 1;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    assert!(flipped > 0);
    let disk = DiskConfig::new(&d)
        .with_model_id("tiers")
        .with_capacity_slots(64)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync));
    let t = TieredCache::new(
        CacheConfig::new(layout(), 16).with_watermark(0.0),
        OffloadConfig::default().with_disk(disk).with_workers(0),
    )
    .unwrap();
    let ticket = t.onboard(&all[victim]).unwrap();
    let o = ticket.wait();
    assert_eq!(o.cached_blocks(), 0, "a corrupt page was onboarded: {o:?}");
    assert_eq!(o.failed, 4);
    drop(ticket);
    assert!(t.metrics().g3.unwrap().corrupt > 0);
    // the corrupt slots are dropped: a second look finds nothing
    assert_eq!(t.longest_prefix(&all[victim]).total, 0);
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn retained_prefix_survives_pressure_in_every_tier() {
    let (t, d) = engine("retain", BackendKind::Psync, 16, 8);
    let system = prompt(99, 2);
    let sys_hashes = serve(&t, &system);
    t.quiesce().unwrap();
    let id = t.retain(&sys_hashes, None).unwrap();
    for i in 0..12 {
        serve(&t, &prompt(i, 4));
        t.quiesce().unwrap();
    }
    assert_eq!(t.longest_prefix(&sys_hashes).g1, 2, "retained blocks left G1");
    assert!(t.release(id).unwrap());
    assert!(!t.release(id).unwrap());
    t.check_invariants().unwrap();
    // a time-limited retention ends by itself
    let id = t.retain(&sys_hashes, Some(Duration::from_millis(1))).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    t.run_maintenance().unwrap();
    assert!(!t.release(id).unwrap(), "expired retention still held");
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn background_workers_offload_and_onboard() {
    let d = dir("workers");
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(64))
        .with_disk(DiskConfig::new(&d).with_model_id("tiers").with_capacity_slots(64))
        .with_write_through_g2(true)
        .with_workers(2);
    let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
    let prompts: Vec<Vec<u32>> = (0..10).map(|i| prompt(i, 3)).collect();
    let mut all = Vec::new();
    for p in &prompts {
        all.push(serve(&t, p));
    }
    t.quiesce().unwrap();
    for (p, h) in prompts.iter().zip(&all) {
        let o = onboard_and_verify(&t, p, h);
        assert_eq!(o.cached_blocks(), 3, "{o:?}");
    }
    let m = t.metrics();
    assert!(m.engine.g1_to_g2.pages >= 10);
    assert!(m.g1.evictions > 0);
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn metadata_only_cache_cannot_offload() {
    let r = TieredCache::new(CacheConfig::new(layout(), 16).with_arena(false), OffloadConfig::default());
    assert!(matches!(r, Err(kvtier::Error::NoArena)));
}

/// Run by `.ci/run` with io_uring switched off system-wide (`kernel.io_uring_disabled = 2`),
/// as many containers have it: the engine must fall back to pread/pwrite on its own and still
/// round-trip every page. Ignored in normal runs, where io_uring may well work.
#[test]
#[ignore = "needs io_uring disabled by the caller (see .ci/run)"]
fn falls_back_to_psync_when_io_uring_is_blocked() {
    use kvtier::io::open_backend;
    assert_eq!(open_backend(&IoConfig::default()).unwrap().name(), "psync", "io_uring is not blocked");
    assert!(open_backend(&IoConfig::default().with_backend(BackendKind::Uring)).is_err());
    let (t, d) = engine("blocked", BackendKind::Auto, 16, 8);
    assert_eq!(t.g3().unwrap().backend_name(), "psync");
    drop(t);
    let _ = std::fs::remove_dir_all(d);
    round_trip(BackendKind::Auto, "blocked-rt");
}

/// With a write budget the drive cannot meet, spills are deferred and counted, pages that had
/// to leave G2 unbacked are counted as such, and everything G3 says it holds reads back exact.
#[test]
fn write_budget_defers_and_counts_never_loses_silently() {
    let d = dir("budget");
    let disk = DiskConfig::new(&d)
        .with_model_id("tiers")
        .with_capacity_slots(64)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync));
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(8))
        .with_disk(disk)
        .with_admission(Admission::All)
        .with_write_budget(Some(layout().page_bytes() as u64 * 2)) // two pages per second
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 4)).collect();
    let all: Vec<_> = prompts.iter().map(|p| serve(&t, p)).inspect(|_| t.quiesce().unwrap()).collect();
    let m = t.metrics();
    assert!(m.engine.budget_deferred > 0, "{:?}", m.engine);
    let g3 = m.g3.unwrap();
    assert!(g3.pages_written <= 4, "budget of ~2 pages/s exceeded: {}", g3.pages_written);
    // Backpressure keeps G2's pages owed to G3 in place, so G1 victims stay in G1 until the
    // runtime needs the room: those leave the hierarchy, and every one of them is counted.
    assert!(m.g1.unbacked_evictions + m.g2.unbacked_evictions > 0, "{:?} {:?}", m.g1, m.g2);
    assert_eq!(m.g2.unbacked_evictions, 0, "G2 never drops a page it could still spill");
    let stored: u64 = all.iter().flatten().filter(|h| t.g3().unwrap().contains(**h)).count() as u64;
    assert_eq!(stored, g3.used_slots);
    for (p, h) in prompts.iter().zip(&all) {
        // whatever is found anywhere comes back byte-exact
        onboard_and_verify(&t, p, h);
    }
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

/// Both filters write to a full SSD only pages that come back: once G3 is full, a stream of
/// one-off prompts no longer reaches it, a prompt that keeps coming back does. The adaptive
/// filter (the default) learns it from its shadow of the spills (one-off pages never return)
/// and behaves as seen-twice until it has seen enough. (While G3 has free slots every page is
/// admitted: a write then evicts nothing.)
#[test]
fn admission_keeps_one_offs_off_the_ssd() {
    assert_eq!(OffloadConfig::default().admission, Admission::Adaptive);
    for admission in [Admission::SeenTwice, Admission::Adaptive] {
        let d = dir(&format!("admission-{admission:?}"));
        let disk = DiskConfig::new(&d)
            .with_model_id("tiers")
            .with_capacity_slots(16)
            .with_io(IoConfig::default().with_backend(BackendKind::Psync));
        let config = OffloadConfig::default()
            .with_host(HostConfig::default().with_capacity_pages(8))
            .with_disk(disk)
            .with_admission(admission)
            .with_g1_low_watermark(0.5)
            .with_g2_low_watermark(0.5)
            .with_workers(0);
        let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
        let popular = prompt(999, 2);
        let mut popular_hashes = Vec::new();
        for i in 0..40 {
            serve(&t, &prompt(i, 4));
            t.quiesce().unwrap();
            // the popular prompt is looked up (and served) again and again
            popular_hashes = serve(&t, &popular);
            t.longest_prefix(&popular_hashes);
            t.quiesce().unwrap();
        }
        let m = t.metrics();
        assert!(m.engine.admission_declined > 0, "{admission:?}: {:?}", m.engine);
        // 6 prompts of 4 blocks plus the popular one fill the 16 slots: later one-offs are
        // declined (the last few may still be in G1 and G2)
        let late_one_offs_on_ssd =
            (6..40).map(|i| t.g3().unwrap().longest_prefix(&hashes_of(&prompt(i, 4)))).sum::<usize>();
        assert!(
            late_one_offs_on_ssd < 34 * 4 / 8,
            "{admission:?}: {late_one_offs_on_ssd} one-off blocks reached a full SSD"
        );
        assert!(t.longest_prefix(&popular_hashes).total == 2, "{admission:?}: the popular prefix was lost");
        if admission == Admission::Adaptive {
            // pages used once never come back: the shadow never picks "every page" (here the
            // pages seen twice are too few, and too rarely spilled, to judge: the prior stands)
            assert!(m.engine.admission_min_uses.is_none_or(|m| m >= 2), "{:?}", m.engine);
        }
        t.check_invariants().unwrap();
        drop(t);
        let _ = std::fs::remove_dir_all(d);
    }
}

fn hashes_of(tokens: &[u32]) -> Vec<BlockHash> {
    let layout = layout();
    let c = kvtier::KvCache::new(CacheConfig::new(layout, 4).with_arena(false)).unwrap();
    let mut out = Vec::new();
    c.lock().hash_tokens(tokens, &ExtraKeys::default(), &mut out);
    out
}

/// A prefix whose head left G1 while its tail is still there (write-through copies land on the
/// ready list head first): onboarding holds the G1 blocks further along, brings the head back,
/// and the whole prefix is shared.
#[test]
fn onboarding_holds_g1_hits_beyond_the_first_gap() {
    let d = dir("gap");
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(32))
        .with_disk(
            DiskConfig::new(&d)
                .with_model_id("tiers")
                .with_capacity_slots(64)
                .with_io(IoConfig::default().with_backend(BackendKind::Psync)),
        )
        .with_write_through_g2(true)
        .with_g1_low_watermark(0.0)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout(), 6).with_watermark(0.0), config).unwrap();
    let p = prompt(1, 4);
    let hashes = serve(&t, &p); // 4 full blocks + 1 partial, freed before the copy
    t.run_maintenance().unwrap(); // copies go to G2; the blocks are ready for eviction, head first
    // an unrelated request needs 4 blocks: 2 are free, 2 come from evicting the prefix's head
    let other = serve(&t, &prompt(2, 3));
    assert_eq!(other.len(), 3);
    t.run_maintenance().unwrap(); // its write-through copies end, unpinning its blocks
    let hit = t.longest_prefix(&hashes);
    assert_eq!(hit.total, 4);
    assert!(hit.g1 < 4 && hit.g2 > 0, "{hit:?}");
    assert!(t.g1().lock().pool().lookup(hashes[3]).is_some(), "the tail is still in G1");
    let o = onboard_and_verify(&t, &p, &hashes);
    assert_eq!(o.cached_blocks(), 4, "{o:?}");
    assert!(o.g1_hits >= 1 && o.from_g2 >= 1, "{o:?}");
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

/// When G2 evicts a page that G1 still holds, G1 learns its block is no longer backed: a later
/// G1 eviction of it is counted as the loss it is, never as a free one.
#[test]
fn lower_tier_evictions_unback_the_copies_above() {
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(2))
        .with_write_through_g2(true)
        .with_g1_low_watermark(0.0)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout(), 8).with_watermark(0.0), config).unwrap();
    let a = serve(&t, &prompt(1, 4)); // 4 committed blocks, written through to a 2-page G2
    t.run_maintenance().unwrap();
    t.run_maintenance().unwrap(); // G2's evictions reach G1
    let m = t.metrics();
    assert_eq!(m.g2.evictions, 2);
    let in_g2 = a.iter().filter(|h| t.g2().contains(**h)).count();
    assert_eq!(in_g2, 2);
    // a request needing the whole pool evicts every block of `a` from G1
    serve(&t, &prompt(2, 7));
    let m = t.metrics();
    assert_eq!(t.longest_prefix(&a).g1, 0);
    assert_eq!(m.g1.unbacked_evictions, 2, "G1 evicted blocks whose G2 copy was gone: {:?}", m.g1);
    t.check_invariants().unwrap();
}

/// Identical prompts under different cache salts never share a page in any tier: a tenant
/// whose pages went down to G2/G3 is not served another tenant's pages on the way back.
#[test]
fn salts_isolate_tenants_in_every_tier() {
    let (t, d) = engine("salts", BackendKind::Psync, 16, 8);
    let p = prompt(7, 4);
    let salted = |s: &[u8]| ExtraKeys::default().with_salt(s);
    let mut ha = Vec::new();
    let mut hb = Vec::new();
    t.g1().lock().hash_tokens(&p, &salted(b"tenant-a"), &mut ha);
    t.g1().lock().hash_tokens(&p, &salted(b"tenant-b"), &mut hb);
    assert!(ha.iter().all(|h| !hb.contains(h)));
    // tenant A's prompt goes all the way down
    {
        let mut core = t.g1().lock();
        let a = core.add_sequence(&p, &salted(b"tenant-a")).unwrap();
        let table = core.block_table(a.seq).unwrap().to_vec();
        let page = core.layout().page_bytes();
        for (b, h) in table.iter().zip(&ha) {
            core.write_page(*b, &pattern(*h, page)).unwrap();
        }
        core.commit(a.seq).unwrap();
        core.free(a.seq).unwrap();
    }
    for i in 0..12 {
        serve(&t, &prompt(100 + i, 4));
        t.quiesce().unwrap();
    }
    assert_eq!(t.longest_prefix(&ha).total, 4, "tenant A's prefix is kept below");
    // tenant B finds nothing in any tier, and its admission shares no block
    assert_eq!(t.longest_prefix(&hb).total, 0);
    let ticket = t.onboard(&hb).unwrap();
    assert_eq!(ticket.wait().cached_blocks(), 0);
    drop(ticket);
    let b = t.g1().add_sequence(&p, &salted(b"tenant-b")).unwrap();
    assert_eq!(b.cached_tokens, 0);
    t.g1().free(b.seq).unwrap();
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

/// Several runtime threads share one engine with background workers: they admit prompts with
/// shared prefixes, onboard, write and commit pages, and every page any of them reads back
/// (through a prefix hit, from any tier) holds exactly the bytes of its hash.
#[test]
fn threads_hammering_one_engine_never_see_wrong_bytes() {
    let d = dir("stress");
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(24))
        .with_disk(DiskConfig::new(&d).with_model_id("tiers").with_capacity_slots(96))
        .with_admission(Admission::All)
        .with_g1_low_watermark(0.3)
        .with_g2_low_watermark(0.3)
        .with_workers(2);
    let t = TieredCache::new(CacheConfig::new(layout(), 48).with_watermark(0.0), config).unwrap();
    let checked = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for worker in 0..3u32 {
            let (t, checked) = (&t, &checked);
            s.spawn(move || {
                let mut x = 0x9e37_79b9u64 ^ worker as u64;
                for _ in 0..150 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // 6 shared system prompts, each extended by a per-request tail
                    let family = (x % 6) as u32;
                    let mut tokens = prompt(family, 2);
                    tokens.pop();
                    tokens.extend(
                        (0..(x % 3 + 1) as u32 * 16 + 1).map(|i| worker * 1_000_000 + (x as u32 % 997) * 100 + i),
                    );
                    let hashes = hashes_of(&tokens);
                    let ticket = t.onboard(&hashes).unwrap_or_else(|e| panic!("onboard: {e}"));
                    ticket.wait();
                    let mut core = t.g1().lock();
                    let Ok(added) = core.add_sequence(&tokens, &ExtraKeys::default()) else {
                        continue; // G1 momentarily full of pinned blocks: a scheduler would retry
                    };
                    let table = core.block_table(added.seq).unwrap().to_vec();
                    let page = core.layout().page_bytes();
                    for (i, b) in table.iter().enumerate() {
                        match hashes.get(i) {
                            Some(h) if i < added.cached_tokens / BS => {
                                assert!(core.page(*b).unwrap() == pattern(*h, page).as_slice(), "wrong bytes served");
                                checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Some(h) => core.write_page(*b, &pattern(*h, page)).unwrap(),
                            None => core.write_page(*b, &vec![0xEE; page]).unwrap(),
                        }
                    }
                    core.commit(added.seq).unwrap();
                    core.free(added.seq).unwrap();
                    drop(core);
                    drop(ticket);
                }
            });
        }
    });
    t.quiesce().unwrap();
    let m = t.metrics();
    assert!(checked.load(std::sync::atomic::Ordering::Relaxed) > 100, "too few hits to mean anything");
    assert!(m.engine.g1_to_g2.pages > 0, "{:?}", m.engine);
    assert_eq!(m.g3.unwrap().corrupt, 0);
    t.check_invariants().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn every_policy_in_every_tier_serves_exact_bytes() {
    use kvtier::policy::PolicyKind;
    for kind in PolicyKind::ALL {
        let d = dir(&format!("policy-{}", kind.name()));
        let disk = DiskConfig::new(&d).with_model_id("tiers").with_capacity_slots(24).with_policy(kind);
        let config = OffloadConfig::default()
            .with_host(HostConfig::default().with_capacity_pages(10).with_policy(kind))
            .with_disk(disk)
            .with_admission(Admission::All)
            .with_g1_low_watermark(0.5)
            .with_g2_low_watermark(0.5)
            .with_workers(0);
        let cache = CacheConfig::new(layout(), 16).with_watermark(0.0).with_policy(kind);
        let t = TieredCache::new(cache, config).unwrap();
        assert_eq!(t.g1().lock().pool().policy_name(), kind.name());
        // Twelve prompts, the first three coming back often (hits for the frequency policies),
        // then every prompt onboarded and byte-checked wherever it is.
        let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 3)).collect();
        let mut hashes = vec![Vec::new(); prompts.len()];
        for round in 0..3 {
            for (i, p) in prompts.iter().enumerate() {
                if round == 0 || i < 3 {
                    hashes[i] = serve(&t, p);
                    t.quiesce().unwrap();
                    t.check_invariants().unwrap();
                }
            }
        }
        let mut served = 0;
        for (p, h) in prompts.iter().zip(&hashes) {
            served += onboard_and_verify(&t, p, h).cached_blocks();
            t.check_invariants().unwrap();
        }
        assert!(served >= 3 * 3, "{kind:?}: the often-used prompts must survive somewhere, served {served}");
        let m = t.metrics();
        assert!(m.engine.g2_to_g3.pages > 0, "{kind:?}: {m:?}");
        assert_eq!(m.g3.unwrap().corrupt, 0);
        drop(t);
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn onboarding_more_than_g1_can_ever_hold_never_fits_while_a_busy_g1_is_out_of_blocks() {
    let cache = CacheConfig::new(layout(), 4).with_watermark(0.0);
    let t = TieredCache::new(cache, OffloadConfig::default().with_workers(0)).unwrap();
    let hs: Vec<BlockHash> = (1..=5).map(|i| BlockHash(i * 7919)).collect();
    for &h in &hs {
        let stored = t.store(h, |page| {
            page.fill(h.0 as u8);
            Ok(())
        });
        assert!(stored.unwrap());
    }
    // five pages into a G1 of four: never
    match t.onboard(&hs) {
        Err(kvtier::Error::NeverFits { requested: 5, capacity: 4 }) => {}
        other => panic!("{other:?}"),
    }
    // three pages while a sequence holds most of the four blocks: not now
    let held = t.g1().add_sequence(&prompt(9, 2), &Default::default()).unwrap();
    match t.onboard(&hs[..3]) {
        Err(kvtier::Error::OutOfBlocks { requested: 3, available }) if available < 3 => {}
        other => panic!("{other:?}"),
    }
    t.g1().free(held.seq).unwrap();
    let ticket = t.onboard(&hs[..3]).unwrap();
    assert_eq!(ticket.wait().from_g2, 3);
}

/// Applies tier events to per-tier sets, as a router would.
fn apply(events: Vec<kvtier::TierEvent>, g2: &mut HashSet<BlockHash>, g3: &mut HashSet<BlockHash>) -> [usize; 4] {
    let mut counts = [0; 4];
    for e in events {
        let (set, base) = match e.tier {
            kvtier::Tier::G2 => (&mut *g2, 0),
            kvtier::Tier::G3 => (&mut *g3, 2),
            other => panic!("an event for {other:?}"),
        };
        match e.kind {
            kvtier::TierEventKind::Stored => {
                counts[base] += e.hashes.len();
                set.extend(e.hashes);
            }
            kvtier::TierEventKind::Removed => {
                counts[base + 1] += e.hashes.len();
                e.hashes.iter().for_each(|h| {
                    set.remove(h);
                });
            }
        }
    }
    counts
}

#[test]
fn tier_events_track_what_g2_and_g3_hold() {
    let (t, d) = engine("tier-events", BackendKind::Psync, 8, 8);
    let (mut g2, mut g3) = (HashSet::new(), HashSet::new());
    let mut totals = [0; 4];
    for i in 0..40u32 {
        // new prompts push older ones down through G2 into G3 and out of G3 (64 slots)
        let tokens = prompt(i % 30, 3);
        serve(&t, &tokens);
        while t.run_maintenance().unwrap() {}
        if i % 7 == 3 {
            // bring an old prompt back: promotion leaves its lower copies where they are
            let hashes = hashes_of(&prompt(i / 2, 3));
            if let Ok(ticket) = t.onboard(&hashes) {
                ticket.wait();
            }
        }
        let counts = apply(t.take_tier_events(), &mut g2, &mut g3);
        totals.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
        let want_g2: HashSet<BlockHash> = t.tier_hashes(kvtier::Tier::G2).into_iter().collect();
        let want_g3: HashSet<BlockHash> = t.tier_hashes(kvtier::Tier::G3).into_iter().collect();
        assert_eq!(g2, want_g2, "G2 after request {i}");
        assert_eq!(g3, want_g3, "G3 after request {i}");
    }
    assert!(totals.iter().all(|&n| n > 0), "stored/removed in G2, stored/removed in G3: {totals:?}");
    assert_eq!(t.metrics().engine.tier_events_dropped, 0);
    assert!(t.tier_hashes(kvtier::Tier::G1).is_empty());
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn dropped_tier_events_are_counted_and_a_snapshot_recovers() {
    let d = dir("tier-events-small");
    let disk = DiskConfig::new(&d).with_model_id("tiers").with_capacity_slots(64);
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(8))
        .with_disk(disk)
        .with_admission(Admission::All)
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_tier_event_capacity(4)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout(), 8).with_watermark(0.0), config).unwrap();
    for i in 0..10 {
        serve(&t, &prompt(i, 3));
        while t.run_maintenance().unwrap() {}
    }
    let kept: usize = t.take_tier_events().iter().map(|e| e.hashes.len()).sum();
    assert!(kept <= 2 * 4, "{kept} (at most 4 per tier)");
    assert!(t.metrics().engine.tier_events_dropped > 0);
    // a router that missed events starts again from the snapshot, then follows the events
    let mut g2: HashSet<BlockHash> = t.tier_hashes(kvtier::Tier::G2).into_iter().collect();
    let mut g3: HashSet<BlockHash> = t.tier_hashes(kvtier::Tier::G3).into_iter().collect();
    serve(&t, &prompt(20, 1));
    while t.run_maintenance().unwrap() {}
    apply(t.take_tier_events(), &mut g2, &mut g3);
    assert_eq!(g2, t.tier_hashes(kvtier::Tier::G2).into_iter().collect());
    assert_eq!(g3, t.tier_hashes(kvtier::Tier::G3).into_iter().collect());
    drop(t);
    let _ = std::fs::remove_dir_all(d);
}
