//! Long random workloads through the tiered engine while its SSD tier's IO fails: `ENOSPC`,
//! `EIO`, short reads and writes, torn pages and flipped bits, injected at random by
//! [`FaultyBackend`]. Whatever the disk does, the engine must never serve a wrong byte (every
//! page's KV is derived from its hash, so every page read back is checked), never leak a
//! block, slot or pin in any tier, and never panic.
//!
//! Each test prints the faults injected per kind and what the tiers saw of them (run with
//! `--nocapture` to read them); every one of them was survived, or the test would have failed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvtier::io::{BackendKind, Fault, FaultCounts, FaultRates, FaultyBackend, IoConfig, open_backend};
use kvtier::offload::{Admission, OffloadConfig, RetentionId, TieredCache};
use kvtier::testing::XorShift;
use kvtier::tier::host::HostConfig;
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::{BlockHash, CacheConfig, Dtype, Error, ExtraKeys, KvLayout, SeqId};

mod common;
use common::pattern;

const BS: usize = 16;

/// 2 layers x 2 heads x 32 dims x f16 x 16 tokens x K,V = 8 KiB pages: two 4 KiB blocks per
/// slot, so a short or torn transfer can stop halfway through a page even with O_DIRECT.
fn layout() -> KvLayout {
    KvLayout::new(2, 2, 32, Dtype::F16, BS as u32).unwrap()
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Setup {
    name: &'static str,
    backend: BackendKind,
    workers: usize,
    seed: u64,
    ops: usize,
    rates: FaultRates,
    /// Write-through to G2 and seen-twice admission to G3 instead of write-back and admit-all.
    write_through: bool,
}

/// What a workload did, for the report.
#[derive(Default, Debug)]
struct Tally {
    ops: u64,
    requests: u64,
    onboards: u64,
    pages_checked: u64,
    from_g3: u64,
    out_of_blocks: u64,
    invariant_checks: u64,
    scrubbed: u64,
    scrub_corrupt: u64,
}

fn engine(setup: &Setup, d: &PathBuf) -> (TieredCache, kvtier::io::FaultTally) {
    let io = IoConfig::default().with_backend(setup.backend).with_queue_depth(8);
    let disk = DiskConfig::new(d)
        .with_model_id("faults")
        .with_capacity_slots(96)
        .with_slots_per_file(32)
        .with_io(io.clone())
        .with_enospc_backoff(Duration::from_millis(2));
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(24))
        .with_disk(disk)
        .with_admission(if setup.write_through { Admission::SeenTwice } else { Admission::All })
        .with_write_through_g2(setup.write_through)
        .with_g1_low_watermark(0.3)
        .with_g2_low_watermark(0.3)
        .with_batch_pages(8)
        .with_workers(setup.workers);
    let inner = match open_backend(&io) {
        Ok(b) => b,
        Err(_) => open_backend(&io.with_backend(BackendKind::Psync)).unwrap(), // no io_uring here
    };
    eprintln!("[faults {}] G3 IO: faults injected over {}", setup.name, inner.name());
    let faulty = FaultyBackend::new(inner, Fault::Random(setup.rates));
    let tally = faulty.tally();
    let cache = CacheConfig::new(layout(), 48).with_watermark(0.0);
    (TieredCache::with_disk_backend(cache, config, Box::new(faulty)).unwrap(), tally)
}

fn hashes_of(t: &TieredCache, tokens: &[u32]) -> Vec<BlockHash> {
    let mut h = Vec::new();
    t.g1().lock().hash_tokens(tokens, &ExtraKeys::default(), &mut h);
    h
}

/// A request: one of 16 families of shared prefixes (1-4 blocks) plus its own tail.
fn request(rng: &mut XorShift) -> Vec<u32> {
    let family = rng.below(16) as u32;
    let shared = (family % 4 + 1) as usize * BS;
    let mut tokens: Vec<u32> = (0..shared as u32).map(|t| family * 100_000 + t).collect();
    let tail = rng.below(3 * BS as u64) as u32 + 1;
    let salt = rng.below(200) as u32; // tails repeat too, so that they come back from below
    tokens.extend((0..tail).map(|t| 10_000_000 + salt * 1000 + t));
    tokens
}

/// Admits `tokens` (onboarding what lives below first), checks every cached page, writes the
/// rest, commits. Returns the running sequence, or None if G1 had no room.
fn admit(t: &TieredCache, tokens: &[u32], written: &mut HashSet<BlockHash>, tally: &mut Tally) -> Option<SeqId> {
    let hashes = hashes_of(t, tokens);
    let ticket = match t.onboard(&hashes) {
        Ok(ticket) => ticket,
        Err(Error::OutOfBlocks { .. }) => {
            tally.out_of_blocks += 1;
            return None;
        }
        Err(e) => panic!("onboard: {e}"),
    };
    let outcome = ticket.wait();
    tally.onboards += 1;
    tally.from_g3 += outcome.from_g3 as u64;
    let mut core = t.g1().lock();
    let added = match core.add_sequence(tokens, &ExtraKeys::default()) {
        Ok(a) => a,
        Err(Error::OutOfBlocks { .. }) => {
            tally.out_of_blocks += 1;
            return None;
        }
        Err(e) => panic!("add_sequence: {e}"),
    };
    let table = core.block_table(added.seq).unwrap().to_vec();
    let page = core.layout().page_bytes();
    for (i, b) in table.iter().enumerate() {
        match hashes.get(i) {
            Some(h) if i < added.cached_tokens / BS => {
                let served = core.page(*b).unwrap();
                let wrong = served.iter().zip(pattern(*h, page)).filter(|(a, b)| **a != *b).count();
                assert_eq!(wrong, 0, "block {i} of a prefix hit holds {wrong} wrong bytes");
                tally.pages_checked += 1;
            }
            Some(h) => {
                core.write_page(*b, &pattern(*h, page)).unwrap();
                written.insert(*h);
            }
            None => core.write_page(*b, &vec![0xEE; page]).unwrap(),
        }
    }
    core.commit(added.seq).unwrap();
    drop(core);
    drop(ticket);
    tally.requests += 1;
    Some(added.seq)
}

/// Parks the workers and checks every tier: no leak, no stray reference.
fn check(t: &TieredCache, tally: &mut Tally) {
    let _paused = t.pause_workers();
    t.check_invariants().unwrap_or_else(|e| panic!("invariants after {} ops: {e}", tally.ops));
    tally.invariant_checks += 1;
}

fn run(setup: Setup) {
    let started = Instant::now();
    let d = dir(setup.name);
    let (t, faults) = engine(&setup, &d);
    let mut rng = XorShift::new(setup.seed | 1);
    let mut tally = Tally::default();
    let mut written = HashSet::new();
    let mut running: Vec<SeqId> = Vec::new();
    let mut retained: Vec<RetentionId> = Vec::new();
    for op in 0..setup.ops {
        tally.ops += 1;
        match rng.below(100) {
            0..=59 => {
                let tokens = request(&mut rng);
                match admit(&t, &tokens, &mut written, &mut tally) {
                    Some(seq) if rng.below(3) == 0 => running.push(seq), // stays: G1 pressure
                    Some(seq) => t.g1().free(seq).unwrap(),
                    None => {
                        // A scheduler preempts a running request and retries later.
                        if !running.is_empty() {
                            let victim = running.swap_remove(rng.below(running.len() as u64) as usize);
                            t.g1().free(victim).unwrap();
                        }
                    }
                }
            }
            60..=71 => {
                if !running.is_empty() {
                    let seq = running.swap_remove(rng.below(running.len() as u64) as usize);
                    t.g1().free(seq).unwrap();
                }
            }
            72..=77 => {
                let tokens = request(&mut rng);
                let hashes = hashes_of(&t, &tokens);
                let ttl = (rng.below(2) == 0).then(|| Duration::from_millis(rng.below(5)));
                retained.push(t.retain(&hashes, ttl).unwrap());
            }
            78..=83 => {
                if !retained.is_empty() {
                    let id = retained.swap_remove(rng.below(retained.len() as u64) as usize);
                    t.release(id).unwrap();
                }
            }
            84..=89 => {
                t.run_maintenance().unwrap();
            }
            90..=93 => {
                let tokens = request(&mut rng);
                t.prefetch(&hashes_of(&t, &tokens));
            }
            94..=96 => {
                // Pages still in G2 hold their bytes too (not only what G1 serves).
                let tokens = request(&mut rng);
                for h in hashes_of(&t, &tokens) {
                    if let Some(ok) = t.g2().load(h, |p| p == pattern(h, p.len()).as_slice()) {
                        assert!(ok, "G2 holds wrong bytes for {h:?}");
                        tally.pages_checked += 1;
                    }
                }
            }
            _ => check(&t, &mut tally),
        }
        if op % 250 == 249 {
            check(&t, &mut tally);
        }
    }
    // Wind down: everything released, every copy settled; then nothing may be held anywhere.
    for seq in running.drain(..) {
        t.g1().free(seq).unwrap();
    }
    for id in retained.drain(..) {
        t.release(id).unwrap();
    }
    t.quiesce().unwrap();
    {
        let _paused = t.pause_workers();
        t.check_invariants().unwrap();
        let m = t.metrics();
        assert_eq!(m.g1.free + m.g1.in_use + m.g1.evictable, m.g1.capacity, "G1 leak: {:?}", m.g1);
        assert_eq!(m.g1.in_use, 0, "G1 blocks still referenced after every release: {:?}", m.g1);
        assert_eq!(m.g2.pinned, 0);
        assert_eq!(m.g3.unwrap().pinned_slots, 0);
    }
    let m = t.metrics();
    let counts = faults.counts();
    drop(t);
    // A warm restart without faults: every page the faulty run left on disk either verifies
    // or is a counted miss (torn and flipped writes that nobody read back yet).
    let clean = DiskConfig::new(&d).with_model_id("faults").with_capacity_slots(96).with_slots_per_file(32);
    let disk = DiskTier::open(&layout(), clean).unwrap();
    let page = layout().page_bytes();
    for &h in &written {
        if !disk.contains(h) {
            continue;
        }
        let mut buf = vec![0u8; page];
        if let Ok(true) = disk.read_pages(&mut [(h, &mut buf[..])]).pop().unwrap() {
            assert!(buf == pattern(h, page), "a recovered page holds wrong bytes");
            tally.scrubbed += 1;
        } else {
            tally.scrub_corrupt += 1;
        }
    }
    disk.check_invariants(true).unwrap();
    drop(disk);
    let _ = std::fs::remove_dir_all(&d);
    report(&setup, &tally, &counts, &m, started.elapsed());
    assert!(tally.pages_checked > 500, "too few pages served to mean anything: {tally:?}");
    assert!(counts.total() > 100, "too few faults injected: {counts:?}");
}

fn report(setup: &Setup, t: &Tally, c: &FaultCounts, m: &kvtier::offload::TierMetrics, took: Duration) {
    let g3 = m.g3.unwrap_or_default();
    eprintln!(
        "[faults {}] {} ops in {:.1?} ({} workers, seed {}): {} requests, {} onboards ({} pages from G3), \
         {} pages checked byte for byte (0 wrong), {} out-of-blocks, {} invariant checks (0 leaks)",
        setup.name,
        t.ops,
        took,
        setup.workers,
        setup.seed,
        t.requests,
        t.onboards,
        t.from_g3,
        t.pages_checked,
        t.out_of_blocks,
        t.invariant_checks
    );
    eprintln!(
        "[faults {}] injected {} faults in {} G3 IOs: enospc {}, eio {} reads / {} writes, short {} reads / {} writes, \
         torn {} reads / {} writes, bit flips {} reads / {} writes; all survived",
        setup.name,
        c.total(),
        c.operations,
        c.enospc,
        c.eio_reads,
        c.eio_writes,
        c.short_reads,
        c.short_writes,
        c.torn_reads,
        c.torn_writes,
        c.flipped_reads,
        c.flipped_writes
    );
    eprintln!(
        "[faults {}] G3 saw: {} write errors, {} read errors, {} corrupt reads (checksum), {} enospc refusals, {} hits; \
         engine: {} spills failed, {} onboard blocks failed; clean reopen: {} pages verified, {} latent bad pages missed",
        setup.name,
        g3.write_errors,
        g3.read_errors,
        g3.corrupt,
        g3.enospc_refusals,
        g3.hits,
        m.engine.spill_failed,
        m.engine.onboard_failed,
        t.scrubbed,
        t.scrub_corrupt
    );
}

/// One runtime thread, no background workers: the run is reproducible from its seed.
#[test]
fn random_faults_inline_engine() {
    run(Setup {
        name: "inline",
        backend: BackendKind::Psync,
        workers: 0,
        seed: 0x5eed_0001,
        ops: 30_000,
        rates: FaultRates { seed: 1, enospc: 20_000, eio: 20_000, short: 20_000, torn: 20_000, bit_flip: 20_000 },
        write_through: false,
    });
}

/// Background workers offload, spill and onboard while the runtime thread runs; invariants are
/// checked with the workers paused.
#[test]
fn random_faults_with_background_workers() {
    run(Setup {
        name: "workers",
        backend: BackendKind::Auto,
        workers: 2,
        seed: 0x5eed_0002,
        ops: 30_000,
        rates: FaultRates { seed: 2, enospc: 20_000, eio: 20_000, short: 20_000, torn: 20_000, bit_flip: 20_000 },
        write_through: false,
    });
}

/// A disk that fails a third of everything: the engine degrades to misses, nothing worse.
#[test]
fn a_very_bad_disk() {
    run(Setup {
        name: "bad-disk",
        backend: BackendKind::Psync,
        workers: 1,
        seed: 0x5eed_0003,
        ops: 20_000,
        rates: FaultRates { seed: 3, enospc: 60_000, eio: 60_000, short: 60_000, torn: 80_000, bit_flip: 80_000 },
        write_through: false,
    });
}

/// Write-through to G2 (every committed block copied at once) and seen-twice admission to G3.
#[test]
fn random_faults_write_through() {
    run(Setup {
        name: "write-through",
        backend: BackendKind::Auto,
        workers: 2,
        seed: 0x5eed_0004,
        ops: 20_000,
        rates: FaultRates { seed: 4, enospc: 20_000, eio: 20_000, short: 20_000, torn: 20_000, bit_flip: 20_000 },
        write_through: true,
    });
}

/// Three runtime threads share one engine (two workers) over a faulty disk: each checks every
/// page it is served; at the end nothing is leaked anywhere.
#[test]
fn random_faults_three_runtime_threads() {
    let setup = Setup {
        name: "threads",
        backend: BackendKind::Auto,
        workers: 2,
        seed: 0x5eed_0005,
        ops: 6000,
        rates: FaultRates { seed: 5, enospc: 20_000, eio: 20_000, short: 20_000, torn: 20_000, bit_flip: 20_000 },
        write_through: false,
    };
    let started = Instant::now();
    let d = dir(setup.name);
    let (t, faults) = engine(&setup, &d);
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u64)
            .map(|thread| {
                let t = &t;
                let setup = &setup;
                s.spawn(move || {
                    let mut rng = XorShift::new((setup.seed + thread) | 1);
                    let mut tally = Tally::default();
                    let mut written = HashSet::new();
                    for _ in 0..setup.ops {
                        tally.ops += 1;
                        let tokens = request(&mut rng);
                        match rng.below(10) {
                            0 => t.prefetch(&hashes_of(t, &tokens)),
                            1 => {
                                t.run_maintenance().unwrap();
                            }
                            2 => {
                                let id = t.retain(&hashes_of(t, &tokens), None).unwrap();
                                t.release(id).unwrap();
                            }
                            _ => {
                                if let Some(seq) = admit(t, &tokens, &mut written, &mut tally) {
                                    t.g1().free(seq).unwrap();
                                }
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    t.quiesce().unwrap();
    {
        let _paused = t.pause_workers();
        t.check_invariants().unwrap();
        let m = t.metrics();
        assert_eq!(m.g1.in_use, 0, "G1 blocks still referenced after every release: {:?}", m.g1);
    }
    let mut total = Tally::default();
    for x in &tallies {
        total.ops += x.ops;
        total.requests += x.requests;
        total.onboards += x.onboards;
        total.pages_checked += x.pages_checked;
        total.from_g3 += x.from_g3;
        total.out_of_blocks += x.out_of_blocks;
    }
    total.invariant_checks = 1;
    let m = t.metrics();
    let counts = faults.counts();
    drop(t);
    let _ = std::fs::remove_dir_all(&d);
    report(&setup, &total, &counts, &m, started.elapsed());
    assert!(total.pages_checked > 500, "too few pages served to mean anything: {total:?}");
    assert!(counts.total() > 100, "too few faults injected: {counts:?}");
}

/// Each kind at a rate of one in one does exactly what its documentation says, so that the
/// counts above mean what they say.
#[test]
fn each_fault_kind_does_what_it_says() {
    use kvtier::io::{AlignedBuf, IoBackend, IoOp, create_slab_file};
    let d = dir("kinds");
    std::fs::create_dir_all(&d).unwrap();
    let slab = create_slab_file(&d.join("slab"), 8192, true).unwrap();
    let old = AlignedBuf::new(8192).unwrap(); // zeroes on disk before each write
    let mut new = AlignedBuf::new(8192).unwrap();
    new.fill(0x5A);
    let all = |kind: fn(&mut FaultRates)| {
        let mut rates = FaultRates { seed: 9, ..FaultRates::default() };
        kind(&mut rates);
        let inner = open_backend(&IoConfig::default().with_backend(BackendKind::Psync)).unwrap();
        FaultyBackend::new(inner, Fault::Random(rates))
    };
    let clean = open_backend(&IoConfig::default().with_backend(BackendKind::Psync)).unwrap();
    let mut results = Vec::new();
    // (kind, write result ok?, bytes of the new page on disk afterwards, read result ok?, read buffer intact?)
    type Case<'a> = (&'a str, fn(&mut FaultRates), bool, &'a dyn Fn(usize) -> bool, bool, bool);
    let cases: [Case<'_>; 5] = [
        ("enospc", |r| r.enospc = 1_000_000, false, &|n| n == 0, true, true),
        ("eio", |r| r.eio = 1_000_000, false, &|n| n == 0, false, false),
        ("short", |r| r.short = 1_000_000, false, &|n| n > 0 && n < 8192, false, false),
        ("torn", |r| r.torn = 1_000_000, true, &|n| n > 0 && n < 8192, true, false),
        ("bit_flip", |r| r.bit_flip = 1_000_000, true, &|n| n == 8191, true, false),
    ];
    for (name, kind, write_ok, on_disk, read_ok, read_intact) in cases {
        let faulty = all(kind);
        clean.submit(&mut [IoOp::write(slab.file(), 0, &old)], &mut results);
        assert!(results[0].is_ok());
        faulty.submit(&mut [IoOp::write(slab.file(), 0, &new)], &mut results);
        assert_eq!(results[0].is_ok(), write_ok, "{name}: write {:?}", results[0]);
        let mut back = AlignedBuf::new(8192).unwrap();
        clean.submit(&mut [IoOp::read(slab.file(), 0, &mut back)], &mut results);
        let new_bytes = back.iter().filter(|&&b| b == 0x5A).count();
        assert!(on_disk(new_bytes), "{name}: {new_bytes} new bytes on disk");
        // Reads: put the full new page on disk, read it through the fault.
        clean.submit(&mut [IoOp::write(slab.file(), 0, &new)], &mut results);
        let mut read = AlignedBuf::new(8192).unwrap();
        faulty.submit(&mut [IoOp::read(slab.file(), 0, &mut read)], &mut results);
        if name != "enospc" {
            assert_eq!(results[0].is_ok(), read_ok, "{name}: read {:?}", results[0]);
        }
        assert_eq!(read[..] == new[..], read_intact, "{name}: read buffer");
        let c = faulty.counts();
        assert_eq!(c.operations, 2);
        assert_eq!(c.total(), if name == "enospc" { 1 } else { 2 }, "{name}: {c:?}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
