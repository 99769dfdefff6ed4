//! NVRAM backings: the memory the shadow log, the mirror image and the write-back metadata
//! live in. [`FileNvram`] is the reference NVRAM (a file-backed memory map, so a restarted
//! process finds its log and metadata); [`MemoryNvram`] is plain memory for tests.

use crate::clients::mirror::error::MirrorError;
use crate::fabric::verbs::map_nvram_file;
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
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
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), MirrorError>;
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
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), MirrorError> {
        (**self).persist(offset, len)
    }
    fn len(&self) -> usize {
        (**self).len()
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
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), MirrorError> {
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
    pub fn open(path: &Path, len: usize) -> Result<FileNvram, MirrorError> {
        let ctx = |e: std::io::Error| MirrorError::OpenNvram {
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
    fn persist(&mut self, offset: usize, len: usize) -> Result<(), MirrorError> {
        check_range(self.map.len(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.map
            .flush_range(offset, len)
            .map_err(|e| MirrorError::PersistNvram {
                path: self.path.clone(),
                offset,
                len,
                source: e,
            })
    }
}

fn check_range(size: usize, offset: usize, len: usize) -> Result<(), MirrorError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MirrorError::OutOfRange { offset, len, size }),
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
    fn memory_nvram_checks_ranges() {
        let mut nv = MemoryNvram::new(16);
        assert!(nv.persist(0, 16).is_ok());
        assert!(matches!(
            nv.persist(8, 9),
            Err(MirrorError::OutOfRange { .. })
        ));
        assert!(nv.persist(usize::MAX, 2).is_err());
    }
}
