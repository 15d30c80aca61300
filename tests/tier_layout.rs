//! How pages move between tiers, on small deterministic traces: the hierarchy serves about
//! what one flat cache of its summed size serves, and no page is lost while a lower tier has
//! room. Every page served from any tier is checked byte for byte.

use std::path::PathBuf;

use kvtier::io::{BackendKind, IoConfig};
use kvtier::offload::{Admission, OffloadConfig, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{CacheConfig, Dtype, ExtraKeys, KvLayout};

mod common;
use common::pattern;

const BS: usize = 4;

fn layout() -> KvLayout {
    KvLayout::new(1, 1, 8, Dtype::F16, BS as u32).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("layout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A conversation workload: `conversations` chats of growing prompts (each turn repeats the
/// previous prompt and adds `grow` blocks), interleaved by a fixed LCG.
fn conversation_trace(conversations: u32, turns: u32, grow: usize) -> Vec<Vec<u32>> {
    let mut next_turn = vec![0u32; conversations as usize];
    let mut out = Vec::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    loop {
        // the next request comes from one of the 8 oldest conversations still going
        let active: Vec<usize> = (0..conversations as usize).filter(|&c| next_turn[c] < turns).take(8).collect();
        if active.is_empty() {
            break;
        }
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let c = active[(x >> 33) as usize % active.len()];
        next_turn[c] += 1;
        let blocks = next_turn[c] as usize * grow;
        out.push((0..(blocks * BS) as u32 + 1).map(|t| c as u32 * 1_000_000 + t).collect());
    }
    out
}

/// Serves every prompt in order (onboarding what lives below G1, verifying every served page)
/// and returns the fraction of prompt blocks served from the cache over the second half.
fn replay(t: &TieredCache, trace: &[Vec<u32>], room: bool) -> f64 {
    let (mut hit, mut all) = (0usize, 0usize);
    for (n, tokens) in trace.iter().enumerate() {
        let mut hashes = Vec::new();
        t.g1().lock().hash_tokens(tokens, &ExtraKeys::default(), &mut hashes);
        // Like a runtime admitting a prompt larger than the watermark's margin: room first.
        if room {
            t.make_room(tokens.len().div_ceil(BS)).unwrap();
        }
        let found = t.longest_prefix(&hashes);
        let ticket = (found.g2 + found.g3 > 0).then(|| t.onboard(&hashes).unwrap());
        if let Some(ticket) = &ticket {
            ticket.wait();
        }
        let g1 = t.g1();
        let mut core = g1.lock();
        let added = core.add_sequence(tokens, &ExtraKeys::default()).unwrap();
        let table = core.block_table(added.seq).unwrap().to_vec();
        let cached = added.cached_tokens / BS;
        let page = core.layout().page_bytes();
        for (i, &b) in table.iter().enumerate() {
            if i < cached {
                let served = core.page(b).unwrap();
                assert!(served == pattern(hashes[i], page).as_slice(), "request {n} block {i}: wrong bytes");
            } else {
                let data = hashes.get(i).map_or_else(|| vec![0xAB; page], |h| pattern(*h, page));
                core.write_page(b, &data).unwrap();
            }
        }
        core.commit(added.seq).unwrap();
        core.free(added.seq).unwrap();
        drop(core);
        drop(ticket);
        t.quiesce().unwrap();
        if n >= trace.len() / 2 {
            hit += cached;
            all += hashes.len();
        }
    }
    t.check_invariants().unwrap();
    hit as f64 / all.max(1) as f64
}

/// `watermark`: G1 copies to G2 and G2 spills to G3 ahead of need until this fraction of the
/// tier is free or backed; a request that needs more slots at once than that loses pages
/// (counted).
fn tiered_with(
    name: &str,
    g1: usize,
    g2: usize,
    g3: usize,
    write_through: bool,
    admission: Admission,
    watermark: f64,
) -> (TieredCache, PathBuf) {
    let d = dir(name);
    let disk = DiskConfig::new(&d)
        .with_model_id("layout")
        .with_capacity_slots(g3)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync));
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(g2).with_huge_pages(false))
        .with_disk(disk)
        .with_write_through_g2(write_through)
        .with_admission(admission)
        .with_g1_low_watermark(watermark)
        .with_g2_low_watermark(watermark)
        .with_workers(0);
    (TieredCache::new(CacheConfig::new(layout(), g1).with_watermark(0.0), config).unwrap(), d)
}

fn flat(g1: usize) -> TieredCache {
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(1).with_huge_pages(false))
        .with_workers(0);
    TieredCache::new(CacheConfig::new(layout(), g1).with_watermark(0.0), config).unwrap()
}

/// G1 + G2 + G3 serve at least 0.95 x what one G1 of the summed size serves with the default
/// (adaptive) admission filter and when G3 admits every page; the seen-twice filter trades
/// some of it for fewer SSD writes, and write-through spends G2 on copies of blocks G1 still
/// caches.
#[test]
fn tiered_serves_what_one_flat_cache_of_the_summed_size_does() {
    let trace = conversation_trace(120, 6, 3);
    let (g1, g2, g3) = (24, 48, 96);
    let reference = replay(&flat(g1 + g2 + g3), &trace, false);
    assert!(reference > 0.2, "the trace has reuse a flat cache can serve: {reference}");
    // Measured when written (flat 0.643): all 1.01 / 0.97 (write-through), seen-twice 0.90,
    // adaptive 1.01. Here nearly every page is reused once, soon after it has left G2:
    // exactly the first reuse the seen-twice filter declines. The adaptive filter sees pages
    // used once come back and admits them (on the shared conversation traces, where most
    // pages used once never return, it declines them as seen-twice does).
    let cases = [
        (false, Admission::All, 0.95),
        (true, Admission::All, 0.9),
        (false, Admission::SeenTwice, 0.85),
        (false, Admission::Adaptive, 0.95),
    ];
    for (write_through, admission, bound) in cases {
        // A request here is up to 19 of G1's 24 blocks, far above the default watermark's
        // margin (0.1): the replay makes room before each admission (without it, G1 drops
        // most of each request's pages before they are copied down: 0.19 against 0.63).
        let name = format!("ratio-{write_through}-{admission:?}");
        let (t, d) = tiered_with(&name, g1, g2, g3, write_through, admission, 0.1);
        let got = replay(&t, &trace, true);
        let m = t.metrics();
        drop(t);
        let _ = std::fs::remove_dir_all(d);
        assert!(
            got >= bound * reference,
            "write-through {write_through}, {admission:?}: tiered {got:.4} vs flat {reference:.4} ({:?})",
            m.engine
        );
        eprintln!("write-through {write_through}, {admission:?}: {:.3} x flat", got / reference);
    }
}

/// Prompts whose pages fit in G1 + G2 + G3 together are all still found at the end: no tier
/// drops a page while a tier below has room for it, at the default watermarks, because each
/// admission makes room first ([`TieredCache::make_room`]).
#[test]
fn no_page_lost_while_a_lower_tier_has_room() {
    // 20 prompts x 4 full blocks = 80 pages, all distinct, seen once each. Without
    // write-through the tiers are exclusive: G1 + G2 + G3 = 88 slots hold them. With it, G2
    // holds a copy of every block G1 caches and spilled pages stay in G2 as backed copies
    // until G2 needs the slot, so only G2 + G3 count, less those copies: G3 gets 8 more slots.
    for (write_through, g3) in [(false, 64), (true, 72)] {
        let (g1, g2) = (8, 16);
        let (t, d) =
            tiered_with(&format!("room-{write_through}"), g1, g2, g3, write_through, Admission::SeenTwice, 0.1);
        let prompts: Vec<Vec<u32>> =
            (0..20u32).map(|i| (0..(4 * BS) as u32 + 1).map(|x| i * 1_000_000 + x).collect()).collect();
        replay(&t, &prompts, true);
        for (i, p) in prompts.iter().enumerate() {
            let mut hashes = Vec::new();
            t.g1().lock().hash_tokens(p, &ExtraKeys::default(), &mut hashes);
            let found = t.longest_prefix(&hashes);
            assert_eq!(
                found.total,
                4,
                "write-through {write_through}: prompt {i} lost pages: {found:?} {:#?}",
                t.metrics()
            );
        }
        let m = t.metrics();
        assert_eq!(m.g1.unbacked_evictions, 0, "{:?}", m.g1);
        assert_eq!(m.g2.unbacked_evictions, 0, "{:?}", m.g2);
        drop(t);
        let _ = std::fs::remove_dir_all(d);
    }
}

/// One full block per prompt: `(prompt, hash)` for prompt `i`.
fn one_block(t: &TieredCache, i: u32) -> (Vec<u32>, kvtier::BlockHash) {
    let tokens: Vec<u32> = (0..BS as u32 + 1).map(|x| 7_000_000 + i * 1_000 + x).collect();
    let mut hashes = Vec::new();
    t.g1().lock().hash_tokens(&tokens, &ExtraKeys::default(), &mut hashes);
    (tokens, hashes[0])
}

fn store(t: &TieredCache, h: kvtier::BlockHash) {
    let page = t.g2().page_bytes();
    let stored = t.store(h, |p| {
        p.copy_from_slice(&pattern(h, page));
        Ok(())
    });
    assert!(stored.unwrap());
}

/// Admits `tokens` (whose first block is cached somewhere), checks the served page and frees it.
fn serve_cached(t: &TieredCache, tokens: &[u32], h: kvtier::BlockHash) {
    let ticket = t.onboard(&[h]).unwrap();
    assert_eq!(ticket.wait().cached_blocks(), 1);
    let mut core = t.g1().lock();
    let added = core.add_sequence(tokens, &ExtraKeys::default()).unwrap();
    assert_eq!(added.cached_tokens, BS);
    let b = core.block_table(added.seq).unwrap()[0];
    let page = core.layout().page_bytes();
    assert!(core.page(b).unwrap() == pattern(h, page).as_slice(), "wrong bytes served");
    core.commit(added.seq).unwrap();
    core.free(added.seq).unwrap();
    drop(core);
    drop(ticket);
}

/// Promotion: a page onboarded from G2 is G1's alone; its G2 copy is the first G2 gives up (at
/// no loss), not the least recently used page; when G1 gives the page up, the copy-down finds
/// the copy still there and copies nothing, or copies the page anew if it was dropped.
#[test]
fn promotion_leaves_the_g2_copy_cold() {
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(4).with_huge_pages(false))
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
    let pages: Vec<_> = (0..6).map(|i| one_block(&t, i)).collect();
    for (_, h) in &pages[..4] {
        store(&t, *h); // G2 full, page 0 least recently used
    }
    // Page 3 goes up to G1 and back down: its kept G2 copy serves it, nothing is copied.
    serve_cached(&t, &pages[3].0, pages[3].1);
    let stores = t.g2().metrics().stores;
    assert_eq!(t.make_room(16).unwrap(), 16);
    assert_eq!(t.g2().metrics().stores, stores, "the cold copy was reused, not copied again");
    assert!(t.g2().contains(pages[3].1));
    // Page 2 is promoted; a new page pushes out page 2's cold copy, not page 0.
    serve_cached(&t, &pages[2].0, pages[2].1);
    store(&t, pages[4].1);
    assert!(!t.g2().contains(pages[2].1), "the promoted page's G2 copy is evicted first");
    assert!(t.g2().contains(pages[0].1), "the least recently used page stays");
    assert_eq!(t.longest_prefix(&[pages[2].1]).g1, 1, "G1 still serves page 2");
    // G1 gives page 2 up: copied down again (G2 makes room by its LRU, page 0), not lost.
    assert_eq!(t.make_room(16).unwrap(), 16);
    assert!(t.g2().load(pages[2].1, |p| p == pattern(pages[2].1, p.len()).as_slice()).unwrap());
    assert!(!t.g2().contains(pages[0].1));
    assert_eq!(t.g1().metrics().unbacked_evictions, 0);
    t.check_invariants().unwrap();
}

/// A page onboarded from G3 keeps its G3 copy where the read put it (most recently used) by
/// default, so a page G1 gives up again costs no second SSD write; with
/// [`OffloadConfig::exclusive_g3`] that copy is the first G3 evicts.
#[test]
fn promotion_from_g3_keeps_or_cools_the_ssd_copy() {
    for exclusive in [false, true] {
        let d = dir(&format!("promote-g3-{exclusive}"));
        let disk = DiskConfig::new(&d)
            .with_model_id("layout")
            .with_capacity_slots(8)
            .with_io(IoConfig::default().with_backend(BackendKind::Psync));
        let config = OffloadConfig::default()
            .with_host(HostConfig::default().with_capacity_pages(4).with_huge_pages(false))
            .with_disk(disk)
            .with_admission(Admission::All)
            .with_g2_low_watermark(0.99) // everything in G2 is spilled at once
            .with_exclusive_g3(exclusive)
            .with_workers(0);
        let t = TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap();
        let pages: Vec<_> = (0..9).map(|i| one_block(&t, i)).collect();
        for (_, h) in &pages[..8] {
            store(&t, *h);
            t.run_maintenance().unwrap();
        }
        // G3 full (page 0 least recently used); pages 0-3 are in G3 alone.
        assert_eq!(t.g3().unwrap().metrics().used_slots, 8);
        assert_eq!(t.longest_prefix(&[pages[0].1]).g3, 1);
        serve_cached(&t, &pages[0].0, pages[0].1); // promoted from G3
        assert_eq!(t.metrics().engine.g3_to_g1.pages, 1);
        // One more page spilled: G3 evicts one.
        store(&t, pages[8].1);
        t.run_maintenance().unwrap();
        let g3 = t.g3().unwrap();
        assert!(g3.contains(pages[8].1));
        assert_eq!(g3.contains(pages[0].1), !exclusive, "exclusive {exclusive}: the promoted page's SSD copy");
        assert_eq!(g3.contains(pages[1].1), exclusive, "exclusive {exclusive}: the least recently used page");
        t.check_invariants().unwrap();
        drop(t);
        let _ = std::fs::remove_dir_all(d);
    }
}
