//! The `hosts` tree: host -> [`HostRecord`], each host's stored policy
//! override, reset ones as tombstones (the replicated host registry's
//! records, written by `control::hosts`).

use super::{decode, encode, Result, Store};
use crate::domain::HostRecord;

impl Store {
    pub fn put_host(&self, record: &HostRecord) -> Result<()> {
        self.write(|| {
            self.hosts.insert(record.host.as_bytes(), encode(record))?;
            Ok(())
        })
    }

    pub fn host(&self, host: &str) -> Result<Option<HostRecord>> {
        self.read(|| {
            self.hosts
                .get(host.as_bytes())?
                .map(|b| decode("host", &b))
                .transpose()
        })
    }

    /// Every host record, tombstones included, in host order.
    pub fn hosts(&self) -> Result<Vec<HostRecord>> {
        self.read(|| {
            self.hosts
                .iter()
                .values()
                .map(|v| decode("host", &v?))
                .collect()
        })
    }
}
