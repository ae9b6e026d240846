//! The `sources` tree: source id -> [`SourceRecord`], tombstones included
//! (the replicated registry's records, written by the Orchestrator).

use super::{decode, encode, Result, Store};
use crate::domain::SourceRecord;

impl Store {
    pub fn put_source(&self, record: &SourceRecord) -> Result<()> {
        self.write(|| {
            self.sources
                .insert(record.spec.id.as_bytes(), encode(record))?;
            Ok(())
        })
    }

    pub fn source(&self, id: &str) -> Result<Option<SourceRecord>> {
        self.sources
            .get(id.as_bytes())?
            .map(|b| decode("source", &b))
            .transpose()
    }

    /// Every source record, tombstones included, in id order.
    pub fn sources(&self) -> Result<Vec<SourceRecord>> {
        self.sources
            .iter()
            .values()
            .map(|v| decode("source", &v?))
            .collect()
    }
}
