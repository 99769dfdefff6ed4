//! Mapping an NVRAM file. The NVRAM a storage controller mirrors into is memory the RDMA
//! device may later register, so its mapping lives with the provider (the only module allowed
//! `unsafe`).

use memmap2::{MmapMut, MmapOptions};
use std::fs::File;

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
