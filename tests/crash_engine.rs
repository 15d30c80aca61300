//! Crash recovery through the engine: a child process runs a `TieredCache` whose G1 and G2 are
//! small, so that its requests' pages are offloaded continuously down to a G3 directory (and
//! some are onboarded back and checked); the parent kills it with SIGKILL at random moments,
//! 20 times, and after each kill reopens the directory warm and checks that every recovered
//! page verifies (its bytes are derived from its hash) and that onboarding through a new
//! engine serves exactly those bytes. The next child reopens the same directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvtier::offload::{Admission, OffloadConfig, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{BlockHash, CacheConfig, Dtype, Error, ExtraKeys, KvLayout};

mod common;
use common::pattern;
use common::{TestDir, XorShift};

const BS: usize = 16;
const DIR_ENV: &str = "KVTIER_ENGINE_CRASH_DIR";
const SEED_ENV: &str = "KVTIER_ENGINE_CRASH_SEED";
/// Prompts the children draw from; the parent checks every block of every one of them.
const PROMPTS: u32 = 1500;
const BLOCKS_PER_PROMPT: usize = 3;
const CYCLES: u64 = 20;

fn layout() -> KvLayout {
    KvLayout::new(2, 2, 32, Dtype::F16, BS as u32).unwrap() // 8 KiB pages
}

/// Prompt `i`: a 2-block prefix shared by its family of 10, then its own block and one token.
fn prompt(i: u32) -> Vec<u32> {
    let family = i / 10;
    let mut tokens: Vec<u32> = (0..2 * BS as u32).map(|t| family * 1000 + t).collect();
    tokens.extend((0..BS as u32 + 1).map(|t| 5_000_000 + i * 100 + t));
    tokens
}

fn engine(dir: &Path, workers: usize) -> TieredCache {
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(8))
        .with_disk(DiskConfig::new(dir).with_capacity_slots(64).with_slots_per_file(16).with_model_id("crash-engine"))
        .with_admission(Admission::All)
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_workers(workers);
    TieredCache::new(CacheConfig::new(layout(), 16).with_watermark(0.0), config).unwrap()
}

fn hashes(t: &TieredCache, tokens: &[u32]) -> Vec<BlockHash> {
    let mut h = Vec::new();
    t.g1().lock().hash_tokens(tokens, &ExtraKeys::default(), &mut h);
    h
}

/// Onboards `tokens`' prefix, admits it and checks every cached page; returns how many.
fn onboard_and_check(t: &TieredCache, tokens: &[u32]) -> usize {
    let h = hashes(t, tokens);
    let Ok(ticket) = t.onboard(&h) else { return 0 };
    ticket.wait();
    let mut core = t.g1().lock();
    let Ok(added) = core.add_sequence(tokens, &ExtraKeys::default()) else { return 0 };
    let table = core.block_table(added.seq).unwrap().to_vec();
    let page = core.layout().page_bytes();
    let cached = added.cached_tokens / BS;
    for (i, b) in table.iter().enumerate().take(cached) {
        assert!(core.page(*b).unwrap() == pattern(h[i], page).as_slice(), "wrong bytes served for block {i}");
    }
    core.free(added.seq).unwrap();
    cached
}

/// Child half: serves requests until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(seed)) = (std::env::var(DIR_ENV), std::env::var(SEED_ENV)) else { return };
    let mut rng = XorShift::new(seed.parse::<u64>().unwrap() | 1);
    let t = engine(Path::new(&dir), 1);
    let mut announced = false;
    for round in 0u64.. {
        let tokens = prompt(rng.below(PROMPTS as u64) as u32);
        if round % 4 == 3 {
            onboard_and_check(&t, &tokens); // reads from G3 get killed too
        } else {
            let h = hashes(&t, &tokens);
            let mut core = t.g1().lock();
            match core.add_sequence(&tokens, &ExtraKeys::default()) {
                Ok(added) => {
                    let table = core.block_table(added.seq).unwrap().to_vec();
                    let page = core.layout().page_bytes();
                    for (i, b) in table.iter().enumerate().skip(added.cached_tokens / BS) {
                        let data = h.get(i).map_or_else(|| vec![0xAB; page], |h| pattern(*h, page));
                        core.write_page(*b, &data).unwrap();
                    }
                    core.commit(added.seq).unwrap();
                    core.free(added.seq).unwrap();
                }
                Err(Error::OutOfBlocks { .. }) => {} // blocks pinned by copies in flight
                Err(e) => panic!("{e}"),
            }
        }
        // Ready to be killed once it has served a while and written to G3: on a loaded machine
        // 20 rounds can pass before the worker was ever scheduled, and a kill then finds nothing
        // below to recover.
        if round >= 20 && !announced && t.metrics().engine.g2_to_g3.pages > 0 {
            std::fs::write(Path::new(&dir).join("started"), b"").unwrap();
            announced = true;
        }
    }
}

#[test]
fn sigkill_the_engine_20_times_never_serves_wrong_bytes() {
    let started_at = Instant::now();
    let dir = TestDir::new("crash-engine");
    let exe = std::env::current_exe().unwrap();
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    let (mut verified, mut onboarded, mut recovered_total) = (0u64, 0u64, 0u64);
    for cycle in 0..CYCLES {
        let started = dir.path().join("started");
        let _ = std::fs::remove_file(&started);
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--test-threads=1"])
            .env(DIR_ENV, dir.path())
            .env(SEED_ENV, (cycle * 7919 + 1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.exists() {
            assert!(child.try_wait().unwrap().is_none(), "the child exited before it was killed");
            assert!(Instant::now() < deadline, "the child did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        assert!(child.try_wait().unwrap().is_none(), "the child failed (a wrong byte or a panic) before the kill");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // Warm restart: every recovered page verifies, and nothing else is there.
        let t = engine(dir.path(), 0);
        let g3 = t.g3().unwrap();
        let recovered = g3.metrics().recovered;
        let page = layout().page_bytes();
        let mut served = 0;
        let known: std::collections::BTreeSet<u128> = (0..PROMPTS)
            .flat_map(|i| hashes(&t, &prompt(i)).into_iter().take(BLOCKS_PER_PROMPT))
            .map(|h| h.0)
            .collect();
        for h in known.into_iter().map(BlockHash).filter(|h| g3.contains(*h)) {
            let mut buf = vec![0u8; page];
            let hit = g3.read_pages(&mut [(h, &mut buf[..])]).pop().unwrap().unwrap();
            assert!(hit, "cycle {cycle}: a recovered page does not verify");
            assert!(buf == pattern(h, page), "cycle {cycle}: a recovered page holds wrong bytes");
            served += 1;
        }
        assert_eq!(served, recovered, "cycle {cycle}: recovered pages that no prompt wrote");
        assert_eq!(g3.metrics().corrupt, 0);
        // And through the engine: onboard every prompt that G3 holds a prefix of.
        for i in 0..PROMPTS {
            let tokens = prompt(i);
            if t.longest_prefix(&hashes(&t, &tokens)).g3 > 0 {
                onboarded += onboard_and_check(&t, &tokens) as u64;
            }
        }
        t.quiesce().unwrap();
        t.check_invariants().unwrap();
        verified += served;
        recovered_total += recovered;
        assert!(cycle < 3 || recovered_total > 0, "nothing ever reached G3");
    }
    eprintln!(
        "[crash_engine] {CYCLES} SIGKILLs in {:.1?}: {recovered_total} pages recovered in total, {verified} verified \
         byte for byte, {onboarded} served through onboarding after restart, 0 wrong",
        started_at.elapsed()
    );
    assert!(verified > 0);
}
