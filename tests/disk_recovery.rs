//! `wipe_on_mismatch` as its docs promise it: a directory kvtier cannot use is started over
//! instead of refused, whatever is wrong with it.
//! (A corrupt header or a short index used to be refused with `BadHeader` even with
//! `wipe_on_mismatch`.)

use std::path::{Path, PathBuf};

use kvtier::io::{BackendKind, IoConfig};
use kvtier::tier::INDEX_FILE;
use kvtier::tier::format::HEADER_BYTES;
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::{BlockHash, Dtype, Error, KvLayout, Tier};

fn layout() -> KvLayout {
    KvLayout::new(1, 1, 64, Dtype::F16, 16).unwrap() // 4 KiB pages
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-recovery-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, wipe: bool) -> DiskConfig {
    DiskConfig::new(dir)
        .with_model_id("disk-recovery")
        .with_capacity_slots(8)
        .with_slots_per_file(4)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync))
        .with_wipe_on_mismatch(wipe)
}

/// A directory holding one page, closed again.
fn populated(tag: &str) -> PathBuf {
    let dir = fresh_dir(tag);
    let tier = DiskTier::open(&layout(), config(&dir, false)).unwrap();
    let page = vec![0x5A; layout().page_bytes()];
    assert!(matches!(tier.write_pages(&[(BlockHash(1), &page[..])]).pop(), Some(Ok(true))));
    drop(tier);
    dir
}

/// Overwrites the start of the index header (its magic and version) with garbage.
fn corrupt_header(dir: &Path) {
    use std::os::unix::fs::FileExt;
    let index = std::fs::OpenOptions::new().write(true).open(dir.join(INDEX_FILE)).unwrap();
    index.write_all_at(&[0xFF; 64], 0).unwrap();
}

/// The starting point: without `wipe_on_mismatch` a corrupt header is refused (this passes).
#[test]
fn a_corrupt_header_is_refused_without_wipe() {
    let dir = populated("refused");
    corrupt_header(&dir);
    let err = DiskTier::open(&layout(), config(&dir, false)).expect_err("a corrupt header");
    assert!(matches!(err, Error::BadHeader { tier: Tier::G3, .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `wipe_on_mismatch` the directory is started over: it opens empty and works.
#[test]
fn wipe_on_mismatch_recovers_a_corrupt_header() {
    let dir = populated("corrupt");
    corrupt_header(&dir);
    let tier = match DiskTier::open(&layout(), config(&dir, true)) {
        Ok(tier) => tier,
        Err(e) => panic!("wipe_on_mismatch did not recover a corrupt header: {e}"),
    };
    assert!(!tier.contains(BlockHash(1)), "nothing of the old directory is served");
    let page = vec![0x33; layout().page_bytes()];
    assert!(matches!(tier.write_pages(&[(BlockHash(2), &page[..])]).pop(), Some(Ok(true))));
    tier.check_invariants(true).unwrap();
    drop(tier);
    // and it is a good directory afterwards: it reopens warm without wiping
    let tier = DiskTier::open(&layout(), config(&dir, false)).unwrap();
    assert!(tier.contains(BlockHash(2)));
    drop(tier);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same for an index cut short after a good header (a crash while it was being extended).
#[test]
fn wipe_on_mismatch_recovers_a_short_index() {
    let dir = populated("short");
    let index = std::fs::OpenOptions::new().write(true).open(dir.join(INDEX_FILE)).unwrap();
    index.set_len(HEADER_BYTES as u64 + 10).unwrap();
    drop(index);
    assert!(matches!(DiskTier::open(&layout(), config(&dir, false)), Err(Error::BadHeader { .. })));
    let tier = match DiskTier::open(&layout(), config(&dir, true)) {
        Ok(tier) => tier,
        Err(e) => panic!("wipe_on_mismatch did not recover a short index: {e}"),
    };
    assert!(!tier.contains(BlockHash(1)));
    tier.check_invariants(true).unwrap();
    drop(tier);
    let _ = std::fs::remove_dir_all(&dir);
}
