//! The `runs` tree: `source id \0 start time (big-endian micros)` ->
//! [`RunRecord`], the bounded run history of each source.
//!
//! Every run of every source writes one, and sled keeps the newest in its
//! cache: a run is stored in the store's compact form (see `compact` and
//! [`encode_run`]), about a fifth of its JSON. Runs stored as JSON before
//! that form are read as before.

use super::compact::{put_opt, put_str, put_time, put_var, read_all};
use super::{decode, Result, Store};
use crate::domain::{Health, RunRecord};

/// The first byte of a run in its compact form (a JSON run starts with `{`).
const RUN_V1: u8 = 1;

/// A run's stored bytes: [`RUN_V1`]; its start and end; duration, pages,
/// items, inserted, changed, not_modified, follows, follow_errors and
/// blocked as counts ([`put_var`]); health (0 ok, 1 degraded); error, code,
/// stopped, follow_error and health_reason, each optional; the filled
/// fields (a count, then each name and count); the blocked sample (a
/// count, then each string).
fn encode_run(run: &RunRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(RUN_V1);
    put_time(&mut out, run.started_at);
    put_time(&mut out, run.finished_at);
    for n in [
        run.duration_ms,
        u64::from(run.pages),
        run.items,
        run.inserted,
        run.changed,
        run.not_modified,
        run.follows,
        run.follow_errors,
        run.blocked,
    ] {
        put_var(&mut out, n);
    }
    out.push(match run.health {
        Health::Ok => 0,
        Health::Degraded => 1,
    });
    for s in [
        &run.error,
        &run.code,
        &run.stopped,
        &run.follow_error,
        &run.health_reason,
    ] {
        put_opt(&mut out, s.as_deref());
    }
    put_var(&mut out, run.filled.len() as u64);
    for (field, n) in &run.filled {
        put_str(&mut out, field);
        put_var(&mut out, *n);
    }
    put_var(&mut out, run.blocked_sample.len() as u64);
    for s in &run.blocked_sample {
        put_str(&mut out, s);
    }
    out
}

fn decode_run(bytes: &[u8]) -> Result<RunRecord> {
    if bytes.first() != Some(&RUN_V1) {
        return decode("run", bytes);
    }
    read_all("run", bytes, |r| {
        let (started_at, finished_at) = (r.time()?, r.time()?);
        let mut run = RunRecord {
            started_at,
            finished_at,
            duration_ms: r.var()?,
            pages: u32::try_from(r.var()?).ok()?,
            items: r.var()?,
            inserted: r.var()?,
            changed: r.var()?,
            not_modified: r.var()?,
            follows: r.var()?,
            follow_errors: r.var()?,
            blocked: r.var()?,
            health: match r.byte()? {
                0 => Health::Ok,
                1 => Health::Degraded,
                _ => return None,
            },
            error: r.opt()?,
            code: r.opt()?,
            stopped: r.opt()?,
            follow_error: r.opt()?,
            health_reason: r.opt()?,
            ..RunRecord::default()
        };
        for _ in 0..r.var()? {
            let field = r.str()?;
            run.filled.insert(field, r.var()?);
        }
        // No room reserved from the count: a count the bytes cannot back
        // ends at the first string that is not there.
        for _ in 0..r.var()? {
            run.blocked_sample.push(r.str()?);
        }
        Some(run)
    })
}

/// Runs kept per source; older ones are dropped. About one run in 16 trims
/// its source's history, and [`Store::runs`] shows the newest RUNS_KEPT.
pub const RUNS_KEPT: usize = 100;

pub(super) fn run_prefix(source: &str) -> Vec<u8> {
    let mut key = source.as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Appends a run to a source's history, dropping the oldest beyond [`RUNS_KEPT`].
    pub fn record_run(&self, source: &str, run: &RunRecord) -> Result<()> {
        self.write(|| self.record_run_unguarded(source, run))
    }

    fn record_run_unguarded(&self, source: &str, run: &RunRecord) -> Result<()> {
        let mut key = run_prefix(source);
        let micros = run.started_at.timestamp_micros().max(0) as u64;
        key.extend_from_slice(&micros.to_be_bytes());
        self.runs.insert(key, encode_run(run))?;
        // Trimming reads the whole history: do it for about one run in
        // 16, picked by a hash of its start time (whatever the
        // clock's resolution, and never the same sources every time).
        if micros.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 == 0 {
            let keys: Vec<sled::IVec> = self
                .runs
                .scan_prefix(run_prefix(source))
                .keys()
                .collect::<std::result::Result<_, _>>()?;
            if keys.len() > RUNS_KEPT {
                for k in &keys[..keys.len() - RUNS_KEPT] {
                    self.runs.remove(k)?;
                }
            }
        }
        Ok(())
    }

    /// The newest `limit` runs of a source, newest first.
    pub fn runs(&self, source: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.runs
            .scan_prefix(run_prefix(source))
            .values()
            .rev()
            .take(limit.min(RUNS_KEPT))
            .map(|v| decode_run(&v?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn a_run_is_stored_compactly_and_read_back_whole() {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let full = RunRecord {
            started_at: at,
            finished_at: at + chrono::Duration::nanoseconds(1_234_567_891),
            duration_ms: 1234,
            pages: 7,
            items: 300,
            inserted: 200,
            changed: 1,
            error: Some("HTTP 500".into()),
            code: Some("disk_full".into()),
            stopped: Some("robots_disallowed".into()),
            not_modified: 2,
            filled: [("title".to_owned(), 299), ("price".to_owned(), 0)].into(),
            follows: 9,
            follow_errors: u64::MAX,
            follow_error: Some("é".into()),
            health: Health::Degraded,
            health_reason: Some("price went empty".into()),
            blocked: 3,
            blocked_sample: vec!["http://10.0.0.1/ (private)".into(), String::new()],
        };
        let plain = RunRecord {
            started_at: at,
            finished_at: at,
            pages: 1,
            items: 20,
            filled: [("title".to_owned(), 20)].into(),
            ..RunRecord::default()
        };
        for run in [&full, &plain, &RunRecord::default()] {
            let bytes = encode_run(run);
            assert_eq!(bytes[0], RUN_V1);
            assert_eq!(&decode_run(&bytes).unwrap(), run);
            // Cut short or with a byte over: corrupt, not misread.
            assert!(decode_run(&bytes[..bytes.len() - 1]).is_err());
            assert!(decode_run(&[bytes.as_slice(), &[0]].concat()).is_err());
        }
        // A plain run takes a fifth of its JSON.
        let (compact, json) = (encode_run(&plain).len(), super::super::encode(&plain).len());
        assert!(compact * 4 < json, "{compact} bytes against {json} as JSON");
        // Runs stored as JSON before still read, in the same history.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut key = run_prefix("s");
        key.extend_from_slice(&0u64.to_be_bytes());
        store.runs.insert(key, super::super::encode(&full)).unwrap();
        store.record_run("s", &plain).unwrap();
        assert_eq!(store.runs("s", 10).unwrap(), vec![plain, full]);
    }
}
