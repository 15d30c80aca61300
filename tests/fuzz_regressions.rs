//! Inputs the fuzz targets (fuzz/fuzz_targets/) found to break kvtier, kept as plain tests so
//! that `cargo test` guards them without the fuzzer.

use kvtier::tier::format::{Fingerprint, Header, parse_header};
use kvtier::{Dtype, Error, KvLayout};

mod common;
use common::TestDir;

/// fuzz target `disk_header`: a header whose page size is within 4095 of 2^64 made the slot
/// size computation overflow: a panic with overflow checks, and without them a wrapped slot
/// size of 0 that the parser then accepted. It must be a typed [`Error::BadHeader`].
#[test]
fn header_with_page_size_near_u64_max_is_rejected_not_overflowed() {
    let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4).unwrap();
    for (page_bytes, slot_bytes) in [(u64::MAX, 0), (u64::MAX - 4094, 0), (u64::MAX, u64::MAX)] {
        let mut fingerprint = Fingerprint::new("m", &layout, 0, 1);
        fingerprint.page_bytes = page_bytes;
        let header = Header { fingerprint, slot_bytes, slot_count: 4, slots_per_file: 2 };
        let bytes = header.encode().unwrap();
        assert!(
            matches!(parse_header(&bytes), Err(Error::BadHeader { .. })),
            "page_bytes {page_bytes:#x}, slot_bytes {slot_bytes:#x} accepted"
        );
    }
    // the largest page size that still rounds up within u64 stays valid
    let mut fingerprint = Fingerprint::new("m", &layout, 0, 1);
    fingerprint.page_bytes = u64::MAX - 4095 - 4095;
    let slot_bytes = fingerprint.page_bytes.next_multiple_of(4096);
    let header = Header { fingerprint, slot_bytes, slot_count: 4, slots_per_file: 1 };
    assert_eq!(parse_header(&header.encode().unwrap()).unwrap(), header);
}

/// fuzz target `cache_ops` (found as a timeout in `quiesce`): with G3 smaller than what G2 wants
/// backed, every maintenance pass spilled a G2 page to G3, which evicted another G3 page, whose
/// G2 copy was then marked unbacked (d2dfe0f) and spilled again on the next pass: the SSD was
/// rewritten for ever with no new data. Fixed: a copy whose backing the tier below evicted is
/// marked declined (evicted early, counted as a loss), not copied again.
/// Setup from the fuzzer: one 12-token request, write-through, G1 9 blocks, G2 7 pages, G3 2.
#[test]
fn maintenance_settles_when_g3_is_smaller_than_g2() {
    use kvtier::io::{BackendKind, IoConfig};
    use kvtier::offload::{Admission, OffloadConfig, TieredCache};
    use kvtier::tier::DiskConfig;
    use kvtier::tier::host::HostConfig;
    use kvtier::{CacheConfig, ExtraKeys};

    let dir = TestDir::new("thrash");
    let layout = KvLayout::new(1, 1, 8, Dtype::F16, 2).unwrap();
    let disk = DiskConfig::new(dir.path())
        .with_model_id("thrash")
        .with_capacity_slots(2)
        .with_slots_per_file(1)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync));
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(7))
        .with_disk(disk)
        .with_admission(Admission::All)
        .with_write_through_g2(true)
        .with_g1_low_watermark(0.1)
        .with_g2_low_watermark(0.5)
        .with_batch_pages(1)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout, 9).with_watermark(0.0), config).unwrap();
    {
        let mut g = t.g1().lock();
        let a = g.add_sequence(&[1, 2, 3, 4, 5, 6, 50, 51, 52, 53, 54, 0], &ExtraKeys::default()).unwrap();
        g.commit(a.seq).unwrap();
        g.free(a.seq).unwrap();
    }
    let passes = (0..100).take_while(|_| t.run_maintenance().unwrap()).count();
    let spilled = t.metrics().engine.g2_to_g3.pages;
    drop(t);
    assert!(passes < 100, "maintenance still busy after 100 passes: {spilled} pages written to a 2-slot G3");
}
