//! Scratch directories of the replays and the probe: the G3 files of an engine replay and the
//! probe's test file live in one, and it must not outlive the run, not even an interrupted one.
//!
//! ## Lifecycle
//! 1. [`ScratchDir::new`] creates the missing parents of the requested directory, then a new
//!    directory in it under an unpredictable name (mkdtemp, mode 0700, a [`ScratchKind`] prefix
//!    such as `kvtier-replay-g3-`), and in that an owner file, [`OWNER_FILE`], on which it holds
//!    an exclusive `flock` for as long as it lives. The owner file is locked under another name
//!    and then renamed, so it never exists unlocked while its run is alive.
//! 2. The directory is listed in a process-wide registry while it lives.
//! 3. Dropping the [`ScratchDir`] (the normal end, or an error path) removes the directory and the
//!    parents it created (those only if empty).
//! 4. On SIGINT/SIGTERM no destructor runs: the command's signal handler calls
//!    [`remove_all_before_exit`], which removes every registered directory and keeps the registry
//!    locked so that no new one can appear before the process exits.
//! 5. A SIGKILLed run removes nothing. The next run calls [`remove_stale`] on the same parent: a
//!    directory is removed only if its name has a kvtier scratch prefix, it is a real directory
//!    (not a symlink) owned by this user, and it holds an owner file that nobody holds locked
//!    (the kernel releases the lock of a process that died, whatever its pid became). A user's
//!    own files, a live run's scratch, and directories without an owner file are never touched.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Name of the locked owner file inside every scratch directory.
pub const OWNER_FILE: &str = ".kvtier-owner";

/// What a scratch directory holds; its name starts with [`ScratchKind::prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchKind {
    /// The G3 files of an engine replay (also each point of a plan).
    ReplayG3,
    /// The test file of `kvtier probe`.
    Probe,
}

impl ScratchKind {
    /// Every kind, the ones [`remove_stale`] looks for.
    pub const ALL: [ScratchKind; 2] = [ScratchKind::ReplayG3, ScratchKind::Probe];

    /// The setting an [`Error::InvalidConfig`] about the parent directory names.
    pub fn setting(self) -> &'static str {
        match self {
            ScratchKind::ReplayG3 => "ssd dir",
            ScratchKind::Probe => "dir",
        }
    }

    /// The start of the directory's name.
    pub fn prefix(self) -> &'static str {
        match self {
            ScratchKind::ReplayG3 => "kvtier-replay-g3-",
            ScratchKind::Probe => "kvtier-probe-",
        }
    }
}

/// One registered scratch directory and the parents it created.
struct Live {
    dir: PathBuf,
    created_parents: Vec<PathBuf>,
}

/// The scratch directories of this process that exist now.
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Live>> {
    // A panic while the lock was held leaves the list as it was: still the right list.
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A scratch directory, removed when dropped (see the module docs).
///
/// ```
/// use kvtier_cli::scratch::{ScratchDir, ScratchKind};
/// let parent = tempfile::tempdir()?;
/// let scratch = ScratchDir::new(&parent.path().join("out"), ScratchKind::ReplayG3)?;
/// let path = scratch.path().to_path_buf();
/// assert!(path.join(kvtier_cli::scratch::OWNER_FILE).is_file());
/// drop(scratch);
/// assert!(!parent.path().join("out").exists()); // with the parent it created
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    /// Holds the owner file's lock until the directory is removed.
    _owner: File,
}

impl ScratchDir {
    /// Creates a scratch directory of `kind` in `parent` (created if missing). Fails if `parent`
    /// is writable by everyone without the sticky bit (another user could replace the
    /// directory).
    pub fn new(parent: &Path, kind: ScratchKind) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Registered under the lock, so a signal handler never misses a directory being made.
        let mut live = live();
        let mut missing = Vec::new();
        let mut p = parent;
        while !p.as_os_str().is_empty() && p.symlink_metadata().is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(up) => p = up,
                None => break,
            }
        }
        let mut created_parents = Vec::new();
        let undo = |created: &[PathBuf]| {
            for p in created.iter().rev() {
                let _ = std::fs::remove_dir(p);
            }
        };
        for p in missing.into_iter().rev() {
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => created_parents.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    undo(&created_parents);
                    return Err(Error::Io { op: "create directory", path: p, source });
                }
            }
        }
        let made = (|| {
            let meta = std::fs::metadata(parent).map_err(|source| Error::Io {
                op: "stat",
                path: parent.to_path_buf(),
                source,
            })?;
            let mode = meta.permissions().mode();
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(Error::InvalidConfig {
                    setting: kind.setting(),
                    value: parent.display().to_string(),
                    reason: "is writable by everyone without the sticky bit (chmod +t or o-w): another user \
                             could replace the run's directory"
                        .into(),
                });
            }
            let dir = tempfile::Builder::new()
                .prefix(kind.prefix())
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(parent)
                .map_err(|source| Error::Io { op: "create directory", path: parent.to_path_buf(), source })?;
            let owner = lock_owner_file(dir.path())?;
            Ok((dir.keep(), owner))
        })();
        let (path, owner) = match made {
            Ok(made) => made,
            Err(e) => {
                undo(&created_parents);
                return Err(e);
            }
        };
        live.push(Live { dir: path.clone(), created_parents });
        Ok(Self { path, _owner: owner })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let mut live = live();
        if let Some(i) = live.iter().position(|l| l.dir == self.path) {
            remove(&live.swap_remove(i));
        }
    }
}

/// Creates [`OWNER_FILE`] in `dir`, locked: made and locked under another name, then renamed.
fn lock_owner_file(dir: &Path) -> Result<File> {
    let staging = dir.join(".kvtier-owner-new");
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    let file = File::options().write(true).create_new(true).open(&staging).map_err(io("create", &staging))?;
    file.try_lock().map_err(|e| Error::Io { op: "lock", path: staging.clone(), source: e.into() })?;
    let owner = dir.join(OWNER_FILE);
    std::fs::rename(&staging, &owner).map_err(io("rename", &owner))?;
    Ok(file)
}

/// Removes a registered directory and the parents it created (those only if empty).
fn remove(live: &Live) {
    // On a signal the run's IO threads may still be making files in it: a pass that lost that
    // race (the directory not empty at the end) is repeated. Once the directory is gone nothing
    // can be made in it any more.
    for _ in 0..1000 {
        match std::fs::remove_dir_all(&live.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && live.dir.symlink_metadata().is_ok() => continue,
            _ => break,
        }
    }
    for p in live.created_parents.iter().rev() {
        let _ = std::fs::remove_dir(p); // only if empty: whatever else appeared there stays
    }
}

/// Removes every scratch directory of this process, for a signal handler that then exits. The
/// registry stays locked: a directory being made is finished first and removed with the others,
/// and any later [`ScratchDir::new`] or drop blocks, so the caller must end the process.
/// Returns how many directories were removed.
pub fn remove_all_before_exit() -> usize {
    let live = live();
    for l in live.iter() {
        remove(l);
    }
    let removed = live.len();
    std::mem::forget(live);
    removed
}

/// Removes, in `parent`, the scratch directories of kvtier runs that no longer run (killed
/// before they could clean up; see the module docs for what is and is never removed). Returns
/// the directories removed; a missing `parent` has none.
///
/// ```
/// use kvtier_cli::scratch::{ScratchDir, ScratchKind, remove_stale};
/// let parent = tempfile::tempdir()?;
/// let live = ScratchDir::new(parent.path(), ScratchKind::ReplayG3)?;
/// std::fs::create_dir(parent.path().join("kvtier-replay-g3-mine"))?; // no owner file
/// assert!(remove_stale(parent.path())?.is_empty()); // a live run's and a user's: kept
/// # drop(live);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn remove_stale(parent: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { op: "list", path: parent.to_path_buf(), source }),
    };
    // This process's user: the owner of /proc/self. Without /proc, nothing is judged stale.
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return Ok(Vec::new()) };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !ScratchKind::ALL.iter().any(|k| name.starts_with(k.prefix())) {
            continue;
        }
        let dir = entry.path();
        match dir.symlink_metadata() {
            Ok(m) if m.is_dir() && m.uid() == me => {}
            _ => continue,
        }
        let owner = dir.join(OWNER_FILE);
        match owner.symlink_metadata() {
            Ok(m) if m.is_file() && m.uid() == me => {}
            _ => continue,
        }
        let Ok(file) = File::open(&owner) else { continue };
        // Taken: its run is gone. Held until the directory is removed, so a run that is
        // removing it too (or looks at the same time) sees it as live.
        if file.try_lock().is_err() {
            continue;
        }
        std::fs::remove_dir_all(&dir).map_err(|source| Error::Io { op: "remove", path: dir.clone(), source })?;
        removed.push(dir);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unlocked_scratch_of_this_user_is_stale() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchDir::new(parent.path(), ScratchKind::ReplayG3).unwrap();
        // A killed run's: an owner file nobody locks.
        let dead = parent.path().join("kvtier-replay-g3-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(OWNER_FILE), b"").unwrap();
        std::fs::write(dead.join("slab"), b"data").unwrap();
        // A user's: no owner file, or not a kvtier name, or a symlink to a dead run's.
        let mine = parent.path().join("kvtier-probe-mine");
        std::fs::create_dir(&mine).unwrap();
        let other = parent.path().join("results");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER_FILE), b"").unwrap();
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join(OWNER_FILE), b"").unwrap();
        let link = parent.path().join("kvtier-replay-g3-link");
        std::os::unix::fs::symlink(target.path(), &link).unwrap();

        assert_eq!(remove_stale(parent.path()).unwrap(), vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().join(OWNER_FILE).is_file() && mine.is_dir() && other.is_dir() && link.exists());
        assert!(target.path().join(OWNER_FILE).is_file());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
        assert!(remove_stale(&parent.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_refused_parent_leaves_nothing_behind() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ScratchDir::new(&open.join("a/b"), ScratchKind::Probe);
        assert!(err.is_ok(), "the created parents are 0700");
        drop(err);
        assert!(!open.join("a").exists());
        assert!(matches!(ScratchDir::new(&open, ScratchKind::Probe), Err(Error::InvalidConfig { .. })));
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    }
}
