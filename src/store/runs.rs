//! The `runs` tree: `source id \0 start time (big-endian micros)` ->
//! [`RunRecord`], the bounded run history of each source.

use super::{decode, encode, Result, Store};
use crate::domain::RunRecord;

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
        self.runs.insert(key, encode(run))?;
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
            .map(|v| decode("run", &v?))
            .collect()
    }
}
