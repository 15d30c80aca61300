//! Issue 15, item 4: crash ordering of the SSD tier, at every IO submission of a run.
//!
//! A child process runs a fixed workload on a `DiskTier` (batches of page writes that evict,
//! removals, reads) through a fault backend that aborts the process at its N-th `submit` call,
//! after the first `N % 3` operations of that call; the parent does this for every N until the
//! workload completes, and after each crash reopens the directory and checks:
//! 1. every slot that is VALID holds the data written for its hash: each recovered page reads
//!    back verified, with no corrupt or failed read (a record marked VALID before its data IO
//!    completed fails here: its slot still holds another page, or zeros);
//! 2. nothing is recovered that was not stored when the last round finished or written by the
//!    round the crash interrupted;
//! 3. of what was stored at the end of the last finished round, only what the interrupted round
//!    can have evicted or removed is missing (a killed process loses nothing already reported
//!    stored: the page cache keeps records and data);
//! 4. the slot bookkeeping holds (`check_invariants`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use kvtier::io::{BackendKind, Fault, FaultyBackend, IoConfig, PsyncBackend};
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::{BlockHash, Dtype, KvLayout};

mod common;
use common::{TestDir, pattern};

const DIR_ENV: &str = "KVTIER_CRASH_POINT_DIR";
const AT_ENV: &str = "KVTIER_CRASH_POINT_AT";
const ROUNDS: u128 = 12;
const BATCH: u128 = 3;
const SLOTS: usize = 16;

fn layout() -> KvLayout {
    KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap() // 512-byte pages
}

fn config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir)
        .with_capacity_slots(SLOTS)
        .with_slots_per_file(SLOTS / 2)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync))
}

fn stored(tier: &DiskTier) -> BTreeSet<u128> {
    (0..ROUNDS * BATCH).filter(|&h| tier.contains(BlockHash(h))).collect()
}

/// The workload; with the fault backend it aborts the process at the chosen submission.
#[test]
fn crash_point_child() {
    let (Some(dir), Some(at)) = (std::env::var_os(DIR_ENV), std::env::var_os(AT_ENV)) else { return };
    let at: u64 = at.to_str().unwrap().parse().unwrap();
    let config = config(Path::new(&dir));
    let inner = Box::new(PsyncBackend::new(&config.io));
    let backend = FaultyBackend::new(inner, Fault::AbortAt { submission: at, after_ops: (at % 3) as usize });
    let tier = DiskTier::open_with_backend(&layout(), config, Box::new(backend)).unwrap();
    let pb = layout().page_bytes();
    for round in 0..ROUNDS {
        let pages: Vec<(BlockHash, Vec<u8>)> =
            (round * BATCH..(round + 1) * BATCH).map(|h| (BlockHash(h), pattern(BlockHash(h), pb))).collect();
        let batch: Vec<(BlockHash, &[u8])> = pages.iter().map(|(h, p)| (*h, &p[..])).collect();
        assert!(tier.write_pages(&batch).iter().all(|r| matches!(r, Ok(true))));
        if round % 4 == 3 {
            assert!(tier.remove(BlockHash(round * BATCH - 1)));
        }
        let mut a = vec![0u8; pb];
        let mut b = vec![0u8; pb];
        let (ha, hb) = (BlockHash(round * BATCH), BlockHash(round * BATCH / 2));
        let results = tier.read_pages(&mut [(ha, &mut a[..]), (hb, &mut b[..])]);
        assert!(matches!(results[0], Ok(true)) && a == pattern(ha, pb));
        if matches!(results[1], Ok(true)) {
            assert_eq!(b, pattern(hb, pb));
        }
        let list: Vec<String> = stored(&tier).iter().map(u128::to_string).collect();
        println!("stored {}", list.join(" "));
    }
    println!("done");
}

#[test]
fn no_slot_is_valid_before_its_data_at_any_crash_point() {
    let exe = std::env::current_exe().unwrap();
    let mut completed = false;
    for at in 1..200u64 {
        let dir = TestDir::new("crash-point");
        let out = Command::new(&exe)
            .args(["crash_point_child", "--exact", "--test-threads=1", "--nocapture"])
            .env(DIR_ENV, dir.path())
            .env(AT_ENV, at.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.lines().any(|l| l.ends_with("done")) {
            assert!(out.status.success(), "{:?}", out.status);
            assert!(at > 2 * ROUNDS as u64, "every round submits a write and a read");
            completed = true;
            break;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "submission {at}: not the injected abort\n{stdout}");
        let rounds: Vec<BTreeSet<u128>> = stdout
            .lines()
            .filter_map(|l| l.split_once("stored").map(|(_, rest)| rest)) // libtest may print before it
            .map(|l| l.split_whitespace().map(|h| h.parse().unwrap()).collect())
            .collect();
        let finished = rounds.len() as u128;
        let last = rounds.last().cloned().unwrap_or_default();
        let in_flight: BTreeSet<u128> = (finished * BATCH..(finished + 1) * BATCH).collect();

        let tier = DiskTier::open(&layout(), config(dir.path())).unwrap();
        let recovered = stored(&tier);
        assert_eq!(tier.metrics().recovered as usize, recovered.len());
        let pb = layout().page_bytes();
        for &h in &recovered {
            let mut buf = vec![0u8; pb];
            let hit = tier.read_pages(&mut [(BlockHash(h), &mut buf[..])]).remove(0);
            assert!(matches!(hit, Ok(true)), "submission {at}: recovered page {h} does not verify");
            assert!(buf == pattern(BlockHash(h), pb), "submission {at}: page {h}");
        }
        let m = tier.metrics();
        assert_eq!((m.corrupt, m.read_errors, m.misses), (0, 0, 0), "submission {at}");
        let unexpected: Vec<_> = recovered.difference(&last).filter(|h| !in_flight.contains(h)).collect();
        assert!(unexpected.is_empty(), "submission {at}: recovered {unexpected:?}, never stored");
        let lost = last.difference(&recovered).count() as u128;
        assert!(lost <= BATCH + 1, "submission {at}: {lost} stored pages lost ({last:?} -> {recovered:?})");
        tier.check_invariants(true).unwrap();
    }
    assert!(completed, "the workload never completed");
}
