//! Behaviour of the G3 SSD tier through its public API, on real files.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvtier::io::{AlignedBuf, BackendKind, Fault, FaultyBackend, IoConfig, open_backend};
use kvtier::tier::INDEX_FILE;
use kvtier::tier::format::parse_header;
use kvtier::tier::format::{HEADER_BYTES, RECORD_BYTES, STATE_WRITING};
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::{BlockHash, Dtype, Error, KvLayout, Tier};

/// A directory removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("kvtier-g3-{tag}-{}-{n}", std::process::id())))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 512-byte pages: slots are padded to 4096, every IO goes through a bounce buffer.
fn small_layout() -> KvLayout {
    KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap()
}

/// 8 KiB pages: aligned caller buffers are read and written directly.
fn aligned_layout() -> KvLayout {
    KvLayout::new(4, 4, 64, Dtype::F16, 2).unwrap()
}

fn config(dir: &TestDir, slots: usize, backend: BackendKind) -> DiskConfig {
    DiskConfig::new(dir.path())
        .with_capacity_slots(slots)
        .with_slots_per_file(3)
        .with_model_id("test-model")
        .with_io(IoConfig::default().with_backend(backend).with_queue_depth(4))
}

fn page(layout: &KvLayout, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..layout.page_bytes())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(tier: &DiskTier, hash: u128, data: &[u8]) -> Result<bool, Error> {
    tier.write_pages(&[(BlockHash(hash), data)]).pop().unwrap()
}

fn read(tier: &DiskTier, hash: u128) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; tier.page_bytes()];
    match tier.read_pages(&mut [(BlockHash(hash), &mut buf[..])]).pop().unwrap() {
        Ok(true) => Some(buf),
        Ok(false) => None,
        Err(e) => panic!("read error {e}"),
    }
}

fn roundtrip(backend: BackendKind, layout: KvLayout) {
    let dir = TestDir::new("roundtrip");
    let tier = DiskTier::open(&layout, config(&dir, 8, backend)).unwrap();
    let pages: Vec<Vec<u8>> = (0..6).map(|i| page(&layout, i)).collect();
    let batch: Vec<(BlockHash, &[u8])> =
        pages.iter().enumerate().map(|(i, p)| (BlockHash(i as u128), &p[..])).collect();
    let results = tier.write_pages(&batch);
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
    // Already present: not written again.
    assert!(matches!(write(&tier, 0, &pages[0]), Ok(false)));
    // Unaligned (Vec) buffers, in one batch, with a miss in the middle.
    let mut bufs: Vec<Vec<u8>> = (0..7).map(|_| vec![0u8; layout.page_bytes()]).collect();
    let mut reqs: Vec<(BlockHash, &mut [u8])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| (BlockHash(if i == 6 { 99 } else { i as u128 }), &mut b[..]))
        .collect();
    let results = tier.read_pages(&mut reqs);
    assert!(results[..6].iter().all(|r| matches!(r, Ok(true))));
    assert!(matches!(results[6], Ok(false)));
    for i in 0..6 {
        assert_eq!(bufs[i], pages[i], "page {i}");
    }
    // Aligned buffers.
    let mut aligned = AlignedBuf::new(layout.page_bytes()).unwrap();
    assert!(matches!(tier.read_pages(&mut [(BlockHash(3), &mut aligned[..])])[0], Ok(true)));
    assert_eq!(&aligned[..], &pages[3][..]);
    let mut aligned_page = AlignedBuf::new(layout.page_bytes()).unwrap();
    aligned_page.copy_from_slice(&page(&layout, 77));
    assert!(matches!(write(&tier, 77, &aligned_page), Ok(true)));
    assert_eq!(read(&tier, 77).unwrap(), &aligned_page[..]);
    let m = tier.metrics();
    assert_eq!((m.pages_written, m.hits, m.misses, m.used_slots), (7, 8, 1, 7));
    assert_eq!(m.bytes_written, 7 * layout.page_bytes() as u64);
    assert_eq!(tier.longest_prefix(&[BlockHash(0), BlockHash(1), BlockHash(50), BlockHash(2)]), 2);
    // Wrong buffer sizes are typed errors, not panics.
    assert!(matches!(write(&tier, 5000, &[0u8; 3]), Err(Error::LayoutMismatch { .. })));
    let mut short = [0u8; 7];
    assert!(matches!(tier.read_pages(&mut [(BlockHash(1), &mut short[..])])[0], Err(Error::LayoutMismatch { .. })));
}

#[test]
fn roundtrip_psync() {
    roundtrip(BackendKind::Psync, small_layout());
    roundtrip(BackendKind::Psync, aligned_layout());
}

#[test]
fn roundtrip_uring() {
    if open_backend(&IoConfig::default().with_backend(BackendKind::Uring)).is_err() {
        return; // io_uring forbidden here; Auto falls back (see auto_backend_falls_back)
    }
    roundtrip(BackendKind::Uring, small_layout());
    roundtrip(BackendKind::Uring, aligned_layout());
}

#[test]
fn auto_backend_falls_back() {
    let dir = TestDir::new("auto");
    let layout = small_layout();
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Auto)).unwrap();
    assert!(["io_uring", "psync"].contains(&tier.backend_name()));
    let uring_works = open_backend(&IoConfig::default().with_backend(BackendKind::Uring)).is_ok();
    assert_eq!(tier.backend_name() == "io_uring", uring_works);
    drop(tier);
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert_eq!(tier.backend_name(), "psync");
    assert!(matches!(write(&tier, 1, &page(&layout, 1)), Ok(true)));
}

#[test]
fn lru_eviction_when_full() {
    let dir = TestDir::new("lru");
    let layout = small_layout();
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    for i in 0..4 {
        assert!(matches!(write(&tier, i, &page(&layout, i as u64)), Ok(true)));
    }
    assert!(read(&tier, 0).is_some()); // 0 becomes most recently used; 1 is now the oldest
    assert!(matches!(write(&tier, 4, &page(&layout, 4)), Ok(true)));
    assert!(!tier.contains(BlockHash(1)));
    for i in [0, 2, 3, 4] {
        assert_eq!(read(&tier, i).unwrap(), page(&layout, i as u64));
    }
    let m = tier.metrics();
    assert_eq!((m.evictions, m.used_slots, m.capacity_slots), (1, 4, 4));
}

#[test]
fn pinned_slots_are_not_evicted() {
    let dir = TestDir::new("pin");
    let layout = small_layout();
    let tier = DiskTier::open(&layout, config(&dir, 3, BackendKind::Psync)).unwrap();
    for i in 0..3 {
        write(&tier, i, &page(&layout, i as u64)).unwrap();
    }
    assert!(tier.pin(BlockHash(0)));
    assert!(tier.pin(BlockHash(1)));
    assert!(!tier.pin(BlockHash(42)));
    for i in 10..20 {
        assert!(matches!(write(&tier, i, &page(&layout, i as u64)), Ok(true)));
    }
    assert_eq!(read(&tier, 0).unwrap(), page(&layout, 0));
    assert_eq!(read(&tier, 1).unwrap(), page(&layout, 1));
    assert_eq!(tier.metrics().pinned_slots, 2);
    // Everything pinned: writes are refused, not errors.
    assert!(tier.pin(BlockHash(19)));
    assert!(matches!(write(&tier, 100, &page(&layout, 100)), Ok(false)));
    assert_eq!(tier.metrics().no_slot_refusals, 1);
    assert!(tier.unpin(BlockHash(0)));
    assert!(!tier.unpin(BlockHash(0)));
    assert!(matches!(write(&tier, 100, &page(&layout, 100)), Ok(true)));
    assert!(!tier.contains(BlockHash(0)));
    assert!(tier.contains(BlockHash(1)));
}

#[test]
fn remove_frees_the_slot_first() {
    let dir = TestDir::new("remove");
    let layout = small_layout();
    let tier = DiskTier::open(&layout, config(&dir, 3, BackendKind::Psync)).unwrap();
    for i in 0..3 {
        write(&tier, i, &page(&layout, i as u64)).unwrap();
    }
    assert!(tier.remove(BlockHash(2)));
    assert!(!tier.remove(BlockHash(2)));
    assert!(!tier.contains(BlockHash(2)));
    assert!(read(&tier, 2).is_none());
    // The removed slot is reused before the LRU page 0.
    assert!(matches!(write(&tier, 3, &page(&layout, 3)), Ok(true)));
    assert!(tier.contains(BlockHash(0)));
    // A removed hash can be stored again.
    assert!(tier.remove(BlockHash(3)));
    assert!(matches!(write(&tier, 3, &page(&layout, 33)), Ok(true)));
    assert_eq!(read(&tier, 3).unwrap(), page(&layout, 33));
    assert_eq!(tier.metrics().evictions, 0);
}

#[test]
fn restart_recovers_pages_in_lru_order() {
    let dir = TestDir::new("restart");
    let layout = aligned_layout();
    {
        let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Auto)).unwrap();
        for i in 0..4 {
            write(&tier, i, &page(&layout, i as u64)).unwrap();
        }
        assert!(tier.remove(BlockHash(3)));
    }
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Auto)).unwrap();
    let m = tier.metrics();
    assert_eq!((m.recovered, m.used_slots), (3, 3));
    assert!(!tier.contains(BlockHash(3)));
    for i in 0..3 {
        assert_eq!(read(&tier, i).unwrap(), page(&layout, i as u64));
    }
    drop(tier);
    // Generation order survives: 0 is the oldest write, evicted first once the tier is full.
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Auto)).unwrap();
    write(&tier, 10, &page(&layout, 10)).unwrap();
    write(&tier, 11, &page(&layout, 11)).unwrap();
    assert!(!tier.contains(BlockHash(0)));
    assert!(tier.contains(BlockHash(1)) && tier.contains(BlockHash(2)));
    assert_eq!(tier.fingerprint().model_id, "test-model");
}

#[test]
fn open_twice_is_refused() {
    let dir = TestDir::new("lock");
    let layout = small_layout();
    let _tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    let err = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap_err();
    assert!(matches!(err, Error::Io { tier: Tier::G3, op: "lock", .. }), "{err}");
}

#[test]
fn other_fingerprint_is_an_error_or_wiped() {
    let dir = TestDir::new("fingerprint");
    let layout = small_layout();
    {
        let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
        write(&tier, 1, &page(&layout, 1)).unwrap();
    }
    let other_model = config(&dir, 4, BackendKind::Psync).with_model_id("other");
    assert!(matches!(
        DiskTier::open(&layout, other_model.clone()),
        Err(Error::Fingerprint { tier: Tier::G3, field: "model_id" })
    ));
    let other_layout = KvLayout::new(3, 2, 8, Dtype::F16, 4).unwrap();
    assert!(matches!(
        DiskTier::open(&other_layout, config(&dir, 4, BackendKind::Psync)),
        Err(Error::Fingerprint { field: "layers", .. })
    ));
    let other_tp = config(&dir, 4, BackendKind::Psync).with_tp(1, 2);
    assert!(matches!(DiskTier::open(&layout, other_tp), Err(Error::Fingerprint { field: "tp_rank", .. })));
    assert!(matches!(
        DiskTier::open(&layout, config(&dir, 5, BackendKind::Psync)),
        Err(Error::Fingerprint { field: "slot_count", .. })
    ));
    // Nothing was touched by the refusals.
    {
        let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
        assert_eq!(read(&tier, 1).unwrap(), page(&layout, 1));
    }
    let tier = DiskTier::open(&layout, other_model.with_wipe_on_mismatch(true)).unwrap();
    assert!(!tier.contains(BlockHash(1)));
    assert_eq!(tier.metrics().recovered, 0);
    assert_eq!(tier.fingerprint().model_id, "other");
    assert!(matches!(write(&tier, 1, &page(&layout, 1)), Ok(true)));
}

fn slab_path(dir: &TestDir, file: usize) -> PathBuf {
    dir.path().join(format!("slab-{file:05}.kvt"))
}

fn patch(path: &Path, offset: u64, f: impl FnOnce(&mut [u8])) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    f(&mut byte);
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn flipped_byte_is_a_counted_miss() {
    let dir = TestDir::new("flip");
    let layout = small_layout();
    {
        let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
        write(&tier, 1, &page(&layout, 1)).unwrap(); // the first free slot: slot 0 of file 0
        write(&tier, 2, &page(&layout, 2)).unwrap();
    }
    patch(&slab_path(&dir, 0), 100, |b| b[0] ^= 0x01);
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert!(tier.contains(BlockHash(1))); // the record is intact; the data is not
    let mut buf = vec![0xAAu8; layout.page_bytes()];
    assert!(matches!(tier.read_pages(&mut [(BlockHash(1), &mut buf[..])])[0], Ok(false)));
    assert_ne!(buf, page(&layout, 1));
    assert!(!tier.contains(BlockHash(1)));
    assert_eq!(read(&tier, 2).unwrap(), page(&layout, 2));
    let m = tier.metrics();
    assert_eq!((m.corrupt, m.misses, m.hits, m.used_slots), (1, 1, 1, 1));
    drop(tier);
    // The drop is durable: the record was cleared.
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert!(!tier.contains(BlockHash(1)));
    assert_eq!(tier.metrics().recovered, 1);
}

#[test]
fn torn_records_are_ignored_after_reopen() {
    let dir = TestDir::new("torn");
    let layout = small_layout();
    {
        let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
        for i in 0..3 {
            write(&tier, i, &page(&layout, i as u64)).unwrap(); // slots 0, 1, 2
        }
    }
    let index = dir.path().join(INDEX_FILE);
    let record = |slot: u64| (HEADER_BYTES + slot as usize * RECORD_BYTES) as u64;
    // Slot 0: killed between the WRITING mark and the commit (state WRITING).
    let state_at = std::mem::offset_of!(kvtier::tier::format::SlotRecord, state) as u64;
    let file = std::fs::OpenOptions::new().write(true).open(&index).unwrap();
    file.write_all_at(&STATE_WRITING.to_ne_bytes(), record(0) + state_at).unwrap();
    drop(file);
    // Slot 1: a torn record (one field changed, check value stale).
    patch(&index, record(1) + 24, |b| b[0] ^= 0x10);
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert!(!tier.contains(BlockHash(0)));
    assert!(!tier.contains(BlockHash(1)));
    assert_eq!(read(&tier, 2).unwrap(), page(&layout, 2));
    assert_eq!(tier.metrics().recovered, 1);
    // Their slots are free again.
    for i in 10..13 {
        assert!(matches!(write(&tier, i, &page(&layout, i as u64)), Ok(true)));
    }
    assert!(tier.contains(BlockHash(2)));
}

#[test]
fn garbage_or_short_header_is_a_typed_error() {
    let layout = small_layout();
    for contents in [b"definitely not a kvtier header".to_vec(), vec![0xffu8; 8192], vec![7u8; 3]] {
        let dir = TestDir::new("garbage");
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join(INDEX_FILE), &contents).unwrap();
        let err = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap_err();
        assert!(matches!(err, Error::BadHeader { tier: Tier::G3, .. }), "{err}");
        assert!(matches!(parse_header(&contents), Err(Error::BadHeader { .. })));
    }
    // A blank index (creation interrupted before the header) is simply initialized.
    let dir = TestDir::new("blank");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join(INDEX_FILE), vec![0u8; 100]).unwrap();
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert!(matches!(write(&tier, 1, &page(&layout, 1)), Ok(true)));
    // A truncated index with a good header is an error too.
    drop(tier);
    let index = dir.path().join(INDEX_FILE);
    std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(HEADER_BYTES as u64 + 10).unwrap();
    assert!(matches!(DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)), Err(Error::BadHeader { .. })));
}

#[test]
fn missing_slab_file_loses_only_its_slots() {
    let dir = TestDir::new("lostslab");
    let layout = small_layout();
    {
        let tier = DiskTier::open(&layout, config(&dir, 6, BackendKind::Psync)).unwrap();
        for i in 0..6 {
            write(&tier, i, &page(&layout, i as u64)).unwrap(); // slots 0..6, 3 per file
        }
    }
    std::fs::remove_file(slab_path(&dir, 1)).unwrap();
    let tier = DiskTier::open(&layout, config(&dir, 6, BackendKind::Psync)).unwrap();
    assert_eq!(tier.metrics().recovered, 3);
    assert_eq!(tier.longest_prefix(&(0..6).map(BlockHash).collect::<Vec<_>>()), 3);
    assert!(read(&tier, 4).is_none());
    assert!(matches!(write(&tier, 4, &page(&layout, 4)), Ok(true)));
    assert_eq!(read(&tier, 4).unwrap(), page(&layout, 4));
}

#[test]
fn files_are_private() {
    let dir = TestDir::new("mode");
    let layout = small_layout();
    let tier = DiskTier::open(&layout, config(&dir, 7, BackendKind::Psync)).unwrap();
    write(&tier, 1, &page(&layout, 1)).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", entry.file_name());
        names.push(entry.file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(names, [INDEX_FILE, "slab-00000.kvt", "slab-00001.kvt", "slab-00002.kvt"]);
    assert_eq!(std::fs::metadata(slab_path(&dir, 2)).unwrap().len(), tier.slot_bytes() as u64);
    assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700);
}

fn faulty(dir: &TestDir, layout: &KvLayout, fault: Fault) -> DiskTier {
    let cfg = config(dir, 4, BackendKind::Psync).with_enospc_backoff(Duration::from_millis(200));
    let inner = open_backend(&cfg.io).unwrap();
    DiskTier::open_with_backend(layout, cfg, Box::new(FaultyBackend::new(inner, fault))).unwrap()
}

#[test]
fn enospc_is_reported_then_refused_until_backoff() {
    let dir = TestDir::new("enospc");
    let layout = small_layout();
    {
        let tier = faulty(&dir, &layout, Fault::FailWrites);
        let results = tier.write_pages(&[(BlockHash(1), &page(&layout, 1)), (BlockHash(2), &page(&layout, 2))]);
        assert!(results.iter().all(|r| matches!(r, Err(Error::DiskFull { tier: Tier::G3 }))));
        assert!(!tier.contains(BlockHash(1)));
        let m = tier.metrics();
        assert!(m.disk_full);
        assert_eq!((m.write_errors, m.used_slots), (2, 0));
        // Refused quickly, without IO.
        assert!(matches!(write(&tier, 3, &page(&layout, 3)), Ok(false)));
        assert_eq!(tier.metrics().enospc_refusals, 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(!tier.metrics().disk_full);
        assert!(matches!(write(&tier, 3, &page(&layout, 3)), Err(Error::DiskFull { .. })));
    }
    // Nothing half-written is served after a reopen.
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    assert_eq!(tier.metrics().recovered, 0);
}

#[test]
fn some_failed_writes_leave_a_consistent_tier() {
    let dir = TestDir::new("faileverys");
    let layout = small_layout();
    let tier = faulty(&dir, &layout, Fault::FailEvery(2));
    let pages: Vec<Vec<u8>> = (0..4).map(|i| page(&layout, i)).collect();
    let batch: Vec<(BlockHash, &[u8])> =
        pages.iter().enumerate().map(|(i, p)| (BlockHash(i as u128), &p[..])).collect();
    let results = tier.write_pages(&batch);
    let stored: Vec<bool> = results.iter().map(|r| matches!(r, Ok(true))).collect();
    assert_eq!(stored, [true, false, true, false]);
    assert!(matches!(results[1], Err(Error::Io { tier: Tier::G3, op: "write", .. })));
    assert_eq!(tier.metrics().used_slots, 2);
    assert!(!tier.metrics().disk_full); // EIO is not a full disk
    // Failed pages can be written again (operations 5 and 6: 6 fails).
    let retry = tier.write_pages(&[batch[1], batch[3]]);
    assert!(matches!(retry[0], Ok(true)) && retry[1].is_err());
    drop(tier);
    let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
    for i in 0..4u128 {
        assert_eq!(read(&tier, i), (i != 3).then(|| pages[i as usize].clone()));
    }
}

#[test]
fn failed_and_corrupt_reads_are_misses() {
    for (fault, corrupt) in [(Fault::FailReads, false), (Fault::CorruptReads, true)] {
        for layout in [small_layout(), aligned_layout()] {
            let dir = TestDir::new("readfault");
            {
                let tier = DiskTier::open(&layout, config(&dir, 4, BackendKind::Psync)).unwrap();
                write(&tier, 1, &page(&layout, 1)).unwrap();
                write(&tier, 2, &page(&layout, 2)).unwrap();
            }
            let tier = faulty(&dir, &layout, fault);
            let mut aligned = AlignedBuf::new(layout.page_bytes()).unwrap();
            let mut plain = vec![0u8; layout.page_bytes()];
            let results = tier.read_pages(&mut [(BlockHash(1), &mut aligned[..]), (BlockHash(2), &mut plain[..])]);
            assert!(results.iter().all(|r| matches!(r, Ok(false))), "{results:?}");
            assert_ne!(&aligned[..], &page(&layout, 1)[..]);
            assert_ne!(plain, page(&layout, 2));
            let m = tier.metrics();
            assert_eq!((m.misses, m.hits, m.used_slots), (2, 0, 0));
            assert_eq!(m.corrupt, if corrupt { 2 } else { 0 });
            assert_eq!(m.read_errors, if corrupt { 0 } else { 2 });
            assert!(!tier.contains(BlockHash(1)));
            // The tier still works: the slots are reused.
            for i in 10..14 {
                assert!(matches!(write(&tier, i, &page(&layout, i as u64)), Ok(true)));
            }
        }
    }
}

#[test]
fn concurrent_writers_and_readers() {
    let dir = TestDir::new("concurrent");
    let layout = aligned_layout();
    let tier = Arc::new(DiskTier::open(&layout, config(&dir, 64, BackendKind::Auto)).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let tier = Arc::clone(&tier);
            std::thread::spawn(move || {
                for round in 0..20u64 {
                    let hashes: Vec<u64> = (0..4).map(|j| t * 1000 + round * 4 + j).collect();
                    let pages: Vec<Vec<u8>> = hashes.iter().map(|h| page(&layout, *h)).collect();
                    let batch: Vec<(BlockHash, &[u8])> =
                        hashes.iter().zip(&pages).map(|(h, p)| (BlockHash(u128::from(*h)), &p[..])).collect();
                    for r in tier.write_pages(&batch) {
                        r.unwrap();
                    }
                    for h in &hashes {
                        // Another thread may have evicted it; a hit is always the right bytes.
                        if let Some(data) = read(&tier, u128::from(*h)) {
                            assert_eq!(data, page(&layout, *h));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = tier.metrics();
    assert_eq!(m.pages_written, 320);
    assert_eq!(m.used_slots, 64);
    assert_eq!(m.corrupt + m.read_errors, 0);
}

#[test]
fn config_validation() {
    assert!(DiskConfig::default().validate().is_err());
    let ok = DiskConfig::new("/nonexistent/kvtier");
    assert!(ok.validate().is_ok());
    assert!(ok.clone().with_capacity_slots(0).validate().is_err());
    assert!(ok.clone().with_slots_per_file(0).validate().is_err());
    assert!(ok.clone().with_tp(2, 2).validate().is_err());
    assert!(ok.clone().with_model_id("x".repeat(300)).validate().is_err());
    assert!(ok.with_io(IoConfig::default().with_queue_depth(0)).validate().is_err());
    let d = DiskConfig::default();
    assert_eq!(
        (d.capacity_slots, d.slots_per_file, d.tp_rank, d.tp_size, d.wipe_on_mismatch),
        (1024, 256, 0, 1, false)
    );
}

const CRASH_DIR_ENV: &str = "KVTIER_G3_CRASH_DIR";
const CRASH_START_ENV: &str = "KVTIER_G3_CRASH_START";

fn crash_config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir).with_capacity_slots(32).with_slots_per_file(8).with_model_id("crash")
}

/// Child half of `sigkill_mid_write_never_serves_wrong_bytes`: writes (and removes) pages until
/// it is killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(start)) = (std::env::var(CRASH_DIR_ENV), std::env::var(CRASH_START_ENV)) else { return };
    let start: u64 = start.parse().unwrap();
    let layout = aligned_layout();
    let tier = DiskTier::open(&layout, crash_config(Path::new(&dir))).unwrap();
    for round in 0u64.. {
        let hashes: Vec<u64> = (0..8).map(|j| start + round * 8 + j).collect();
        let pages: Vec<Vec<u8>> = hashes.iter().map(|h| page(&layout, *h)).collect();
        let batch: Vec<(BlockHash, &[u8])> =
            hashes.iter().zip(&pages).map(|(h, p)| (BlockHash(u128::from(*h)), &p[..])).collect();
        for r in tier.write_pages(&batch) {
            r.unwrap();
        }
        tier.remove(BlockHash(u128::from(hashes[round as usize % 8])));
        if round == 0 {
            std::fs::write(Path::new(&dir).join("started"), b"").unwrap();
        }
    }
}

/// Kills a writer process at arbitrary instants; after every restart each served page has exactly
/// the bytes written for its hash.
#[test]
fn sigkill_mid_write_never_serves_wrong_bytes() {
    let dir = TestDir::new("sigkill");
    let layout = aligned_layout();
    let exe = std::env::current_exe().unwrap();
    for run in 0..4u64 {
        let started = dir.path().join("started");
        let _ = std::fs::remove_file(&started);
        let mut child = std::process::Command::new(&exe)
            .args(["crash_child", "--exact", "--test-threads=1"])
            .env(CRASH_DIR_ENV, dir.path())
            .env(CRASH_START_ENV, (run << 32).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..1000 {
            if started.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(started.exists(), "writer did not start");
        std::thread::sleep(Duration::from_millis(15 + 23 * run));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let tier = DiskTier::open(&layout, crash_config(dir.path())).unwrap();
        let recovered = tier.metrics().recovered;
        assert!(recovered > 0);
        let mut served = 0;
        for r in 0..=run {
            for h in (r << 32)..(r << 32) + 200_000 {
                if tier.contains(BlockHash(u128::from(h))) {
                    let data = read(&tier, u128::from(h)).expect("a recovered page verifies");
                    assert_eq!(data, page(&layout, h));
                    served += 1;
                }
            }
        }
        assert_eq!(served, recovered);
        assert_eq!(tier.metrics().corrupt, 0);
    }
}

/// Random operation sequences checked against a model of what must hold: hits return the bytes
/// written, pinned pages stay, removed pages are gone, and a reopen preserves exactly the stored
/// set (and forgets pins).
#[test]
fn random_operations_against_a_model() {
    use std::collections::{BTreeSet, HashMap};
    let layout = small_layout();
    for seed in 1..=4u64 {
        let dir = TestDir::new("model");
        let cfg = || config(&dir, 8, if seed % 2 == 0 { BackendKind::Psync } else { BackendKind::Auto });
        let mut tier = DiskTier::open(&layout, cfg()).unwrap();
        let mut pins: HashMap<u128, u32> = HashMap::new();
        let mut x = seed;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..400 {
            let h = u128::from(rand(16));
            match rand(10) {
                0..=3 => {
                    let n = 1 + rand(4) as u128;
                    let pages: Vec<Vec<u8>> = (h..h + n).map(|k| page(&layout, k as u64)).collect();
                    let batch: Vec<(BlockHash, &[u8])> =
                        (h..h + n).zip(&pages).map(|(k, p)| (BlockHash(k), &p[..])).collect();
                    for (k, r) in (h..h + n).zip(tier.write_pages(&batch)) {
                        if r.unwrap() {
                            assert!(tier.contains(BlockHash(k)));
                        }
                    }
                }
                4..=5 => {
                    let present = tier.contains(BlockHash(h));
                    let got = read(&tier, h);
                    assert_eq!(got.is_some(), present);
                    if let Some(data) = got {
                        assert_eq!(data, page(&layout, h as u64));
                    }
                }
                6 if pins.get(&h).copied().unwrap_or(0) == 0 => {
                    let present = tier.contains(BlockHash(h));
                    assert_eq!(tier.remove(BlockHash(h)), present);
                    assert!(!tier.contains(BlockHash(h)));
                    assert!(read(&tier, h).is_none());
                }
                7 => {
                    if pins.values().sum::<u32>() < 6 && tier.pin(BlockHash(h)) {
                        *pins.entry(h).or_default() += 1;
                    }
                }
                8 => {
                    let pinned = pins.get(&h).copied().unwrap_or(0);
                    assert_eq!(tier.unpin(BlockHash(h)), pinned > 0);
                    if pinned > 0 {
                        pins.insert(h, pinned - 1);
                    }
                }
                _ => {
                    let before: BTreeSet<u128> = (0..20).filter(|k| tier.contains(BlockHash(*k))).collect();
                    drop(tier);
                    tier = DiskTier::open(&layout, cfg()).unwrap();
                    let after: BTreeSet<u128> = (0..20).filter(|k| tier.contains(BlockHash(*k))).collect();
                    assert_eq!(before, after);
                    assert_eq!(tier.metrics().recovered, after.len() as u64);
                    pins.clear();
                }
            }
            for (k, n) in &pins {
                assert!(*n == 0 || tier.contains(BlockHash(*k)), "pinned page {k} was evicted");
            }
            let m = tier.metrics();
            assert!(m.used_slots <= m.capacity_slots);
            assert_eq!(m.corrupt + m.read_errors, 0);
        }
    }
}
