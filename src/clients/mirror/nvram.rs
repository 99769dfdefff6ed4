//! NVRAM backings: the memory the shadow log, the mirror image and the write-back metadata
//! live in. [`FileNvram`] is a file-backed memory map made durable with `msync` (a restarted
//! process finds its log and metadata); [`DaxNvram`] is persistent memory mapped directly
//! (fsdax file or devdax device) made durable with CPU cache flushes; [`MemoryNvram`] is plain
//! memory for tests. [`NvramKind`] chooses between the first two at run time.
//!
//! None of these mappings is ever registered with the RDMA device: the clients register
//! memory of their own (the staging and mirror regions) and copy between it and the NVRAM, so
//! every backing works with every provider (see docs/operations.md, "NVRAM backing").

use crate::clients::mirror::error::NvramError;
pub use crate::fabric::verbs::CacheFlush;
use crate::fabric::verbs::{map_nvram_file, DaxMapping};
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Byte-addressable, optionally persistent memory.
///
/// Writers change bytes through [`NvramBacking::bytes_mut`] and then call
/// [`NvramBacking::persist`] on the range they need durable before they acknowledge anything.
pub trait NvramBacking: Send {
    /// The whole backing.
    fn bytes(&self) -> &[u8];
    /// The whole backing, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes `[offset, offset + len)` durable (a no-op where the backing is volatile).
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError>;
    /// How [`persist`](NvramBacking::persist) makes bytes durable (default: not at all).
    fn persistence(&self) -> Persistence {
        Persistence::Volatile
    }
    /// Size in bytes.
    fn len(&self) -> usize {
        self.bytes().len()
    }
    /// Whether the backing has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A boxed backing is a backing, so drivers can choose one at run time
/// (`Box<dyn NvramBacking>`: a [`FileNvram`] in a node, a [`MemoryNvram`] in tests).
impl<T: NvramBacking + ?Sized> NvramBacking for Box<T> {
    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        (**self).bytes_mut()
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        (**self).persist(offset, len)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn persistence(&self) -> Persistence {
        (**self).persistence()
    }
}

/// How a backing makes bytes durable ([`NvramBacking::persistence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Not at all (plain memory).
    Volatile,
    /// `msync` of the range to the backing file ([`FileNvram`]).
    Msync,
    /// Persistent memory mapped directly, the range's cache lines flushed ([`DaxNvram`]).
    Dax {
        /// fsdax file or devdax device.
        mode: DaxMode,
        /// The flush instruction.
        flush: CacheFlush,
    },
}

impl std::fmt::Display for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Persistence::Volatile => f.write_str("volatile"),
            Persistence::Msync => f.write_str("file (msync)"),
            Persistence::Dax { mode, flush } => write!(f, "{} ({})", mode.name(), flush.name()),
        }
    }
}

/// What a [`DaxNvram`] maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaxMode {
    /// A file on a filesystem mounted `-o dax`, mapped with `MAP_SYNC`.
    FsDax,
    /// A devdax character device (`/dev/daxX.Y`).
    DevDax,
}

impl DaxMode {
    /// `fsdax` or `devdax`.
    pub fn name(self) -> &'static str {
        match self {
            DaxMode::FsDax => "fsdax",
            DaxMode::DevDax => "devdax",
        }
    }
}

/// Which backing [`NvramKind::open`] opens (the CLI's `--nvram`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NvramKind {
    /// [`FileNvram`]: any file, `msync` per persist.
    #[default]
    File,
    /// [`DaxNvram`]: persistent memory, or the open fails with [`NvramError::NotDax`].
    Dax,
    /// [`DaxNvram`] where the path is DAX, else [`FileNvram`].
    Auto,
}

impl NvramKind {
    /// Opens `path` (`len` bytes) as this kind of backing.
    pub fn open(self, path: &Path, len: usize) -> Result<Box<dyn NvramBacking>, NvramError> {
        match self {
            NvramKind::File => Ok(Box::new(FileNvram::open(path, len)?)),
            NvramKind::Dax => Ok(Box::new(DaxNvram::open(path, len)?)),
            NvramKind::Auto => match DaxNvram::open(path, len) {
                Ok(dax) => Ok(Box::new(dax)),
                Err(NvramError::NotDax { source, .. }) => {
                    tracing::info!(path = %path.display(), error = %source, "NVRAM is not DAX: using the file backing (msync)");
                    Ok(Box::new(FileNvram::open(path, len)?))
                }
                Err(e) => Err(e),
            },
        }
    }
}

impl std::str::FromStr for NvramKind {
    type Err = String;
    fn from_str(s: &str) -> Result<NvramKind, String> {
        match s {
            "file" => Ok(NvramKind::File),
            "dax" => Ok(NvramKind::Dax),
            "auto" => Ok(NvramKind::Auto),
            _ => Err(format!("NVRAM backing {s:?}: expected file, dax or auto")),
        }
    }
}

/// Volatile memory (tests, and a node without NVRAM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryNvram {
    bytes: Vec<u8>,
}

impl MemoryNvram {
    /// `len` zero bytes.
    pub fn new(len: usize) -> MemoryNvram {
        MemoryNvram {
            bytes: vec![0; len],
        }
    }

    /// A backing holding exactly `bytes` (a crash image in tests).
    pub fn from_bytes(bytes: Vec<u8>) -> MemoryNvram {
        MemoryNvram { bytes }
    }
}

impl NvramBacking for MemoryNvram {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        check_range(self.bytes.len(), offset, len)
    }
}

/// The reference NVRAM: a file mapped into memory; `persist` flushes the range (msync).
#[derive(Debug)]
pub struct FileNvram {
    path: PathBuf,
    map: MmapMut,
}

impl FileNvram {
    /// Opens (creating if needed) `path` and maps `len` bytes of it. An existing file keeps its
    /// contents; a shorter one is extended with zeros.
    pub fn open(path: &Path, len: usize) -> Result<FileNvram, NvramError> {
        let ctx = |e: std::io::Error| NvramError::Open {
            path: path.to_path_buf(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(ctx)?;
        let current = file.metadata().map_err(ctx)?.len();
        if current < len as u64 {
            file.set_len(len as u64).map_err(ctx)?;
        }
        let map = map_nvram_file(&file, len).map_err(ctx)?;
        Ok(FileNvram {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl NvramBacking for FileNvram {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        check_range(self.map.len(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.map
            .flush_range(offset, len)
            .map_err(|e| NvramError::Persist {
                path: self.path.clone(),
                offset,
                len,
                source: e,
            })
    }
    fn persistence(&self) -> Persistence {
        Persistence::Msync
    }
}

/// Persistent memory mapped directly (DAX): a file on a filesystem mounted `-o dax` (fsdax,
/// mapped with `MAP_SYNC`) or a devdax device; `persist` flushes the range's CPU cache lines
/// and fences ([`CacheFlush`]) instead of calling `msync`.
#[derive(Debug)]
pub struct DaxNvram {
    path: PathBuf,
    mode: DaxMode,
    map: DaxMapping,
}

impl DaxNvram {
    /// Opens `path` and maps `len` bytes of it as persistent memory.
    ///
    /// - A character device is taken for a devdax device: its size and alignment come from
    ///   sysfs (`/sys/dev/char/MAJOR:MINOR/{size,align}`), and it must hold `len` rounded up
    ///   to the alignment ([`NvramError::DevDaxTooSmall`]). The backing starts at its offset
    ///   0, so one device holds one backing.
    /// - Anything else is a file, created if needed (an existing one keeps its contents); a
    ///   shorter one is extended with written zeros, not a hole, and synced, so no page fault
    ///   of the mapping allocates blocks later. It is mapped with `MAP_SYNC`, which the kernel
    ///   refuses unless the filesystem is mounted `-o dax`: [`NvramError::NotDax`].
    pub fn open(path: &Path, len: usize) -> Result<DaxNvram, NvramError> {
        let ctx = |e: std::io::Error| NvramError::Open {
            path: path.to_path_buf(),
            source: e,
        };
        let is_char = std::fs::metadata(path)
            .map(|m| m.file_type().is_char_device())
            .unwrap_or(false);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_char)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(ctx)?;
        let meta = file.metadata().map_err(ctx)?;
        if is_char {
            let (size, align) = devdax_geometry(meta.rdev()).map_err(|e| NvramError::NotDax {
                path: path.to_path_buf(),
                source: e,
            })?;
            let needed = (len as u64).div_ceil(align as u64) * align as u64;
            if needed > size {
                return Err(NvramError::DevDaxTooSmall {
                    path: path.to_path_buf(),
                    size,
                    len,
                    align,
                    needed,
                });
            }
            let map = DaxMapping::map_devdax(&file, len, align).map_err(ctx)?;
            return Ok(DaxNvram {
                path: path.to_path_buf(),
                mode: DaxMode::DevDax,
                map,
            });
        }
        if !meta.is_file() {
            return Err(NvramError::NotDax {
                path: path.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            });
        }
        let current = meta.len();
        if current < len as u64 {
            extend_with_zeros(&file, current, len as u64).map_err(ctx)?;
            file.sync_all().map_err(ctx)?;
        }
        let map = DaxMapping::map_fsdax(&file, len).map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => NvramError::NotDax {
                path: path.to_path_buf(),
                source: e,
            },
            _ => ctx(e),
        })?;
        Ok(DaxNvram {
            path: path.to_path_buf(),
            mode: DaxMode::FsDax,
            map,
        })
    }

    /// The backing file or device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsdax or devdax.
    pub fn mode(&self) -> DaxMode {
        self.mode
    }

    /// The flush instruction `persist` uses.
    pub fn cache_flush(&self) -> CacheFlush {
        self.map.cache_flush()
    }
}

impl NvramBacking for DaxNvram {
    fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.bytes_mut()
    }
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), NvramError> {
        check_range(self.map.bytes().len(), offset, len)?;
        self.map
            .persist(offset, len)
            .map_err(|e| NvramError::Persist {
                path: self.path.clone(),
                offset,
                len,
                source: e,
            })
    }
    fn persistence(&self) -> Persistence {
        Persistence::Dax {
            mode: self.mode,
            flush: self.map.cache_flush(),
        }
    }
}

/// Writes zeros from `from` to `to` (blocks allocated and written, unlike `set_len`'s hole).
fn extend_with_zeros(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(from))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = to - from;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Size and mapping alignment of the devdax device `rdev` (from sysfs).
fn devdax_geometry(rdev: u64) -> std::io::Result<(u64, usize)> {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    let dir = PathBuf::from(format!("/sys/dev/char/{major}:{minor}"));
    let read = |name: &str| -> std::io::Result<u64> {
        let text = std::fs::read_to_string(dir.join(name))?;
        text.trim().parse::<u64>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(name).display()),
            )
        })
    };
    let size = read("size")?;
    let align = read("align").unwrap_or(2 << 20).max(4096);
    Ok((size, align as usize))
}

fn check_range(size: usize, offset: usize, len: usize) -> Result<(), NvramError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(NvramError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_nvram_keeps_its_contents_across_reopen() {
        let dir = std::env::temp_dir().join(format!("interlink-nvram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nv.bin");
        let _ = std::fs::remove_file(&path);
        {
            let mut nv = FileNvram::open(&path, 8192).unwrap();
            nv.bytes_mut()[100..104].copy_from_slice(b"abcd");
            nv.persist(100, 4).unwrap();
            assert!(nv.persist(8190, 4).is_err());
        }
        let nv = FileNvram::open(&path, 8192).unwrap();
        assert_eq!(&nv.bytes()[100..104], b"abcd");
        assert_eq!(nv.len(), 8192);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dax_refuses_a_file_that_is_not_dax_and_auto_falls_back() {
        // /dev/shm is a tmpfs: MAP_SYNC is refused there.
        let path = PathBuf::from(format!(
            "/dev/shm/interlink-nvram-dax-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let err = DaxNvram::open(&path, 8192).unwrap_err();
        assert!(matches!(err, NvramError::NotDax { .. }), "{err}");
        assert!(err.to_string().contains("-o dax"), "{err}");
        assert!(matches!(
            NvramKind::Dax.open(&path, 8192),
            Err(NvramError::NotDax { .. })
        ));
        let mut auto = NvramKind::Auto.open(&path, 8192).unwrap();
        assert_eq!(auto.persistence(), Persistence::Msync);
        auto.bytes_mut()[0..2].copy_from_slice(b"ok");
        auto.persist(0, 2).unwrap();
        drop(auto);
        let file = NvramKind::File.open(&path, 8192).unwrap();
        assert_eq!(&file.bytes()[0..2], b"ok");
        assert_eq!(file.persistence().to_string(), "file (msync)");
        std::fs::remove_file(&path).unwrap();
        assert_eq!("auto".parse::<NvramKind>(), Ok(NvramKind::Auto));
        assert!("pmem".parse::<NvramKind>().is_err());
    }

    #[test]
    fn dax_refuses_what_is_neither_a_file_nor_a_device() {
        let err = DaxNvram::open(Path::new("/dev/shm"), 8192).unwrap_err();
        assert!(matches!(err, NvramError::Open { .. }), "{err}");
    }

    #[test]
    fn memory_nvram_checks_ranges() {
        let mut nv = MemoryNvram::new(16);
        assert!(nv.persist(0, 16).is_ok());
        assert!(matches!(
            nv.persist(8, 9),
            Err(NvramError::OutOfRange { .. })
        ));
        assert!(nv.persist(usize::MAX, 2).is_err());
    }
}
