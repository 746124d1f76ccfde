//! The platform calls behind no-replace renames, atomic exchange and reflinks; each platform
//! gets the same three functions, unannotated (callers add the operation and paths).

use std::io;
use std::path::Path;

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    use rustix::fs::{CWD, RenameFlags, renameat_with};

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // File systems without RENAME_NOREPLACE (some network and FUSE file systems).
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                super::portable_noreplace(from, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the file system cannot exchange paths atomically",
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let from = File::open(src)?;
        let to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)?;
        // FICLONE: there is no reflink in std or rustix's safe API; this is the kernel's one call.
        const FICLONE: libc::c_ulong = 0x4004_9409;
        // SAFETY: both descriptors are open for the duration of the call; FICLONE takes an fd.
        let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            drop(to);
            let _ = std::fs::remove_file(dst);
            return Err(err);
        }
        let meta = from.metadata()?;
        to.set_permissions(meta.permissions())?;
        Ok(())
    }
}

#[cfg(target_os = "macos")]
mod imp {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn c(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (c(from)?, c(to)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_EXCL) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn exchange(from: &Path, to: &Path) -> io::Result<()> {
        let (a, b) = (c(from)?, c(to)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_SWAP) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn reflink(src: &Path, dst: &Path) -> io::Result<()> {
        let (a, b) = (c(src)?, c(dst)?);
        // SAFETY: valid NUL-terminated paths.
        let rc = unsafe { libc::clonefile(a.as_ptr(), b.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
mod imp {
    use std::io;
    use std::path::Path;

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        super::portable_noreplace(from, to)
    }

    pub fn exchange(_: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "atomic exchange is not available on this platform",
        ))
    }

    pub fn reflink(_: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "reflinks are not available on this platform",
        ))
    }
}

pub(super) use imp::{exchange, reflink, rename_noreplace};

/// Rename-without-replace where the kernel has no flag for it: a hard link fails if the name
/// exists (files); a directory rename fails onto a non-empty directory, and our published
/// directories are never empty (they hold a manifest).
// Unused on macOS, whose kernel has a flag for every case.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn portable_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        std::fs::rename(from, to)
    } else {
        std::fs::hard_link(from, to)?;
        std::fs::remove_file(from)
    }
}
