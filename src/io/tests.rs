use crate::testing::XorShift;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// A directory removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new_in(base: &Path, tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("kvtier-io-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn new(tag: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), tag)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uring_backend(queue_depth: usize) -> Option<Box<dyn IoBackend>> {
    let config = IoConfig::default().with_backend(BackendKind::Uring).with_queue_depth(queue_depth);
    open_backend(&config).ok()
}

fn all_backends(queue_depth: usize) -> Vec<Box<dyn IoBackend>> {
    let mut backends = vec![
        open_backend(&IoConfig::default().with_backend(BackendKind::Psync).with_queue_depth(queue_depth)).unwrap(),
        open_backend(&IoConfig::default().with_backend(BackendKind::Psync).with_psync_threads(1)).unwrap(),
    ];
    backends.extend(uring_backend(queue_depth));
    backends
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut rng = XorShift::new(seed | 1);
    for chunk in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes blocks of 4 KiB .. 2 MiB at random aligned, non-overlapping offsets, reads them back
/// into fresh buffers in a shuffled order and compares.
fn round_trip(backend: &dyn IoBackend, slab: &SlabFile, seed: u64) {
    let mut rng = XorShift::new(seed);
    let slot_bytes = 2u64 << 20;
    let slots = slab.len().unwrap() / slot_bytes;
    let mut slot_ids: Vec<u64> = (0..slots).collect();
    for i in (1..slot_ids.len()).rev() {
        slot_ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let blocks: Vec<(u64, usize)> = slot_ids
        .iter()
        .take(40)
        .map(|&slot| {
            let pages = 1 + rng.below(512) as usize;
            let inner = rng.below(512 - pages as u64 + 1) * 4096;
            (slot * slot_bytes + inner, pages * 4096)
        })
        .collect();
    let mut written = Vec::new();
    for (i, &(_, len)) in blocks.iter().enumerate() {
        let mut buf = AlignedBuf::new(len).unwrap();
        fill(&mut buf, seed ^ (i as u64 + 1));
        written.push(buf);
    }
    let mut ops: Vec<IoOp<'_>> =
        blocks.iter().zip(&written).map(|(&(offset, _), buf)| IoOp::write(slab.file(), offset, buf)).collect();
    let mut results = Vec::new();
    backend.submit(&mut ops, &mut results);
    assert_eq!(results.len(), blocks.len());
    for (r, &(_, len)) in results.iter().zip(&blocks) {
        assert_eq!(*r.as_ref().unwrap(), len, "{}", backend.name());
    }
    drop(ops);

    let mut read: Vec<AlignedBuf> = blocks.iter().map(|&(_, len)| AlignedBuf::new(len).unwrap()).collect();
    let mut ops: Vec<IoOp<'_>> = blocks
        .iter()
        .zip(read.iter_mut())
        .map(|(&(offset, _), buf)| IoOp::read(slab.file(), offset, buf))
        .rev()
        .collect();
    backend.submit(&mut ops, &mut results);
    assert!(results.iter().all(|r| r.is_ok()), "{}", backend.name());
    drop(ops);
    for (i, (r, w)) in read.iter().zip(&written).enumerate() {
        assert!(r[..] == w[..], "{} block {i} differs", backend.name());
    }
}

fn slab_in(dir: &TestDir, name: &str, len: u64, direct: bool) -> SlabFile {
    create_slab_file(&dir.path(name), len, direct).unwrap()
}

#[test]
fn round_trip_random_blocks_every_backend_buffered() {
    let dir = TestDir::new("rt-buffered");
    for (i, backend) in all_backends(32).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 64 << 20, false);
        assert!(!slab.is_direct());
        round_trip(backend.as_ref(), &slab, 0x1234 + i as u64);
    }
}

#[test]
fn round_trip_random_blocks_every_backend_direct_on_disk() {
    let dir = TestDir::new("rt-direct");
    for (i, backend) in all_backends(32).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 64 << 20, true);
        round_trip(backend.as_ref(), &slab, 0x9876 + i as u64);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn direct_io_is_used_on_a_real_file_system() {
    let dir = TestDir::new("direct");
    let slab = slab_in(&dir, "slab", 1 << 20, true);
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir.0)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if ["ext2/ext3", "xfs", "btrfs"].contains(&fs_type.as_str()) {
        assert!(slab.is_direct(), "{fs_type} supports O_DIRECT");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn tmpfs_works_with_direct_requested() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let dir = TestDir::new_in(shm, "tmpfs");
    // tmpfs refuses O_DIRECT before Linux 6.6 and accepts it after; either way the file must
    // open and the data must round-trip.
    let slab = slab_in(&dir, "slab", 16 << 20, true);
    for (i, backend) in all_backends(8).iter().enumerate() {
        round_trip(backend.as_ref(), &slab, 77 + i as u64);
    }
    let reopened = open_slab_file(&dir.path("slab"), true).unwrap();
    assert_eq!(reopened.len().unwrap(), 16 << 20);
}

#[test]
fn slab_files_are_private_and_preallocated() {
    let dir = TestDir::new("mode");
    let path = dir.path("slab");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let slab = create_slab_file(&path, 8 << 20, true).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 8 << 20);
    drop(slab);
    let fresh = dir.path("fresh");
    create_slab_file(&fresh, 4096, false).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        // fallocate reserved the blocks: the file is not sparse (512-byte units).
        assert!(meta.blocks() * 512 >= 8 << 20, "blocks {}", meta.blocks());
    }
}

#[test]
fn open_missing_slab_is_a_typed_error() {
    let dir = TestDir::new("missing");
    let err = open_slab_file(&dir.path("nope"), true).unwrap_err();
    assert!(matches!(
        err,
        Error::Io { tier: Tier::G3, op: "open", ref source } if source.kind() == ErrorKind::NotFound
    ));
}

#[test]
fn read_past_end_is_unexpected_eof_not_a_panic() {
    let dir = TestDir::new("eof");
    for (i, backend) in all_backends(4).iter().enumerate() {
        // Buffered, with a partial last page: the first read is short and is resubmitted,
        // the second returns 0.
        let path = dir.path(&format!("short{i}"));
        std::fs::write(&path, vec![7u8; 6000]).unwrap();
        let slab = open_slab_file(&path, false).unwrap();
        let mut buf = AlignedBuf::new(8192).unwrap();
        let mut ops = [IoOp::read(slab.file(), 0, &mut buf)];
        let mut results = Vec::new();
        backend.submit(&mut ops, &mut results);
        match &results[0] {
            Err(Error::Io { tier: Tier::G3, op: "read", source }) => {
                assert_eq!(source.kind(), ErrorKind::UnexpectedEof, "{}", backend.name())
            }
            other => panic!("{}: {other:?}", backend.name()),
        }
        assert!(buf[..6000].iter().all(|&b| b == 7), "{}", backend.name());
    }
}

#[test]
fn bad_descriptors_and_unaligned_direct_io_fail_per_operation() {
    let dir = TestDir::new("errors");
    for (i, backend) in all_backends(4).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 1 << 20, true);
        let read_only = File::open(dir.path(&format!("slab{i}"))).unwrap();
        let good = AlignedBuf::new(4096).unwrap();
        let mut unaligned = AlignedBuf::new(8192).unwrap();
        let mut ops = vec![IoOp::write(&read_only, 0, &good), IoOp::write(slab.file(), 4096, &good)];
        // Unaligned O_DIRECT is no portable error case: ext4 quietly serves it buffered.
        ops.push(IoOp::read(slab.file(), 1, &mut unaligned[..4096]));
        let mut results = Vec::new();
        backend.submit(&mut ops, &mut results);
        assert_eq!(results.len(), ops.len());
        assert!(
            matches!(&results[0], Err(Error::Io { tier: Tier::G3, op: "write", source })
                if source.raw_os_error() == Some(9)),
            "{}: {:?}",
            backend.name(),
            results[0]
        );
        assert_eq!(*results[1].as_ref().unwrap(), 4096);
        assert!(
            matches!(&results[2], Ok(4096) | Err(Error::Io { tier: Tier::G3, op: "read", .. })),
            "{}: {:?}",
            backend.name(),
            results[2]
        );
    }
}

#[test]
fn batches_larger_than_the_queue_depth_and_empty_ops() {
    let dir = TestDir::new("qd");
    for (i, backend) in all_backends(2).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 1 << 20, true);
        let mut bufs: Vec<AlignedBuf> = (0..256)
            .map(|n| {
                let mut b = AlignedBuf::new(4096).unwrap();
                fill(&mut b, n + 1);
                b
            })
            .collect();
        let mut ops: Vec<IoOp<'_>> =
            bufs.iter().enumerate().map(|(n, b)| IoOp::write(slab.file(), n as u64 * 4096, b)).collect();
        ops.push(IoOp::write(slab.file(), 0, &[]));
        let mut results = Vec::new();
        backend.submit(&mut ops, &mut results);
        assert_eq!(results.len(), 257);
        assert!(results[..256].iter().all(|r| matches!(r, Ok(4096))));
        assert!(matches!(results[256], Ok(0)));
        drop(ops);
        let mut check = AlignedBuf::new(4096).unwrap();
        for (n, b) in bufs.iter_mut().enumerate() {
            slab.file().read_exact_at(&mut check, n as u64 * 4096).unwrap();
            assert!(check[..] == b[..]);
        }
        let mut none: Vec<IoOp<'_>> = Vec::new();
        backend.submit(&mut none, &mut results);
        assert!(results.is_empty());
    }
}

#[test]
fn one_backend_shared_by_threads() {
    let dir = TestDir::new("threads");
    for (i, backend) in all_backends(8).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 16 << 20, true);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let backend = backend.as_ref();
                let slab = &slab;
                scope.spawn(move || {
                    let base = t * (4 << 20);
                    let mut data = AlignedBuf::new(64 << 10).unwrap();
                    fill(&mut data, t + 100);
                    let mut results = Vec::new();
                    for round in 0..8u64 {
                        let offset = base + round * (64 << 10);
                        let mut ops = [IoOp::write(slab.file(), offset, &data)];
                        backend.submit(&mut ops, &mut results);
                        assert!(results[0].is_ok());
                        let mut back = AlignedBuf::new(64 << 10).unwrap();
                        let mut ops = [IoOp::read(slab.file(), offset, &mut back)];
                        backend.submit(&mut ops, &mut results);
                        assert!(results[0].is_ok());
                        assert!(back[..] == data[..]);
                    }
                });
            }
        });
    }
}

#[test]
fn auto_and_forced_backend_choice() {
    let auto = open_backend(&IoConfig::default()).unwrap();
    assert!(["io_uring", "psync"].contains(&auto.name()));
    assert_eq!(auto.queue_depth(), 32);
    let psync = open_backend(&IoConfig::default().with_backend(BackendKind::Psync)).unwrap();
    assert_eq!(psync.name(), "psync");
    match open_backend(&IoConfig::default().with_backend(BackendKind::Uring)) {
        Ok(uring) => {
            assert_eq!(uring.name(), "io_uring");
            assert_eq!(auto.name(), "io_uring");
        }
        Err(err) => {
            assert!(matches!(err, Error::Io { tier: Tier::G3, .. } | Error::InvalidConfig { .. }));
            assert_eq!(auto.name(), "psync");
        }
    }
}

#[test]
fn config_defaults_and_validation() {
    let config = IoConfig::default();
    assert_eq!(config.backend, BackendKind::Auto);
    assert_eq!(config.queue_depth, 32);
    assert_eq!(config.psync_threads, 4);
    assert!(config.direct);
    assert!(config.validate().is_ok());
    for bad in [
        IoConfig::default().with_queue_depth(0),
        IoConfig::default().with_queue_depth(MAX_QUEUE_DEPTH + 1),
        IoConfig::default().with_psync_threads(0),
    ] {
        assert!(matches!(bad.validate(), Err(Error::InvalidConfig { .. })));
        assert!(open_backend(&bad).is_err());
    }
    assert!(!IoConfig::default().with_direct(false).direct);
}

#[test]
fn aligned_buf_alignment_and_sizes() {
    for len in [0, 1, 4095, 4096, 4097, 2 << 20] {
        let mut buf = AlignedBuf::new(len).unwrap();
        assert_eq!(buf.len(), len);
        assert_eq!(buf.is_empty(), len == 0);
        assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(buf.iter().all(|&b| b == 0));
        buf.fill(0xab);
    }
}

#[test]
fn fault_injection_double() {
    let dir = TestDir::new("fault");
    let slab = slab_in(&dir, "slab", 1 << 20, true);
    let psync = || -> Box<dyn IoBackend> { Box::new(PsyncBackend::new(&IoConfig::default())) };
    let data = AlignedBuf::new(4096).unwrap();
    let mut results = Vec::new();

    let every_third = FaultyBackend::new(psync(), Fault::FailEvery(3));
    let mut ops: Vec<IoOp<'_>> = (0..7).map(|n| IoOp::write(slab.file(), n * 4096, &data)).collect();
    every_third.submit(&mut ops, &mut results);
    let failed: Vec<bool> = results.iter().map(|r| r.is_err()).collect();
    assert_eq!(failed, [false, false, true, false, false, true, false]);
    assert!(matches!(&results[2], Err(Error::Io { tier: Tier::G3, op: "write", .. })));
    assert_eq!(every_third.operations(), 7);

    let no_space = FaultyBackend::new(psync(), Fault::FailWrites);
    no_space.submit(&mut ops, &mut results);
    assert!(results.iter().all(|r| r.is_err()));

    let mut back = AlignedBuf::new(4096).unwrap();
    let rot = FaultyBackend::new(psync(), Fault::CorruptReads);
    let mut reads = [IoOp::read(slab.file(), 0, &mut back)];
    rot.submit(&mut reads, &mut results);
    assert!(results[0].is_ok());
    assert_eq!(back[0], data[0] ^ 0xff);
    assert_eq!(back[1..], data[1..]);
}

#[test]
fn bench_helpers_measure_and_round_trip() {
    let dir = TestDir::new("bench");
    for (i, backend) in all_backends(8).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 4 << 20, true);
        let w = bench_write(backend.as_ref(), slab.file(), 4 << 20, 64 << 10, 8).unwrap();
        assert_eq!(w.bytes, 4 << 20);
        assert!(w.bytes_per_sec() > 0.0);
        let r = bench_read(backend.as_ref(), slab.file(), 4 << 20, 64 << 10, 8).unwrap();
        assert_eq!(r.bytes, 4 << 20);
        assert!(bench_write(backend.as_ref(), slab.file(), 1, 0, 8).is_err());
    }
}

/// Records what [`IoBackend::submit_overlapped`] reports; checks each completed read's bytes.
struct Recorder {
    completed: Vec<usize>,
    idle_calls: usize,
    idle_budget: usize,
    data_ok: bool,
}

impl Overlap for Recorder {
    fn completed(&mut self, index: usize, op: &IoOp<'_>, result: &Result<usize>) {
        self.completed.push(index);
        if let (Ok(len), IoKind::Read) = (result, op.kind()) {
            let mut want = vec![0u8; *len];
            fill(&mut want, index as u64 + 1);
            self.data_ok &= op.data() == &want[..];
        }
    }
    fn idle(&mut self) -> bool {
        self.idle_calls += 1;
        self.idle_calls < self.idle_budget
    }
}

#[test]
fn overlapped_batches_report_every_operation_once() {
    let dir = TestDir::new("overlap");
    for (i, backend) in all_backends(4).iter().enumerate() {
        let slab = slab_in(&dir, &format!("slab{i}"), 1 << 20, true);
        let bufs: Vec<AlignedBuf> = (0..64)
            .map(|n| {
                let mut b = AlignedBuf::new(8192).unwrap();
                fill(&mut b, n + 1);
                b
            })
            .collect();
        let mut ops: Vec<IoOp<'_>> =
            bufs.iter().enumerate().map(|(n, b)| IoOp::write(slab.file(), n as u64 * 8192, b)).collect();
        ops.push(IoOp::write(slab.file(), 0, &[]));
        let mut results = Vec::new();
        let mut rec = Recorder { completed: Vec::new(), idle_calls: 0, idle_budget: 1000, data_ok: true };
        backend.submit_overlapped(&mut ops, &mut results, &mut rec);
        assert!(results[..64].iter().all(|r| matches!(r, Ok(8192))), "{}", backend.name());
        assert!(matches!(results[64], Ok(0)));
        rec.completed.sort_unstable();
        assert_eq!(rec.completed, (0..65).collect::<Vec<_>>(), "{}", backend.name());
        // Idle work stops when it says there is none left.
        assert!(rec.idle_calls <= 1000);
        drop(ops);

        let mut back: Vec<AlignedBuf> = (0..64).map(|_| AlignedBuf::new(8192).unwrap()).collect();
        let mut ops: Vec<IoOp<'_>> =
            back.iter_mut().enumerate().map(|(n, b)| IoOp::read(slab.file(), n as u64 * 8192, b)).collect();
        ops.push(IoOp::read(slab.file(), 2 << 20, &mut [])); // empty: reported, never submitted
        let mut rec = Recorder { completed: Vec::new(), idle_calls: 0, idle_budget: 1, data_ok: true };
        backend.submit_overlapped(&mut ops, &mut results, &mut rec);
        assert!(rec.data_ok, "{}", backend.name());
        rec.completed.sort_unstable();
        assert_eq!(rec.completed, (0..65).collect::<Vec<_>>(), "{}", backend.name());
        drop(ops);
        assert!(back.iter().zip(&bufs).all(|(a, b)| a[..] == b[..]));
    }
}
