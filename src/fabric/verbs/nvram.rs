//! Mapping an NVRAM file. The NVRAM a storage controller mirrors into is memory the RDMA
//! device may later register, so its mapping lives with the provider (the only module allowed
//! `unsafe`).
//!
//! Two kinds of mapping:
//!
//! - [`map_nvram_file`]: an ordinary shared file mapping; `msync` makes a range durable.
//! - [`DaxMapping`]: persistent memory mapped directly (DAX): a file on a filesystem mounted
//!   `-o dax` mapped `MAP_SHARED_VALIDATE | MAP_SYNC` (fsdax), or a devdax character device
//!   mapped `MAP_SHARED` in multiples of its alignment. Stores reach the media once they leave
//!   the CPU caches, so [`DaxMapping::persist`] flushes the range's cache lines and fences
//!   ([`CacheFlush`]) instead of calling `msync`.

use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// Maps the first `len` bytes of `file` shared and writable (changes reach the file; `msync`
/// through [`MmapMut::flush_range`] makes them durable).
///
/// The caller must have sized the file to at least `len` bytes.
pub fn map_nvram_file(file: &File, len: usize) -> std::io::Result<MmapMut> {
    // SAFETY: memmap2 marks mapping a file `unsafe` because another process (or this one,
    // through another handle) may change or truncate the file while it is mapped, which would
    // make the slice change under Rust's aliasing rules or fault. An NVRAM file belongs to one
    // node process by contract (the node's data directory); it is never truncated while mapped
    // (FileNvram only grows it before mapping), and concurrent writes by a foreign process
    // would at worst change bytes, which every reader of NVRAM (log records, metadata) already
    // treats as untrusted and checks by checksum.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

/// How [`DaxMapping::persist`] moves stores out of the CPU caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFlush {
    /// `clwb` per cache line, then `sfence` (x86_64: the line stays cached).
    Clwb,
    /// `clflushopt` per cache line, then `sfence` (x86_64).
    ClflushOpt,
    /// `clflush` per cache line (x86_64 without the two above; serialised, slowest), then
    /// `sfence`.
    Clflush,
    /// `msync` of the range (architectures without cache flushes here).
    Msync,
}

impl CacheFlush {
    /// The best this CPU has (CPUID leaf 7: CLWB, then CLFLUSHOPT; else CLFLUSH, which every
    /// x86_64 CPU has); [`CacheFlush::Msync`] on other architectures.
    pub fn detect() -> CacheFlush {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            // (These intrinsics are safe functions in newer Rust, hence the allow.)
            #[allow(unused_unsafe)]
            // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only where the
            // maximum leaf says it exists.
            let ebx = unsafe {
                if __get_cpuid_max(0).0 >= 7 {
                    __cpuid_count(7, 0).ebx
                } else {
                    0
                }
            };
            if ebx & (1 << 24) != 0 {
                CacheFlush::Clwb
            } else if ebx & (1 << 23) != 0 {
                CacheFlush::ClflushOpt
            } else {
                CacheFlush::Clflush
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CacheFlush::Msync
        }
    }

    /// Its name (`clwb`, `clflushopt`, `clflush`, `msync`).
    pub fn name(self) -> &'static str {
        match self {
            CacheFlush::Clwb => "clwb",
            CacheFlush::ClflushOpt => "clflushopt",
            CacheFlush::Clflush => "clflush",
            CacheFlush::Msync => "msync",
        }
    }
}

/// The cache line size CLFLUSH works in (CPUID leaf 1, EBX bits 15..8, in 8-byte units).
#[cfg(target_arch = "x86_64")]
fn cache_line() -> usize {
    // (Safe in newer Rust, hence the allow.)
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU.
    let ebx = unsafe { std::arch::x86_64::__cpuid(1).ebx };
    match ((ebx >> 8) & 0xff) as usize * 8 {
        0 => 64,
        n => n,
    }
}

/// A DAX mapping of persistent memory (an fsdax file mapped with `MAP_SYNC`, or a devdax
/// device), unmapped on drop.
#[derive(Debug)]
pub struct DaxMapping {
    ptr: NonNull<u8>,
    /// Bytes the caller asked for (what [`bytes`](Self::bytes) shows).
    len: usize,
    /// Bytes mapped (`len` rounded up to the device alignment for devdax).
    map_len: usize,
    flush: CacheFlush,
    line: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; `&self` only reads it and
// `&mut self` is needed to write it, so Rust's aliasing rules hold across threads as for a
// `Vec<u8>`.
unsafe impl Send for DaxMapping {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for DaxMapping {}

impl DaxMapping {
    /// Maps the first `len` bytes of `file`, a file on a filesystem mounted `-o dax`, with
    /// `MAP_SHARED_VALIDATE | MAP_SYNC`: the kernel refuses (`EOPNOTSUPP`, or `EINVAL` from a
    /// kernel without `MAP_SHARED_VALIDATE`) unless every page fault maps the media directly
    /// with the file's metadata already durable, so flushing the CPU caches is all a store
    /// needs. The caller must have sized the file to at least `len` bytes.
    pub fn map_fsdax(file: &File, len: usize) -> io::Result<DaxMapping> {
        Self::map(file, len, len, libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC)
    }

    /// Maps the first `len` bytes of `file`, a devdax character device (`/dev/daxX.Y`):
    /// `MAP_SHARED` of `len` rounded up to `align` (the device's alignment, which its mappings
    /// must respect). The caller checks the device holds the rounded length.
    pub fn map_devdax(file: &File, len: usize, align: usize) -> io::Result<DaxMapping> {
        let align = align.max(1);
        let map_len = len
            .div_ceil(align)
            .checked_mul(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        Self::map(file, len, map_len, libc::MAP_SHARED)
    }

    fn map(file: &File, len: usize, map_len: usize, flags: libc::c_int) -> io::Result<DaxMapping> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (no existing memory is
        // replaced); the fd is valid for the call (borrowed from a live File) and the mapping
        // outlives the fd by design (mmap keeps its own reference to the file). The result is
        // checked against MAP_FAILED before it is used.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        #[cfg(target_arch = "x86_64")]
        let line = cache_line();
        #[cfg(not(target_arch = "x86_64"))]
        let line = 64;
        Ok(DaxMapping {
            ptr,
            len,
            map_len,
            flush: CacheFlush::detect(),
            line,
        })
    }

    /// The mapped bytes (the `len` asked for).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr maps at least len readable bytes for as long as self lives (unmapped
        // only in Drop); writes need &mut self, so none happen through this crate while the
        // slice is borrowed. The NVRAM file or device belongs to one node process by contract
        // (as for map_nvram_file), and its readers check what they read by checksum.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in bytes(), and &mut self makes this the only reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// How [`persist`](Self::persist) flushes.
    pub fn cache_flush(&self) -> CacheFlush {
        self.flush
    }

    /// Makes `[offset, offset + len)` durable: flushes every cache line it touches and fences
    /// (or `msync`s the pages where [`CacheFlush::Msync`]). The range must lie inside the
    /// mapping (checked: `EINVAL` otherwise).
    pub fn persist(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
        if len == 0 {
            return Ok(());
        }
        let base = self.ptr.as_ptr() as usize;
        let start = (base + offset) & !(self.line - 1);
        let end = base + offset + len;
        match self.flush {
            #[cfg(target_arch = "x86_64")]
            CacheFlush::Clwb => {
                for p in (start..end).step_by(self.line) {
                    // SAFETY: CPUID reported CLWB; p is inside this live mapping (a cache line
                    // of the checked range), and CLWB only writes the line back, changing no
                    // memory contents.
                    unsafe {
                        std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                    };
                }
                fence();
            }
            #[cfg(target_arch = "x86_64")]
            CacheFlush::ClflushOpt => {
                for p in (start..end).step_by(self.line) {
                    // SAFETY: CPUID reported CLFLUSHOPT; p is inside this live mapping, and the
                    // flush changes no memory contents.
                    unsafe {
                        std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                    };
                }
                fence();
            }
            #[cfg(target_arch = "x86_64")]
            CacheFlush::Clflush => {
                for p in (start..end).step_by(self.line) {
                    // SAFETY: CLFLUSH (SSE2) exists on every x86_64 CPU; p is inside this live
                    // mapping, and the flush changes no memory contents.
                    unsafe { std::arch::x86_64::_mm_clflush(p as *const u8) };
                }
                fence();
            }
            _ => {
                let from = (base + offset) & !(page_size() - 1);
                // SAFETY: the page-aligned range lies inside this live mapping (the checked
                // range, its start rounded down to a page, which the mapping's page-aligned
                // start also covers); msync only writes pages back.
                let ret =
                    unsafe { libc::msync(from as *mut libc::c_void, end - from, libc::MS_SYNC) };
                if ret != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// Orders the cache flushes before anything that follows (an acknowledgement).
#[cfg(target_arch = "x86_64")]
fn fence() {
    // (Safe in newer Rust, hence the allow.)
    #[allow(unused_unsafe)]
    // SAFETY: SFENCE (SSE) exists on every x86_64 CPU and only orders stores.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

impl Drop for DaxMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/map_len is exactly the mapping made in map(), unmapped once here; no
        // slice into it outlives self (they borrow self).
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_len) };
        if ret != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of a DAX mapping failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs_file(tag: &str, len: u64) -> (std::path::PathBuf, File) {
        let dir = std::path::Path::new("/dev/shm");
        let path = dir.join(format!("interlink-dax-{tag}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        (path, file)
    }

    #[test]
    fn map_sync_is_refused_on_a_file_that_is_not_dax() {
        let (path, file) = tmpfs_file("sync", 8192);
        let err = DaxMapping::map_fsdax(&file, 8192).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ),
            "{err}"
        );
    }

    #[test]
    fn persist_flushes_a_shared_mapping_and_checks_its_range() {
        // devdax mapping rules (MAP_SHARED, rounded to the alignment) also map a tmpfs file,
        // which runs the cache-flush path over real shared memory.
        let (path, file) = tmpfs_file("flush", 8192);
        let mut m = DaxMapping::map_devdax(&file, 5000, 4096).unwrap();
        assert_eq!(m.bytes().len(), 5000);
        m.bytes_mut()[4090..4100].copy_from_slice(b"0123456789");
        m.persist(4090, 10).unwrap();
        m.persist(0, 5000).unwrap();
        m.persist(4999, 0).unwrap();
        assert!(m.persist(4999, 2).is_err());
        assert!(m.persist(usize::MAX, 2).is_err());
        drop(m);
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&back[4090..4100], b"0123456789");
        #[cfg(target_arch = "x86_64")]
        assert_ne!(CacheFlush::detect(), CacheFlush::Msync);
    }
}
