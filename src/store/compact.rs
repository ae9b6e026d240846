//! The compact form of the records read or written on every page that is
//! found unchanged (a page's memo, a seen batch's log entry): fields in a
//! fixed order, each with its length, rather than JSON. A key or content
//! hash, 32 lowercase hex characters, is its 16 bytes. Encoding is a few
//! copies, decoding needs no parser, and the records take less than half
//! the room in sled's cache and log.
//!
//! A compact record starts with a version byte below `{`, so a reader tells
//! it from the JSON an earlier version stored.
//!
//! Strings are a u32 length and their bytes; an optional string a presence
//! byte (0 or 1) then the string; a key or hash a 0 byte and its 16 bytes,
//! or a 1 byte and the string when it is not 32 lowercase hex characters.
//! Integers are big-endian.

use chrono::{DateTime, Utc};

use super::keydir::{hex_id, hex_of};
use super::{Result, StoreError};
use crate::domain::ItemName;

/// Appends a count or length. The records' strings and lists are far
/// below 4 GiB (bodies and batches are capped long before).
pub(super) fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

pub(super) fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// A key or hash: its 16 bytes when it is 32 lowercase hex characters.
pub(super) fn put_name(out: &mut Vec<u8>, s: &str) {
    match hex_id(s) {
        Some(id) => {
            out.push(0);
            out.extend_from_slice(&id);
        }
        None => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Items named by key and hash: their number, then each key and hash.
pub(super) fn put_names(out: &mut Vec<u8>, names: &[ItemName]) {
    put_len(out, names.len());
    for name in names {
        put_name(out, &name.key);
        put_name(out, &name.hash);
    }
}

/// A count that is usually small: seven bits a byte, low bits first, the
/// top bit set on every byte but the last (LEB128); at most ten bytes.
pub(super) fn put_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A timestamp, to the nanosecond: seconds (i64) and nanoseconds (u32).
pub(super) fn put_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    out.extend_from_slice(&t.timestamp().to_be_bytes());
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
}

/// Reads a compact record; every read is `None` once the bytes run out or
/// do not make sense.
pub(super) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    pub fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub fn len(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    /// A count of things that each take at least `each` bytes, as room to
    /// reserve: never more than the bytes left could hold, whatever the
    /// count says.
    pub fn count(&mut self, each: usize) -> Option<(usize, usize)> {
        let n = self.len()?;
        Some((n, n.min(self.0.len() / each.max(1))))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count written by [`put_var`]; `None` past ten bytes or 64 bits.
    pub fn var(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return None;
            }
            n |= low << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    pub fn str(&mut self) -> Option<String> {
        let n = self.len()?;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_owned())
    }

    pub fn opt(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }

    pub fn name(&mut self) -> Option<String> {
        match self.byte()? {
            0 => Some(hex_of(self.take(16)?.try_into().ok()?)),
            1 => self.str(),
            _ => None,
        }
    }

    /// Items named by key and hash ([`put_names`]).
    pub fn names(&mut self) -> Option<Vec<ItemName>> {
        // A name takes at least two bytes, its key and its hash four.
        let (n, room) = self.count(4)?;
        let mut names = Vec::with_capacity(room);
        for _ in 0..n {
            names.push(ItemName {
                key: self.name()?,
                hash: self.name()?,
            });
        }
        Some(names)
    }

    pub fn time(&mut self) -> Option<DateTime<Utc>> {
        let secs = i64::from_be_bytes(self.take(8)?.try_into().ok()?);
        let nanos = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        DateTime::from_timestamp(secs, nanos)
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// A compact record that does not read: cut short or malformed.
pub(super) fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt {
        what,
        source: serde::de::Error::custom(format!("the compact {what} ends early or is malformed")),
    }
}

/// Reads a whole compact record with `read` (past its version byte).
pub(super) fn read_all<T>(
    what: &'static str,
    bytes: &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Option<T>,
) -> Result<T> {
    let mut r = Reader(bytes.get(1..).unwrap_or_default());
    read(&mut r)
        .filter(|_| r.done())
        .ok_or_else(|| corrupt(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let hex = "0123456789abcdef0123456789abcdef";
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let mut out = vec![1];
        put_str(&mut out, "é");
        put_opt(&mut out, None);
        put_opt(&mut out, Some(""));
        put_name(&mut out, hex);
        put_name(&mut out, "not hex");
        put_u64(&mut out, u64::MAX);
        put_time(&mut out, at);
        for n in [0, 127, 128, u64::MAX] {
            put_var(&mut out, n);
        }
        // A hex name takes its 16 bytes and a tag; a count 7 bits a byte.
        assert_eq!(
            out.len(),
            1 + 6 + 1 + 5 + 17 + 12 + 8 + 12 + (1 + 1 + 2 + 10)
        );
        let read = |r: &mut Reader<'_>| {
            Some((
                r.str()?,
                r.opt()?,
                r.opt()?,
                r.name()?,
                r.name()?,
                r.u64()?,
                r.time()?,
                [r.var()?, r.var()?, r.var()?, r.var()?],
            ))
        };
        let want = (
            "é".to_owned(),
            None,
            Some(String::new()),
            hex.to_owned(),
            "not hex".to_owned(),
            u64::MAX,
            at,
            [0, 127, 128, u64::MAX],
        );
        assert_eq!(read_all("t", &out, read).unwrap(), want);
        // One byte short, one byte over, or a length past the end: corrupt.
        assert!(read_all("t", &out[..out.len() - 1], read).is_err());
        assert!(read_all("t", &[out.as_slice(), &[0]].concat(), read).is_err());
        assert!(read_all("t", &[1, 0, 0, 0, 9, b'a'], |r| r.str()).is_err());
        // A count that runs past 64 bits, or never ends: corrupt.
        let mut too_long = vec![0xff; 9];
        too_long.push(0x02);
        assert_eq!(Reader(&too_long).var(), None);
        assert_eq!(Reader(&[0x80; 11]).var(), None);
        // A count cannot reserve more than the bytes left could hold.
        let mut r = Reader(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(r.count(2), Some((u32::MAX as usize, 1)));
    }
}
