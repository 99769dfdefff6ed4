//! The byte codec every wire format of the crate decodes and encodes with, and its one error
//! type.
//!
//! Every format names its fields: a truncated, corrupt or out-of-range input is a
//! [`WireError`] that says which field of which format and what was found, never a panic.
//! [`Reader`] reads a byte slice front to back in one byte order, failing with
//! [`WireError::Truncated`] (naming the field) instead of indexing past the end; [`Writer`]
//! appends in one byte order. The checks every framed format repeats (magic, version,
//! checksum, reserved fields, trailing bytes) are here once ([`check_magic`],
//! [`check_version`], [`check_crc32c`], [`check_reserved`], [`Reader::finish`]).
//!
//! Users: the manager's bootstrap frames (`manager::wire`, big-endian) and the messaging
//! frames (`messaging::wire`, little-endian). The byte layouts themselves are in
//! docs/wire-formats.md.

use crate::fabric::EndpointError;

/// A malformed input of a wire format, or a value that cannot be encoded. Every variant
/// names the field (and the format where a field name alone is ambiguous).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the field needs.
    #[error("truncated {field}: needs {needed} bytes, {available} left")]
    Truncated {
        /// What was being read.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The input does not start with the format's magic.
    #[error("{format}: bad magic {found:02x?}, expected {expected:02x?}")]
    Magic {
        /// The format.
        format: &'static str,
        /// The bytes found.
        found: Vec<u8>,
        /// The magic of the format.
        expected: &'static [u8],
    },
    /// An unknown format version.
    #[error("{format}: version {found} is not supported (supported: {supported})")]
    Version {
        /// The format.
        format: &'static str,
        /// The version found.
        found: u32,
        /// The versions this build reads.
        supported: &'static str,
    },
    /// The checksum does not match (a garbled or torn input).
    #[error("{format}: checksum {found:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The format.
        format: &'static str,
        /// The checksum carried in the input.
        found: u32,
        /// The checksum computed over the input.
        computed: u32,
    },
    /// A reserved field (or flag bits) that is not zero.
    #[error("reserved {field} is {value:#x}, must be zero")]
    Reserved {
        /// Which field.
        field: &'static str,
        /// Value found.
        value: u64,
    },
    /// A field that must not be zero is.
    #[error("{field} is 0")]
    Zero {
        /// Which field.
        field: &'static str,
    },
    /// A length (of a string, a body, a frame or a message) outside its bounds.
    #[error("{field} is {len} bytes long; allowed {min}..={max}")]
    Length {
        /// Which length.
        field: &'static str,
        /// The length.
        len: usize,
        /// Shortest allowed.
        min: usize,
        /// Longest allowed.
        max: usize,
    },
    /// A count exceeds its limit.
    #[error("{field} {count} exceeds the limit of {max}")]
    Count {
        /// Which count.
        field: &'static str,
        /// The count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A count field disagrees with the items present.
    #[error("{field} says {count}, {found} present")]
    CountMismatch {
        /// Which count.
        field: &'static str,
        /// The count field.
        count: usize,
        /// Items found.
        found: usize,
    },
    /// An enumeration code (a message type, reason, class, kind or flag combination) that is
    /// not defined.
    #[error("{field} code {code:#x} is not defined")]
    Code {
        /// Which field.
        field: &'static str,
        /// The code found.
        code: u64,
    },
    /// Bytes left over after the last field.
    #[error("{extra} trailing bytes after {field}")]
    Trailing {
        /// What should have ended there.
        field: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A string is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    Utf8 {
        /// Which string.
        field: &'static str,
    },
    /// An endpoint descriptor does not validate.
    #[error("{field}: {error}")]
    Endpoint {
        /// Which endpoint.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        error: EndpointError,
    },
    /// A message of a frame runs past the end of the frame or is shorter than its own header.
    #[error("message {index}: length {len} at offset {offset} of a {frame_len}-byte frame")]
    MessageLength {
        /// Index of the message in the frame.
        index: usize,
        /// Its length field.
        len: usize,
        /// Its offset.
        offset: usize,
        /// Frame length.
        frame_len: usize,
    },
    /// A message of a frame uses reserved flag bits or an invalid flag combination.
    #[error("message {index}: function {code} with invalid flags {flags:#04x}")]
    MessageFlags {
        /// Index of the message in the frame.
        index: usize,
        /// Function code.
        code: u8,
        /// Flags.
        flags: u8,
    },
    /// An unauthenticated frame with a nonzero sequence number.
    #[error("{message} frame carries sequence number {seq}; unauthenticated frames carry 0")]
    Sequence {
        /// Message type name.
        message: &'static str,
        /// Sequence number found.
        seq: u32,
    },
    /// The authentication code does not verify under the session key.
    #[error("frame authentication code does not verify under the session key")]
    Mac,
    /// An authenticated message type was encoded or opened without a session key.
    #[error("{message} is authenticated and needs a session key")]
    KeyRequired {
        /// Message type name.
        message: &'static str,
    },
}

/// Byte order of a [`Reader`] or [`Writer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// Most significant byte first (network order).
    Big,
    /// Least significant byte first.
    Little,
}

/// Reads fields front to back from a byte slice; every read names its field and fails with
/// [`WireError::Truncated`] instead of reading past the end.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    order: ByteOrder,
}

impl<'a> Reader<'a> {
    /// A reader of big-endian fields.
    pub fn be(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            order: ByteOrder::Big,
        }
    }

    /// A reader of little-endian fields.
    pub fn le(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            order: ByteOrder::Little,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let truncated = || WireError::Truncated {
            field,
            needed: n,
            available: self.remaining(),
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let s = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A 16-bit integer.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        let a = self.array(field)?;
        Ok(match self.order {
            ByteOrder::Big => u16::from_be_bytes(a),
            ByteOrder::Little => u16::from_le_bytes(a),
        })
    }

    /// A 32-bit integer.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let a = self.array(field)?;
        Ok(match self.order {
            ByteOrder::Big => u32::from_be_bytes(a),
            ByteOrder::Little => u32::from_le_bytes(a),
        })
    }

    /// A 64-bit integer.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let a = self.array(field)?;
        Ok(match self.order {
            ByteOrder::Big => u64::from_be_bytes(a),
            ByteOrder::Little => u64::from_le_bytes(a),
        })
    }

    /// `len` bytes of UTF-8.
    pub fn utf8(&mut self, field: &'static str, len: usize) -> Result<String, WireError> {
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| WireError::Utf8 { field })
    }

    /// Ends the read: every byte must have been consumed.
    pub fn finish(self, field: &'static str) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::Trailing { field, extra }),
        }
    }
}

/// Appends fields in one byte order.
#[derive(Clone, Debug)]
pub struct Writer {
    buf: Vec<u8>,
    order: ByteOrder,
}

impl Writer {
    /// A writer of big-endian fields.
    pub fn be() -> Writer {
        Writer {
            buf: Vec::new(),
            order: ByteOrder::Big,
        }
    }

    /// A writer of little-endian fields.
    pub fn le() -> Writer {
        Writer {
            buf: Vec::new(),
            order: ByteOrder::Little,
        }
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A 16-bit integer.
    pub fn u16(&mut self, v: u16) {
        match self.order {
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// A 32-bit integer.
    pub fn u32(&mut self, v: u32) {
        match self.order {
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// A 64-bit integer.
    pub fn u64(&mut self, v: u64) {
        match self.order {
            ByteOrder::Big => self.buf.extend_from_slice(&v.to_be_bytes()),
            ByteOrder::Little => self.buf.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// `found` must be the format's `expected` magic.
pub fn check_magic(
    format: &'static str,
    found: &[u8],
    expected: &'static [u8],
) -> Result<(), WireError> {
    if found == expected {
        Ok(())
    } else {
        Err(WireError::Magic {
            format,
            found: found.to_vec(),
            expected,
        })
    }
}

/// `found` must be one of the versions this build reads (`supported` says which, for the
/// error).
pub fn check_version(
    format: &'static str,
    found: u32,
    readable: impl Fn(u32) -> bool,
    supported: &'static str,
) -> Result<(), WireError> {
    if readable(found) {
        Ok(())
    } else {
        Err(WireError::Version {
            format,
            found,
            supported,
        })
    }
}

/// The checksum carried (`found`) must be the one computed.
pub fn check_crc32c(format: &'static str, found: u32, computed: u32) -> Result<(), WireError> {
    if found == computed {
        Ok(())
    } else {
        Err(WireError::Checksum {
            format,
            found,
            computed,
        })
    }
}

/// A reserved field must be zero.
pub fn check_reserved(field: &'static str, value: u64) -> Result<(), WireError> {
    if value == 0 {
        Ok(())
    } else {
        Err(WireError::Reserved { field, value })
    }
}

/// A length must lie in `min..=max`.
pub fn check_length(
    field: &'static str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), WireError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(WireError::Length {
            field,
            len,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_either_byte_order_and_names_the_truncated_field() {
        let bytes = [1u8, 2, 3, 4, 5, 6, 7];
        let mut be = Reader::be(&bytes);
        assert_eq!(be.u16("a").unwrap(), 0x0102);
        assert_eq!(be.u32("b").unwrap(), 0x0304_0506);
        assert_eq!(
            be.u16("c"),
            Err(WireError::Truncated {
                field: "c",
                needed: 2,
                available: 1
            })
        );
        let mut le = Reader::le(&bytes);
        assert_eq!(le.u16("a").unwrap(), 0x0201);
        assert_eq!(le.remaining(), 5);
        assert_eq!(
            le.finish("record"),
            Err(WireError::Trailing {
                field: "record",
                extra: 5
            })
        );
        assert!(Reader::be(&bytes).take(usize::MAX, "huge").is_err());
    }

    #[test]
    fn a_writer_writes_what_a_reader_of_its_order_reads() {
        for (mut w, big) in [(Writer::be(), true), (Writer::le(), false)] {
            w.u8(9);
            w.u16(0xa1b2);
            w.u32(0xdead_beef);
            w.u64(u64::MAX - 7);
            w.bytes(b"ok");
            assert_eq!(w.len(), 17);
            let bytes = w.into_vec();
            let mut r = if big {
                Reader::be(&bytes)
            } else {
                Reader::le(&bytes)
            };
            assert_eq!(r.u8("a").unwrap(), 9);
            assert_eq!(r.u16("b").unwrap(), 0xa1b2);
            assert_eq!(r.u32("c").unwrap(), 0xdead_beef);
            assert_eq!(r.u64("d").unwrap(), u64::MAX - 7);
            assert_eq!(r.utf8("e", 2).unwrap(), "ok");
            r.finish("all").unwrap();
        }
    }

    #[test]
    fn the_shared_checks_name_what_they_found() {
        assert!(check_magic("f", b"ILCM", b"ILCM").is_ok());
        let e = check_magic("f", b"XXXX", b"ILCM").unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
        assert!(check_version("f", 2, |v| v == 1, "1").is_err());
        assert!(check_crc32c("f", 1, 2).is_err());
        assert_eq!(
            check_reserved("pad", 3),
            Err(WireError::Reserved {
                field: "pad",
                value: 3
            })
        );
        assert!(check_length("name", 0, 1, 64).is_err());
        assert!(check_length("name", 64, 1, 64).is_ok());
    }
}
