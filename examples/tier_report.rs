//! Data-path report of the tiered offload engine: every transfer between tiers against the
//! machine's own ceiling for it, measured side by side in one run on one file system.
//!
//! `cargo run --release --example tier_report [-- --quick] [--dir PATH]`
//!
//! For a 2 MiB page (Llama-3.1-8B, 16-token blocks) and a 64 KiB page:
//! 1. G1 -> G2 offload through the engine (`run_maintenance` passes over committed, freed
//!    blocks) vs a plain memcpy of the same bytes.
//! 2. G2 -> G3 spill through the engine vs a raw O_DIRECT io_uring write loop (the `io-uring`
//!    crate directly, same page size and queue depth, the queue kept full).
//! 3. G3 -> G1 onboard through the engine (tickets for many prefixes found only in G3) vs a
//!    raw O_DIRECT io_uring read loop.
//! 4. Latency of onboarding one page from G2 and from G3 (ticket from `onboard` to `wait`).
//!
//! Engine and raw runs alternate (A B A B ...) and each side keeps its median, because the disk
//! is noisy; ratios are medians of the per-round ratios. Everything runs with the engine's
//! defaults except what a measurement needs (watermarks that start the work, no background
//! workers for the maintenance loops). The directory (default `./target/tier-report`) is
//! removed afterwards.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use kvtier::io::{IoConfig, create_slab_file};
use kvtier::offload::{OffloadConfig, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{BlockHash, CacheConfig, Dtype, ExtraKeys, KvLayout};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Blocks per onboarded prefix (a 512-token prompt at 16 tokens per block).
const PREFIX_BLOCKS: usize = 32;
const TARGET: f64 = 0.9;

/// Settings of one run.
struct Plan {
    quick: bool,
    dir: PathBuf,
    /// Measured rounds per comparison, after warm-up.
    rounds: usize,
}

/// One page size under test and how many pages a round moves.
struct Case {
    name: &'static str,
    layout: KvLayout,
    pages: usize,
    samples: usize,
}

fn main() -> Result<()> {
    let mut plan = Plan { quick: false, dir: PathBuf::from("target/tier-report"), rounds: 7 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => plan.quick = true,
            "--dir" => plan.dir = PathBuf::from(args.next().ok_or("--dir needs a path")?),
            other => return Err(format!("unknown argument {other}; usage: [--quick] [--dir PATH]").into()),
        }
    }
    if plan.quick {
        plan.rounds = 3;
    }
    let _ = std::fs::remove_dir_all(&plan.dir);
    std::fs::create_dir_all(&plan.dir)?;
    let (big, small) = if plan.quick { (48, 768) } else { (192, 3072) };
    let cases = [
        Case {
            name: "2 MiB (Llama-3.1-8B, 16-token blocks)",
            layout: KvLayout::llama_3_1_8b(16)?,
            pages: big,
            samples: if plan.quick { 30 } else { 100 },
        },
        Case {
            name: "64 KiB (32 layers x 1 head x 64 dims, bf16, 8 tokens)",
            layout: KvLayout::new(32, 1, 64, Dtype::Bf16, 8)?,
            pages: small,
            samples: if plan.quick { 50 } else { 200 },
        },
    ];
    let qd = IoConfig::default().queue_depth;
    let started = Instant::now();
    println!("kvtier tier report ({} run), dir {}", if plan.quick { "quick" } else { "full" }, plan.dir.display());
    println!("engine defaults: {:?}", OffloadConfig::default());
    println!("io defaults: {:?}", IoConfig::default());
    let mut failures = Vec::new();
    for case in &cases {
        let result = run_case(&plan, case, qd, &mut failures);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&plan.dir);
            return Err(e);
        }
    }
    std::fs::remove_dir_all(&plan.dir)?;
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!("all ratios >= {TARGET}x");
    } else {
        println!("below {TARGET}x: {}", failures.join(", "));
    }
    Ok(())
}

fn run_case(plan: &Plan, case: &Case, qd: usize, failures: &mut Vec<String>) -> Result<()> {
    let page = case.layout.page_bytes();
    let mib = (case.pages * page) as f64 / (1 << 20) as f64;
    println!("\n== page {} : {} pages ({mib:.0} MiB) per round, {} rounds ==", case.name, case.pages, plan.rounds);
    let dir = plan.dir.join(format!("p{page}"));
    std::fs::create_dir_all(&dir)?;

    let offload = offload_vs_memcpy(plan, case)?;
    report("1. G1->G2 offload", "memcpy", &offload, case, failures);

    let raw_file = create_slab_file(&dir.join("raw.bin"), (case.pages * page) as u64, true)?;
    let mut raw_buf = huge_buffer(case.pages * page)?;
    raw_buf.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
    raw_uring(raw_file.file(), Dir::Write, &mut raw_buf, page, qd)?; // allocate the extents once

    let g3_dir = dir.join("g3");
    let spill = spill_vs_raw(plan, case, &g3_dir, &raw_file, &mut raw_buf, qd)?;
    println!(
        "   G3 backend {}, O_DIRECT {} (raw file O_DIRECT {}), queue depth {qd}",
        spill.backend,
        spill.direct,
        raw_file.is_direct()
    );
    report("2. G2->G3 spill", "raw io_uring write", &spill.rates, case, failures);

    let onboard = onboard_vs_raw(plan, case, &g3_dir, &raw_file, &mut raw_buf, qd)?;
    report("3. G3->G1 onboard", "raw io_uring read", &onboard.rates, case, failures);
    println!(
        "4. onboard latency of one page ({} samples, workers {}):",
        case.samples,
        OffloadConfig::default().workers
    );
    for (tier, l) in [("G2", &onboard.g2_latency), ("G3", &onboard.g3_latency)] {
        println!("   from {tier}: p50 {:>8.1} us   p99 {:>8.1} us", quantile(l, 0.5), quantile(l, 0.99));
    }
    Ok(())
}

/// Per-round throughputs (GB/s) of the engine and of its reference, in run order.
#[derive(Default)]
struct Rates {
    engine: Vec<f64>,
    reference: Vec<f64>,
}

impl Rates {
    fn push(&mut self, engine_bytes: u64, engine: Duration, reference_bytes: u64, reference: Duration) {
        self.engine.push(engine_bytes as f64 / engine.as_secs_f64() / 1e9);
        self.reference.push(reference_bytes as f64 / reference.as_secs_f64() / 1e9);
    }
    fn ratio(&self) -> f64 {
        let ratios: Vec<f64> = self.engine.iter().zip(&self.reference).map(|(e, r)| e / r).collect();
        median(&ratios)
    }
}

fn report(what: &str, reference: &str, rates: &Rates, case: &Case, failures: &mut Vec<String>) {
    let ratio = rates.ratio();
    let mark = if ratio >= TARGET { "ok" } else { "BELOW TARGET" };
    println!(
        "{what:<20} engine {:>6.2} GB/s  {reference:<18} {:>6.2} GB/s  ratio {ratio:.2}x (target >= {TARGET}) {mark}",
        median(&rates.engine),
        median(&rates.reference),
    );
    println!("   per round engine {:?}", rounded(&rates.engine));
    println!("   per round ref    {:?}", rounded(&rates.reference));
    if ratio < TARGET {
        failures.push(format!("{what} at {} B ({ratio:.2}x)", case.layout.page_bytes()));
    }
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// Distinct block hashes for round `round` of an experiment. Real block hashes are xxh3
/// outputs, so these are mixed (splitmix64) to look as random: the hash indexes take their
/// buckets from the low bits.
fn hashes(tag: u64, round: usize, n: usize) -> Vec<BlockHash> {
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    (0..n)
        .map(|i| {
            let id = (tag << 56) ^ ((round as u64) << 32) ^ i as u64;
            BlockHash(((mix(id) as u128) << 64) | mix(!id) as u128)
        })
        .collect()
}

/// Fills G1 with `pages` committed, freed blocks of fresh prompts (`round` makes them new).
fn fill_g1(t: &TieredCache, round: usize, pages: usize) -> Result<()> {
    let g1 = t.g1();
    let block = t.g1().layout().block_size() as usize;
    let seqs = pages / PREFIX_BLOCKS;
    let mut core = g1.lock();
    for s in 0..seqs {
        let first = ((round * seqs + s) * PREFIX_BLOCKS * block) as u32;
        let tokens: Vec<u32> = (first..first + (PREFIX_BLOCKS * block) as u32).collect();
        let added = core.add_sequence(&tokens, &ExtraKeys::default())?;
        let table = core.block_table(added.seq)?.to_vec();
        for (i, &b) in table.iter().enumerate() {
            core.page_mut(b)?.fill((s + i) as u8);
        }
        core.commit(added.seq)?;
        core.free(added.seq)?;
    }
    Ok(())
}

fn offload_vs_memcpy(plan: &Plan, case: &Case) -> Result<Rates> {
    let page = case.layout.page_bytes();
    let n = case.pages;
    let cache = CacheConfig::new(case.layout, n).with_watermark(0.0);
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(n))
        .with_g1_low_watermark(0.9999)
        .with_workers(0);
    let t = TieredCache::new(cache, config)?;
    let (mut src, mut dst) = (huge_buffer(n * page)?, huge_buffer(n * page)?);
    src.fill(1);
    dst.fill(0);
    let mut rates = Rates::default();
    // Two warm-up rounds: G2's pages are faulted in and its slots recycled once.
    for round in 0..plan.rounds + 2 {
        fill_g1(&t, round, n)?;
        let before = t.metrics().engine.g1_to_g2.bytes;
        let start = Instant::now();
        while t.run_maintenance()? {}
        let engine = start.elapsed();
        let moved = t.metrics().engine.g1_to_g2.bytes - before;

        let start = Instant::now();
        for (d, s) in dst.chunks_exact_mut(page).zip(src.chunks_exact(page)) {
            d.copy_from_slice(std::hint::black_box(s));
        }
        std::hint::black_box(&mut dst);
        let copy = start.elapsed();
        if round > 1 {
            rates.push(moved, engine, (n * page) as u64, copy);
        }
    }
    t.check_invariants()?;
    Ok(rates)
}

/// Anonymous memory with transparent huge pages requested, as G2 has: the memcpy and raw IO
/// references get the same (or better) TLB and page-pinning cost as the engine.
fn huge_buffer(bytes: usize) -> Result<memmap2::MmapMut> {
    let map = memmap2::MmapMut::map_anon(bytes)?;
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

struct SpillResult {
    rates: Rates,
    backend: &'static str,
    direct: bool,
}

/// The G3 tier of the spill and onboard experiments: room for three rounds of pages.
fn disk_config(g3_dir: &Path, case: &Case) -> DiskConfig {
    DiskConfig::new(g3_dir)
        .with_model_id("tier-report")
        .with_capacity_slots(3 * case.pages)
        .with_slots_per_file(case.pages)
}

fn spill_vs_raw(
    plan: &Plan,
    case: &Case,
    g3_dir: &Path,
    raw: &kvtier::io::SlabFile,
    raw_buf: &mut [u8],
    qd: usize,
) -> Result<SpillResult> {
    let page = case.layout.page_bytes();
    let n = case.pages;
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(n))
        .with_disk(disk_config(g3_dir, case))
        .with_g2_low_watermark(0.9999)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(case.layout, 64), config)?;
    let g3 = t.g3().ok_or("no G3")?;
    let (backend, direct) = (g3.backend_name(), g3.is_direct());
    let data = vec![7u8; page];
    let mut rates = Rates::default();
    // Three warm-up rounds write every G3 slot once (extent allocation is not what we measure).
    for round in 0..plan.rounds + 3 {
        let hs = hashes(1, round, n);
        for &h in &hs {
            t.store(h, |p| {
                p.copy_from_slice(&data);
                Ok(())
            })?;
        }
        // Repeated lookups: the seen-twice admission filter lets the pages into G3 even when its
        // aging halves the counters in the middle of them.
        for _ in 0..4 {
            t.longest_prefix(&hs);
        }
        let before = t.metrics().engine.g2_to_g3.bytes;
        let start = Instant::now();
        while t.run_maintenance()? {}
        let engine = start.elapsed();
        let moved = t.metrics().engine.g2_to_g3.bytes - before;
        let raw_time = raw_uring(raw.file(), Dir::Write, raw_buf, page, qd)?;
        if round >= 3 {
            rates.push(moved, engine, (n * page) as u64, raw_time);
        }
    }
    let m = t.metrics();
    if m.engine.spill_failed + m.engine.admission_declined + m.engine.budget_deferred > 0 {
        println!("   note: spill failed/declined/deferred {:?}", m.engine);
    }
    t.check_invariants()?;
    Ok(SpillResult { rates, backend, direct })
}

struct OnboardResult {
    rates: Rates,
    g2_latency: Vec<f64>,
    g3_latency: Vec<f64>,
}

/// Reopens the G3 directory the spill experiment left (warm restart: every page lives only in
/// G3) in an engine with default workers and onboards whole prefixes from it.
fn onboard_vs_raw(
    plan: &Plan,
    case: &Case,
    g3_dir: &Path,
    raw: &kvtier::io::SlabFile,
    raw_buf: &mut [u8],
    qd: usize,
) -> Result<OnboardResult> {
    let page = case.layout.page_bytes();
    let n = case.pages;
    let samples = case.samples;
    // No G1 watermark: the onboarded blocks must not be offloaded again behind our back.
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(2 * samples))
        .with_disk(disk_config(g3_dir, case))
        .with_g1_low_watermark(0.0);
    let t = TieredCache::new(CacheConfig::new(case.layout, n + samples).with_watermark(0.0), config)?;
    // The last three spill rounds are in G3; alternate between the two oldest so that each
    // round reads pages that G1 gave up.
    let last = plan.rounds + 2;
    // (The few pages the admission filter declined are not there.)
    let g3 = t.g3().ok_or("no G3")?;
    let in_g3 = |round| hashes(1, round, n).into_iter().filter(|h| g3.contains(*h)).collect::<Vec<_>>();
    let sets = [in_g3(last - 2), in_g3(last - 1)];
    if sets.iter().any(|s| s.len() < n * 9 / 10) {
        return Err("the spilled pages are not in G3 after the restart".into());
    }
    let mut rates = Rates::default();
    for round in 0..plan.rounds + 1 {
        let set = &sets[round % 2];
        let start = Instant::now();
        let tickets = set.chunks(PREFIX_BLOCKS).map(|p| t.onboard(p)).collect::<kvtier::Result<Vec<_>>>()?;
        let mut loaded = 0;
        for ticket in &tickets {
            loaded += ticket.wait().from_g3;
        }
        let engine = start.elapsed();
        drop(tickets);
        let raw_time = raw_uring(raw.file(), Dir::Read, raw_buf, page, qd)?;
        if round > 0 {
            rates.push((loaded * page) as u64, engine, (n * page) as u64, raw_time);
        }
    }

    // Single pages from G3: the last spill round, never onboarded.
    let mut g3_latency = Vec::with_capacity(samples);
    for &h in in_g3(last).iter().take(samples) {
        let start = Instant::now();
        let ticket = t.onboard(&[h])?;
        let outcome = ticket.wait();
        g3_latency.push(start.elapsed().as_secs_f64() * 1e6);
        if outcome.from_g3 != 1 {
            return Err(format!("single-page onboard from G3: {outcome:?}").into());
        }
    }
    // Single pages from G2: fresh pages stored there directly.
    let data = vec![3u8; page];
    let from_g2 = hashes(2, 0, samples);
    for &h in &from_g2 {
        t.store(h, |p| {
            p.copy_from_slice(&data);
            Ok(())
        })?;
    }
    let mut g2_latency = Vec::with_capacity(samples);
    for &h in &from_g2 {
        let start = Instant::now();
        let ticket = t.onboard(&[h])?;
        let outcome = ticket.wait();
        g2_latency.push(start.elapsed().as_secs_f64() * 1e6);
        if outcome.from_g2 != 1 {
            return Err(format!("single-page onboard from G2: {outcome:?}").into());
        }
    }
    t.quiesce()?;
    t.check_invariants()?;
    Ok(OnboardResult { rates, g2_latency, g3_latency })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// The raw reference: `buf.len() / page` O_DIRECT transfers of `page` bytes at consecutive
/// offsets of `file`, straight through one io_uring with `qd` operations kept in flight (a new
/// one is queued as soon as one completes). Returns the wall time.
fn raw_uring(file: &File, dir: Dir, buf: &mut [u8], page: usize, qd: usize) -> Result<Duration> {
    let n = buf.len() / page;
    let mut ring = IoUring::new(qd as u32)?;
    let fd = types::Fd(file.as_raw_fd());
    let base = buf.as_mut_ptr();
    let (mut next, mut in_flight, mut done) = (0usize, 0usize, 0usize);
    let mut error: Option<String> = None;
    let start = Instant::now();
    while done < n {
        while in_flight < qd && next < n && error.is_none() {
            // SAFETY: `next < n`, so the range [next * page, (next + 1) * page) is inside `buf`.
            let ptr = unsafe { base.add(next * page) };
            let offset = (next * page) as u64;
            let entry = match dir {
                Dir::Read => opcode::Read::new(fd, ptr, page as u32).offset(offset).build(),
                Dir::Write => opcode::Write::new(fd, ptr, page as u32).offset(offset).build(),
            };
            // SAFETY: the entry points into `buf`, which is mutably borrowed for this whole
            // function, and the loop below reaps every pushed entry before returning, so the
            // buffer outlives the kernel's use of it; each entry has its own range.
            if unsafe { ring.submission().push(&entry.user_data(next as u64)) }.is_err() {
                break;
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Entries in flight still own their buffers: a hard failure ends the process.
            Err(e) => panic!("io_uring_enter failed with operations in flight: {e}"),
        }
        for cqe in ring.completion() {
            in_flight -= 1;
            done += 1;
            if cqe.result() != page as i32 && error.is_none() {
                error = Some(format!("raw io_uring transfer {} returned {}", cqe.user_data(), cqe.result()));
            }
        }
    }
    let elapsed = start.elapsed();
    match error {
        Some(e) => Err(e.into()),
        None => Ok(elapsed),
    }
}
