//! Timestamps written as JSON without `core::fmt`: exactly the text chrono's
//! serde writes for a `DateTime<Utc>` (RFC 3339, `Z`, a fraction of 0, 3, 6
//! or 9 digits, the fewest that keep the nanoseconds), at a fraction of its
//! cost. chrono formats through `Display`, which showed as about 4,400
//! instructions a timestamp in the store's profiles, twice per stored item
//! and once per item served with a newer `last_seen`. Reading is left to
//! chrono.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// The longest text: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const LONGEST: usize = 30;

/// `at` as chrono's serde writes it, or `None` for what this fast path does
/// not cover (a year outside 0..=9999, a leap second): chrono then writes it.
fn format(at: &DateTime<Utc>, buf: &mut [u8; LONGEST]) -> Option<usize> {
    let year = at.year();
    let nanos = at.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let digits = |buf: &mut [u8; LONGEST], at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(buf, 0, 4, year as u32);
    buf[4] = b'-';
    digits(buf, 5, 2, at.month());
    buf[7] = b'-';
    digits(buf, 8, 2, at.day());
    buf[10] = b'T';
    digits(buf, 11, 2, at.hour());
    buf[13] = b':';
    digits(buf, 14, 2, at.minute());
    buf[16] = b':';
    digits(buf, 17, 2, at.second());
    let mut len = 19;
    let (width, value) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (3, nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        (6, nanos / 1_000)
    } else {
        (9, nanos)
    };
    if width > 0 {
        buf[len] = b'.';
        digits(buf, len + 1, width, value);
        len += 1 + width;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// Appends `at` to `out` as a JSON string, as `serde_json::to_writer` would.
pub fn write_json(at: &DateTime<Utc>, out: &mut Vec<u8>) {
    let mut buf = [0u8; LONGEST];
    match format(at, &mut buf) {
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        None => serde_json::to_writer(out, at).expect("a timestamp serialises"),
    }
}

/// `at` as chrono's serde writes it, without the quotes.
pub fn text(at: &DateTime<Utc>) -> String {
    let mut buf = [0u8; LONGEST];
    match format(at, &mut buf) {
        Some(len) => String::from_utf8_lossy(&buf[..len]).into_owned(),
        None => at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    }
}

/// `#[serde(serialize_with = "timestamp::serialize")]`: what chrono's own
/// `Serialize` writes, faster.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; LONGEST];
    match format(at, &mut buf) {
        Some(len) => {
            serializer.serialize_str(std::str::from_utf8(&buf[..len]).expect("ASCII digits"))
        }
        None => serde::Serialize::serialize(at, serializer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The text chrono's serde gives, and ours, for `at`.
    fn both(at: DateTime<Utc>) -> (String, String) {
        let chrono = serde_json::to_string(&at).unwrap();
        let mut ours = Vec::new();
        write_json(&at, &mut ours);
        let mut via_serde = serde_json::Serializer::new(Vec::new());
        serialize(&at, &mut via_serde).unwrap();
        let via_serde = String::from_utf8(via_serde.into_inner()).unwrap();
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours, via_serde);
        assert_eq!(format!("\"{}\"", text(&at)), ours);
        (chrono, ours)
    }

    #[test]
    fn timestamps_read_exactly_as_chrono_writes_them() {
        let base = Utc.with_ymd_and_hms(2026, 11, 27, 13, 5, 9).unwrap();
        let mut cases = vec![
            base,
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            // Outside the fast path: chrono writes them.
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
            Utc::now(),
        ];
        for nanos in [
            1,
            10,
            999,
            1_000,
            1_001,
            120_000,
            1_000_000,
            5_000_000,
            100_000_000,
            999_999_999,
            123_456_789,
            120_000_000,
            120_300_000,
        ] {
            cases.push(base + chrono::Duration::nanoseconds(nanos));
        }
        // A spread of instants over centuries, each with its own fraction.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 253_402_300_799) as i64; // up to 9999-12-31
            let nanos = ((x >> 20) % 1_000_000_000) as u32;
            let nanos = match x % 4 {
                0 => 0,
                1 => nanos / 1_000_000 * 1_000_000,
                2 => nanos / 1_000 * 1_000,
                _ => nanos,
            };
            cases.push(DateTime::from_timestamp(secs, nanos).unwrap());
        }
        for at in cases {
            let (chrono, ours) = both(at);
            assert_eq!(ours, chrono, "{at:?}");
            assert_eq!(serde_json::from_str::<DateTime<Utc>>(&ours).unwrap(), at);
        }
    }
}
