//! The tier's directory and files, opened without trusting what is already there.
//!
//! Why: the directory may sit in a place others can reach (a shared scratch disk, `/tmp`), and a
//! file planted under one of the tier's names (a symbolic link to someone's file, a hard link, a
//! FIFO) must never be followed, truncated, chmodded or written.
//!
//! 1. [`TierDir::open`] creates the directory (mode 0700) if needed, follows a symbolic link to
//!    it only if this user owns the link, opens it, and refuses it unless this user owns it and
//!    neither group nor others may write it.
//! 2. Every file is then opened relative to that open directory, never by path again, with
//!    `O_NOFOLLOW`; a new file is created with `O_EXCL` (so a name that appeared meanwhile is an
//!    error, not someone else's file); an existing one must be a regular file of this user with
//!    one link before anything changes it.

use std::fs::{DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::index::io_err;
use crate::error::{Error, Result, Tier};
use crate::io::{check_owned_regular, effective_uid};

fn untrusted(reason: &'static str) -> Error {
    Error::UntrustedPath { tier: Tier::G3, reason }
}

/// The tier's directory, open and checked.
pub(super) struct TierDir {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    #[cfg(not(target_os = "linux"))]
    path: std::path::PathBuf,
}

#[cfg(target_os = "linux")]
impl TierDir {
    /// Creates (mode 0700, parents too) and opens the directory; see the module docs.
    pub(super) fn open(path: &Path) -> Result<Self> {
        use rustix::fs::{Mode, OFlags};
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io_err("mkdir"))?;
        let link = rustix::fs::lstat(path).map_err(|e| io_err("stat")(e.into()))?;
        let uid = effective_uid();
        let foreign = |owner: u32| uid.is_some_and(|uid| owner != uid);
        if rustix::fs::FileType::from_raw_mode(link.st_mode) == rustix::fs::FileType::Symlink && foreign(link.st_uid) {
            return Err(untrusted("is a symbolic link owned by another user"));
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| io_err("open")(e.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_err("stat")(e.into()))?;
        if foreign(stat.st_uid) {
            return Err(untrusted("is a directory owned by another user"));
        }
        if stat.st_mode & 0o022 != 0 {
            return Err(untrusted("is a directory writable by group or others (chmod go-w)"));
        }
        Ok(Self { fd })
    }

    /// Creates `name` (mode 0600); an existing entry of that name, a symbolic link included,
    /// is `EEXIST`.
    pub(super) fn create_file(&self, name: &str) -> Result<File> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| io_err("create")(e.into()))?;
        Ok(File::from(fd))
    }

    /// Opens the existing file `name`, None if there is none. A symbolic link, or anything but
    /// a regular file of this user with one link, is [`Error::UntrustedPath`].
    pub(super) fn open_existing(&self, name: &str) -> Result<Option<File>> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => return Err(untrusted("is a symbolic link")),
            Err(e) => return Err(io_err("open")(e.into())),
        };
        let file = File::from(fd);
        check_owned_regular(&file)?;
        // Back to blocking mode (only a FIFO or device would have cared, and those are refused).
        let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| io_err("fcntl")(e.into()))?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(|e| io_err("fcntl")(e.into()))?;
        Ok(Some(file))
    }

    /// Opens `name`, creating it if there is none; true if it was created.
    pub(super) fn open_or_create(&self, name: &str) -> Result<(File, bool)> {
        for _ in 0..4 {
            match self.create_file(name) {
                Ok(file) => return Ok((file, true)),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(file) = self.open_existing(name)? {
                return Ok((file, false));
            }
            // Removed between the two calls: try again.
        }
        Err(io_err("open")(std::io::ErrorKind::WouldBlock.into()))
    }

    /// Removes every entry whose name `matches` (the entries themselves: a symbolic link is
    /// unlinked, never followed; a directory is an error).
    pub(super) fn remove_matching(&self, matches: impl Fn(&str) -> bool) -> Result<()> {
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io_err("readdir")(e.into()))?;
        for entry in dir {
            let entry = entry.map_err(|e| io_err("readdir")(e.into()))?;
            if entry.file_name().to_str().is_ok_and(&matches) {
                rustix::fs::unlinkat(&self.fd, entry.file_name(), rustix::fs::AtFlags::empty())
                    .map_err(|e| io_err("unlink")(e.into()))?;
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl TierDir {
    /// Creates (mode 0700) the directory; without `openat`, files are opened by path with
    /// `O_EXCL` for new files and a type and owner check for existing ones.
    pub(super) fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io_err("mkdir"))?;
        let meta = std::fs::metadata(path).map_err(io_err("stat"))?;
        if effective_uid().is_some_and(|uid| meta.uid() != uid) {
            return Err(untrusted("is a directory owned by another user"));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(untrusted("is a directory writable by group or others (chmod go-w)"));
        }
        Ok(Self { path: path.to_owned() })
    }

    pub(super) fn create_file(&self, name: &str) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path.join(name))
            .map_err(io_err("create"))
    }

    pub(super) fn open_existing(&self, name: &str) -> Result<Option<File>> {
        let path = self.path.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat")(e)),
            Ok(m) if m.file_type().is_symlink() => return Err(untrusted("is a symbolic link")),
            Ok(_) => {}
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("open"))?;
        check_owned_regular(&file)?;
        Ok(Some(file))
    }

    pub(super) fn open_or_create(&self, name: &str) -> Result<(File, bool)> {
        match self.open_existing(name)? {
            Some(file) => Ok((file, false)),
            None => Ok((self.create_file(name)?, true)),
        }
    }

    pub(super) fn remove_matching(&self, matches: impl Fn(&str) -> bool) -> Result<()> {
        for entry in std::fs::read_dir(&self.path).map_err(io_err("readdir"))? {
            let entry = entry.map_err(io_err("readdir"))?;
            if entry.file_name().to_str().is_some_and(&matches) {
                std::fs::remove_file(entry.path()).map_err(io_err("unlink"))?;
            }
        }
        Ok(())
    }
}
