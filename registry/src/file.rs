//! Files handed to us by users and registries, read and written safely.
//!
//! Reading: the file is opened without blocking (a FIFO would otherwise wait for a
//! writer forever), anything that is not a regular file is refused and named (FIFO,
//! character or block device, socket, folder), the size is checked against the limit
//! before a byte is read, and no more than the limit is ever read (a file that grows
//! while we read it is refused too). A symlink to a regular file is read; a symlink to
//! `/dev/zero` is a character device and refused.
//!
//! Writing: a temp file in the destination's folder, fsync, rename over the
//! destination, fsync of the folder. The rename replaces whatever entry the
//! destination was (a symlink is replaced, never followed; a FIFO is replaced, never
//! opened), and a reader never sees half a file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// What a non-regular file is, for the error that refuses it.
fn kind_of(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a folder")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Opens `path` for reading if it is a regular file (following symlinks), returning it
/// with its size. Never blocks on a FIFO.
///
/// # Errors
/// `InvalidInput` naming the kind of file for anything but a regular file; the
/// system's error otherwise.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if let Some(kind) = kind_of(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{kind}, not a regular file: refused"),
        ));
    }
    Ok((file, meta.len()))
}

/// Reads a regular file of at most `max` bytes. A larger file is `FileTooLarge`,
/// decided from its size before reading and enforced while reading.
///
/// # Errors
/// See [`open_regular`]; `FileTooLarge` over the limit.
pub fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, size) = open_regular(path)?;
    if size > max {
        return Err(too_large(size, max));
    }
    let mut out = Vec::with_capacity(size as usize);
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_large(out.len() as u64, max));
    }
    Ok(out)
}

fn too_large(size: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("{size} bytes or more, over the limit of {max} bytes"),
    )
}

/// Writes `bytes` to `path` atomically and durably: temp file in the same folder,
/// fsync, rename, fsync of the folder. A symlink or FIFO at `path` is replaced, not
/// written through.
///
/// # Errors
/// A folder that does not exist or cannot be written; a destination that is a folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a file only its owner may read (0600: credentials).
///
/// # Errors
/// As [`write_atomic`].
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] creating the file with `mode` (less the umask).
fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "a folder is in the way",
        ));
    }
    // 0666 less the umask is what `File::create` would give (tempfile's default is 0600).
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmt-tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_limited(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_limited(&fifo, 10).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = read_limited(dir.path(), 10).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    #[test]
    fn refuses_a_file_over_the_limit_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        // Sparse: 6 GB declared, nothing allocated; refused without reading.
        File::create(&p).unwrap().set_len(6 << 30).unwrap();
        let err = read_limited(&p, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_limited(&p, 5).unwrap(), b"12345");
        assert_eq!(
            read_limited(&p, 4).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
    }

    #[test]
    fn writes_replace_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        let link = dir.path().join("bundle.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
    }
}
