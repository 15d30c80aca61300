//! Hostile inputs that tests/cache_api.rs and tests/disk_tier.rs do not already cover: capacities
//! beyond memory or disk, unwritable and full SSD directories, strange files in one, and sizes
//! that overflow. Each must be a typed error (or a documented degradation), never a panic, an
//! abort or the OOM killer.
//!
//! Already covered elsewhere: zero and enormous layouts, overflowing `num_blocks * page_bytes`
//! (cache_api `layout_and_config_validation`), out-of-range, stale and double-freed block ids
//! (`block_pool_rejects_double_free_and_bad_ids`), unknown and freed sequences and the fork of a
//! freed one (`unknown_and_freed_sequences_are_rejected`), an SSD directory of another model,
//! layout, shard or geometry (disk_tier `other_fingerprint_is_an_error_or_wiped`), a garbage,
//! short or truncated index (`garbage_or_short_header_is_a_typed_error`), rotted pages
//! (`flipped_byte_is_a_counted_miss`), a missing slab (`missing_slab_file_loses_only_its_slots`)
//! and `ENOSPC` from the device through the fault backend
//! (`enospc_is_reported_then_refused_until_backoff`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kvtier::io::{BackendKind, IoConfig};
use kvtier::offload::{OffloadConfig, TieredCache};
use kvtier::tier::host::{HostConfig, HostTier};
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::tier::{INDEX_FILE, MAX_SLOTS};
use kvtier::{BlockHash, CacheConfig, Dtype, Error, KvCache, KvLayout, Tier};

/// A directory removed on drop (after unmounting whatever a test mounted on it).
struct TestDir {
    path: PathBuf,
    mounted: bool,
}

impl TestDir {
    fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kvtier-hostile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path, mounted: false }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Mounts a tmpfs of `size` (mount options, e.g. "size=1m,ro") on the directory. False
    /// where this process may not mount (not root, or no CAP_SYS_ADMIN in a container).
    fn mount_tmpfs(&mut self, options: &str) -> bool {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "kvtier-hostile"])
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status();
        self.mounted = status.is_ok_and(|s| s.success());
        self.mounted
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// 512-byte pages in 4 KiB slots.
fn small_layout() -> KvLayout {
    KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap()
}

/// The largest page kvtier accepts: 1 GiB.
fn gib_layout() -> KvLayout {
    KvLayout::new(1 << 13, 1, 1, Dtype::F32, 1 << 14).unwrap()
}

fn disk_config(dir: &Path, slots: usize) -> DiskConfig {
    DiskConfig::new(dir)
        .with_model_id("hostile")
        .with_capacity_slots(slots)
        .with_slots_per_file(4)
        .with_io(IoConfig::default().with_backend(BackendKind::Psync).with_queue_depth(4))
}

fn page(layout: &KvLayout, seed: u8) -> Vec<u8> {
    (0..layout.page_bytes()).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
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

/// RAM + swap from /proc/meminfo (what the library checks against, unless a cgroup limit is
/// lower).
fn ram_plus_swap() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |field: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(field)).unwrap();
        line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap()
    };
    (kib("MemTotal:") + kib("SwapTotal:")) * 1024
}

fn is_capacity_exceeded(e: &Error, tier: Tier, resource: &str) -> bool {
    matches!(e, Error::CapacityExceeded { tier: t, resource: r, requested, available }
        if *t == tier && *r == resource && requested > available)
}

fn slab_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("slab-"))
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Capacities beyond memory
// ---------------------------------------------------------------------------------------------

/// A G1 pool whose pages could never be backed is refused before anything is mapped, whatever
/// the kernel's overcommit mode (with `vm.overcommit_memory = 1` the mapping itself would
/// succeed and the process be OOM-killed while filling it).
#[test]
fn g1_pages_beyond_memory_are_refused() {
    let layout = KvLayout::llama_3_1_8b(16).unwrap(); // 2 MiB pages
    let blocks = (ram_plus_swap() / layout.page_bytes() as u64 + 1) as usize;
    let config = CacheConfig::new(layout, blocks);
    let err = config.validate().unwrap_err();
    assert!(is_capacity_exceeded(&err, Tier::G1, "memory"), "{err}");
    let err = KvCache::new(config.clone()).err().unwrap();
    assert!(is_capacity_exceeded(&err, Tier::G1, "memory"), "{err}");
    // The same pool without page memory is only bookkeeping and fits.
    assert!(KvCache::new(config.with_arena(false)).is_ok());
    // The arena alone, beyond the address space's worth of memory too.
    let err = kvtier::Arena::new(1 << 40, 1 << 20).unwrap_err();
    assert!(is_capacity_exceeded(&err, Tier::G1, "memory"), "{err}");
}

/// Block bookkeeping is about 64 bytes per block in `Vec`s: a pool of 2^31 - 1 blocks needs
/// ~137 GB, and a failed `Vec` allocation aborts the process. Before this check it did.
#[test]
fn g1_metadata_beyond_memory_is_refused_not_aborted() {
    let blocks = i32::MAX as usize;
    if ram_plus_swap() >= blocks as u64 * 64 {
        eprintln!("skipped: this machine holds the bookkeeping of 2^31 - 1 blocks");
        return;
    }
    let config = CacheConfig::new(small_layout(), blocks).with_arena(false);
    let err = KvCache::new(config).err().unwrap();
    assert!(is_capacity_exceeded(&err, Tier::G1, "memory"), "{err}");
    // One more block than block ids can name is a configuration error on any machine.
    let config = CacheConfig::new(small_layout(), blocks + 1).with_arena(false).with_event_capacity(0);
    assert!(matches!(KvCache::new(config), Err(Error::InvalidConfig { .. } | Error::CapacityExceeded { .. })));
}

#[test]
fn g2_beyond_memory_is_refused() {
    let page_bytes = 2 << 20;
    let pages = (ram_plus_swap() / page_bytes as u64 + 1) as usize;
    for mlock in [false, true] {
        let config = HostConfig::default().with_capacity_pages(pages).with_mlock(mlock);
        let err = HostTier::new(page_bytes, config).err().unwrap();
        assert!(is_capacity_exceeded(&err, Tier::G2, "memory"), "{err}");
    }
    // Through the engine: G1 fits, G2 does not.
    let offload = OffloadConfig::default().with_host(HostConfig::default().with_capacity_pages(pages));
    let err = TieredCache::new(CacheConfig::new(KvLayout::llama_3_1_8b(16).unwrap(), 4), offload).err().unwrap();
    assert!(is_capacity_exceeded(&err, Tier::G2, "memory"), "{err}");
    // Sizes whose product overflows are configuration errors, not wrapped-around small tiers.
    let err = HostTier::new(1 << 30, HostConfig::default().with_capacity_pages(usize::MAX)).err().unwrap();
    assert!(matches!(err, Error::InvalidConfig { field: "host capacity_pages", .. }), "{err}");
    // A small locked tier still works (locking is best effort: RLIMIT_MEMLOCK may refuse it).
    let g2 = HostTier::new(4096, HostConfig::default().with_capacity_pages(4).with_mlock(true)).unwrap();
    assert!(
        g2.store(BlockHash(1), |p| {
            p.fill(3);
            Ok(())
        })
        .unwrap()
    );
    assert_eq!(g2.load(BlockHash(1), |p| p[4095]), Some(3));
}

// ---------------------------------------------------------------------------------------------
// Capacities beyond disk, full directories
// ---------------------------------------------------------------------------------------------

/// 2^20 slots of 1 GiB (1 PiB) cannot be preallocated: refused at open with nothing created,
/// rather than fallocating the file system full and failing half-way.
#[test]
fn g3_beyond_free_disk_space_is_refused_at_open() {
    let dir = TestDir::new("petabyte");
    let g3 = dir.path().join("g3");
    let err = DiskTier::open(&gib_layout(), disk_config(&g3, 1 << 20)).unwrap_err();
    assert!(is_capacity_exceeded(&err, Tier::G3, "disk space"), "{err}");
    assert!(slab_files(&g3).is_empty(), "no slab file is created");
    // The refused directory opens fine with a capacity that fits.
    let layout = small_layout();
    let tier = DiskTier::open(&layout, disk_config(&g3, 8)).unwrap();
    assert!(matches!(write(&tier, 1, &page(&layout, 1)), Ok(true)));
    assert_eq!(read(&tier, 1).unwrap(), page(&layout, 1));
}

/// 2^31 - 1 slots need ~275 GB of bookkeeping (and 8 TiB of disk): refused, not aborted.
#[test]
fn g3_slots_beyond_memory_or_disk_are_refused() {
    let dir = TestDir::new("max-slots");
    let err = DiskTier::open(&small_layout(), disk_config(dir.path(), MAX_SLOTS)).unwrap_err();
    assert!(
        is_capacity_exceeded(&err, Tier::G3, "memory") || is_capacity_exceeded(&err, Tier::G3, "disk space"),
        "{err}"
    );
    assert!(slab_files(dir.path()).is_empty());
    // Absurd geometry: one slab file of 2^31 - 1 GiB slots is also refused, not overflowed.
    let config = disk_config(dir.path(), MAX_SLOTS).with_slots_per_file(usize::MAX);
    assert!(matches!(
        DiskTier::open(&gib_layout(), config),
        Err(Error::CapacityExceeded { tier: Tier::G3, .. } | Error::InvalidConfig { .. })
    ));
}

/// On a real small file system (a 1 MiB tmpfs, mountable only as root): a tier larger than the
/// free space is refused; a tier that fits reserves its slabs at open, so it keeps working
/// after something else fills the disk; and a second tier no longer fits. Where mounting is not
/// allowed the full-device path is covered through the fault backend in tests/disk_tier.rs.
#[test]
fn full_file_system_on_a_tiny_tmpfs() {
    let mut dir = TestDir::new("tmpfs");
    if !dir.mount_tmpfs("size=1m,mode=0700") {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); ENOSPC is covered by the fault backend");
        return;
    }
    let layout = small_layout();
    let err = DiskTier::open(&layout, disk_config(&dir.path().join("big"), 512)).unwrap_err();
    assert!(is_capacity_exceeded(&err, Tier::G3, "disk space"), "{err}");
    assert!(slab_files(&dir.path().join("big")).is_empty());

    let tier = DiskTier::open(&layout, disk_config(&dir.path().join("small"), 16)).unwrap();
    // Fill the rest of the file system.
    let filler = vec![0xa5u8; 64 << 10];
    let mut f = std::fs::File::create(dir.path().join("filler")).unwrap();
    let full = loop {
        if let Err(e) = std::io::Write::write_all(&mut f, &filler) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    // The tier's slots were reserved at open: writes still land and read back intact.
    for h in 0..16u8 {
        assert!(matches!(write(&tier, h as u128, &page(&layout, h)), Ok(true)), "write {h}");
    }
    for h in 0..16u8 {
        assert_eq!(read(&tier, h as u128).unwrap(), page(&layout, h), "read {h}");
    }
    // A second tier on the full file system is refused at open.
    let err = DiskTier::open(&layout, disk_config(&dir.path().join("second"), 4)).unwrap_err();
    assert!(is_capacity_exceeded(&err, Tier::G3, "disk space"), "{err}");
    // The first one reopens (its own files count as held space) and still serves its pages.
    drop(tier);
    let tier = DiskTier::open(&layout, disk_config(&dir.path().join("small"), 16)).unwrap();
    assert_eq!(tier.metrics().recovered, 16);
    assert_eq!(read(&tier, 7).unwrap(), page(&layout, 7));
}

// ---------------------------------------------------------------------------------------------
// Unwritable directories
// ---------------------------------------------------------------------------------------------

/// Whether mode bits deny this process (false for root or CAP_DAC_OVERRIDE, which ignore them).
fn mode_bits_deny(dir: &Path) -> bool {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let probe = dir.join("probe");
    let denied = std::fs::File::create(&probe).is_err();
    let _ = std::fs::remove_file(&probe);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    denied
}

fn is_io(e: &Error, ops: &[&str]) -> bool {
    matches!(e, Error::Io { tier: Tier::G3, op, .. } if ops.contains(op))
}

/// An SSD directory that cannot be written is `Error::Io` at open. Mode 0500 only denies an
/// unprivileged process; as root (as CI runs) the test says so and uses what denies root too:
/// a path under a regular file (ENOTDIR), a path in /proc (no new entries), and a read-only
/// tmpfs (EROFS) where it may mount one.
#[test]
fn unwritable_directory_is_an_io_error() {
    let layout = small_layout();
    let dir = TestDir::new("unwritable");
    if mode_bits_deny(dir.path()) {
        // A fresh directory made 0500, and a tier directory made 0500 after it was created.
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o500)).unwrap();
        let err = DiskTier::open(&layout, disk_config(&fresh, 4)).unwrap_err();
        assert!(is_io(&err, &["open", "create"]), "{err}");
        let used = dir.path().join("used");
        drop(DiskTier::open(&layout, disk_config(&used, 4)).unwrap());
        for f in std::fs::read_dir(&used).unwrap() {
            std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        std::fs::set_permissions(&used, std::fs::Permissions::from_mode(0o500)).unwrap();
        let err = DiskTier::open(&layout, disk_config(&used, 4)).unwrap_err();
        assert!(is_io(&err, &["open", "create"]), "{err}");
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&used, std::fs::Permissions::from_mode(0o700)).unwrap();
    } else {
        eprintln!("running privileged: mode 0500 does not deny, using ENOTDIR, /proc and a read-only tmpfs");
    }
    // Under a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = DiskTier::open(&layout, disk_config(&file.join("g3"), 4)).unwrap_err();
    assert!(is_io(&err, &["mkdir"]), "{err}");
    // The directory is a regular file.
    let err = DiskTier::open(&layout, disk_config(&file, 4)).unwrap_err();
    assert!(is_io(&err, &["mkdir", "open"]), "{err}");
    // /proc takes no new entries, not even from root.
    let err = DiskTier::open(&layout, disk_config(Path::new("/proc/kvtier-hostile-g3"), 4)).unwrap_err();
    assert!(is_io(&err, &["mkdir"]), "{err}");
    // Through the engine the same error comes back from TieredCache::new.
    let offload = OffloadConfig::default().with_disk(disk_config(&file.join("g3"), 4));
    let err = TieredCache::new(CacheConfig::new(layout, 8), offload).err().unwrap();
    assert!(is_io(&err, &["mkdir"]), "{err}");
    // A read-only file system.
    let mut ro = TestDir::new("readonly");
    if ro.mount_tmpfs("size=1m,ro,mode=0700") {
        let err = DiskTier::open(&layout, disk_config(ro.path(), 4)).unwrap_err();
        assert!(is_io(&err, &["open", "create"]), "{err}");
        let err = DiskTier::open(&layout, disk_config(&ro.path().join("sub"), 4)).unwrap_err();
        assert!(is_io(&err, &["mkdir"]), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Strange files in the directory
// ---------------------------------------------------------------------------------------------

/// Files that are not the tier's are left alone; slab-named garbage in a directory without an
/// index is replaced; and an index or slab path that is a directory is a typed error.
#[test]
fn foreign_and_garbage_files_in_the_directory() {
    let layout = small_layout();
    let dir = TestDir::new("foreign");
    std::fs::write(dir.path().join("README"), b"someone else's file").unwrap();
    std::fs::write(dir.path().join("slab-00000.kvt"), vec![0xeeu8; 12345]).unwrap();
    std::fs::write(dir.path().join("slab-99999.kvt"), b"stale slab of an older, larger tier").unwrap();
    std::fs::write(dir.path().join("slab-x.kvt"), b"not a slab name").unwrap();
    {
        let tier = DiskTier::open(&layout, disk_config(dir.path(), 8)).unwrap();
        assert_eq!(tier.metrics().recovered, 0);
        for h in 0..8u8 {
            assert_eq!(read(&tier, h as u128), None, "garbage is never served");
        }
        assert!(matches!(write(&tier, 1, &page(&layout, 1)), Ok(true)));
        assert_eq!(read(&tier, 1).unwrap(), page(&layout, 1));
    }
    assert_eq!(std::fs::read(dir.path().join("README")).unwrap(), b"someone else's file");
    assert!(dir.path().join("slab-x.kvt").exists());
    assert!(!dir.path().join("slab-99999.kvt").exists());
    assert_eq!(std::fs::metadata(dir.path().join("slab-00000.kvt")).unwrap().len(), 4 * 4096);

    // A slab path that is a directory: typed error on reopen, not a panic.
    std::fs::remove_file(dir.path().join("slab-00001.kvt")).unwrap();
    std::fs::create_dir(dir.path().join("slab-00001.kvt")).unwrap();
    let err = DiskTier::open(&layout, disk_config(dir.path(), 8)).unwrap_err();
    assert!(matches!(err, Error::Io { tier: Tier::G3, .. }), "{err}");

    // An index path that is a directory.
    let other = TestDir::new("index-dir");
    std::fs::create_dir(other.path().join(INDEX_FILE)).unwrap();
    let err = DiskTier::open(&layout, disk_config(other.path(), 8)).unwrap_err();
    assert!(is_io(&err, &["open", "create"]), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Overflowing arithmetic in configurations
// ---------------------------------------------------------------------------------------------

#[test]
fn extreme_sizes_do_not_overflow() {
    // Every dimension at its maximum alone, and all of them together: InvalidConfig, never a
    // wrapped-around small page.
    let m = u32::MAX;
    for (l, h, d, b) in [(m, 1, 1, 1), (1, m, 1, 1), (1, 1, m, 1), (1, 1, 1, 1 << 16), (m, m, m, 1 << 16)] {
        match KvLayout::new(l, h, d, Dtype::F32, b) {
            Ok(layout) => assert!(layout.page_bytes() <= 1 << 30),
            Err(e) => assert!(matches!(e, Error::InvalidConfig { .. }), "{e}"),
        }
    }
    // Layout offsets at the edges.
    let l = gib_layout();
    assert_eq!(l.offset(u32::MAX, true, 0), None);
    assert_eq!(l.offset(0, true, u32::MAX), None);
    assert!(l.offset(l.layers() - 1, true, l.block_size() - 1).unwrap() < l.page_bytes());
    // G1: pages * page size overflowing usize, and u64 once bookkeeping is added.
    for blocks in [usize::MAX, usize::MAX / 64, 1 << 34] {
        let err = CacheConfig::new(gib_layout(), blocks).validate().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. } | Error::CapacityExceeded { .. }), "{blocks}: {err}");
        let err = CacheConfig::new(gib_layout(), blocks).with_arena(false).validate().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. } | Error::CapacityExceeded { .. }), "{blocks}: {err}");
    }
    // G3: an absurd read chunk or slots per file is clamped, not overflowed.
    let dir = TestDir::new("chunk");
    let layout = small_layout();
    let config = disk_config(dir.path(), 8).with_read_chunk_bytes(usize::MAX).with_slots_per_file(usize::MAX);
    let tier = DiskTier::open(&layout, config).unwrap();
    assert_eq!(slab_files(dir.path()).len(), 1);
    for h in 0..4u8 {
        assert!(matches!(write(&tier, h as u128, &page(&layout, h)), Ok(true)));
    }
    let mut bufs: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; layout.page_bytes()]).collect();
    let mut reqs: Vec<(BlockHash, &mut [u8])> =
        bufs.iter_mut().enumerate().map(|(h, b)| (BlockHash(h as u128), &mut b[..])).collect();
    assert!(tier.read_pages(&mut reqs).iter().all(|r| matches!(r, Ok(true))));
    for (h, b) in bufs.iter().enumerate() {
        assert_eq!(b, &page(&layout, h as u8));
    }
}
