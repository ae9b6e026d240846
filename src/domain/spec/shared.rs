//! One copy of an `extract` section for every source of a node that extracts
//! alike. Thousands of sources built from one template differ in their URL
//! and id only; their field rules (a map with a rule per field) would
//! otherwise be held once per source.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{ExtractSpec, SourceSpec};

/// The `extract` sections in use, by a hash of their JSON form. Entries are
/// weak: a section goes when the last source holding it does.
#[derive(Default)]
pub struct SharedExtracts {
    by_hash: HashMap<[u8; 32], Weak<ExtractSpec>>,
}

impl SharedExtracts {
    /// Points `spec.extract` at the copy already shared by sources with the
    /// same rules, or makes its own the one others will share.
    pub fn share(&mut self, spec: &mut SourceSpec) {
        let Ok(json) = serde_json::to_vec(&*spec.extract) else {
            return;
        };
        let hash = *blake3::hash(&json).as_bytes();
        if let Some(shared) = self.by_hash.get(&hash).and_then(Weak::upgrade) {
            if shared == spec.extract {
                spec.extract = shared;
                return;
            }
        }
        // Forget the sections no source holds any more, now and then (at
        // each power of two past 64 entries: amortised constant time).
        if self.by_hash.len() >= 64 && self.by_hash.len().is_power_of_two() {
            self.by_hash.retain(|_, e| e.strong_count() > 0);
        }
        self.by_hash.insert(hash, Arc::downgrade(&spec.extract));
    }

    /// Distinct sections still held by some source.
    pub fn len(&self) -> usize {
        self.by_hash
            .values()
            .filter(|e| e.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// (De)serialises an `Arc<ExtractSpec>` as the section itself (serde's `rc`
/// feature would do the same for every `Arc` of every dependency).
pub(super) mod arc {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ExtractSpec;

    pub fn serialize<S: Serializer>(extract: &Arc<ExtractSpec>, s: S) -> Result<S::Ok, S::Error> {
        extract.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<ExtractSpec>, D::Error> {
        ExtractSpec::deserialize(d).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, css: &str) -> SourceSpec {
        SourceSpec::from_json(
            serde_json::json!({
                "id": id,
                "url": format!("https://example.org/{id}"),
                "collection": "c",
                "extract": {"scope": "article", "fields": {"title": css}},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn sources_that_extract_alike_share_one_section() {
        let mut shared = SharedExtracts::default();
        let (mut a, mut b, mut c) = (spec("a", "h1"), spec("b", "h1"), spec("c", "h2"));
        for s in [&mut a, &mut b, &mut c] {
            shared.share(s);
        }
        assert!(Arc::ptr_eq(&a.extract, &b.extract));
        assert!(!Arc::ptr_eq(&a.extract, &c.extract));
        assert_eq!(shared.len(), 2);
        drop(c);
        assert_eq!(shared.len(), 1);
    }

    #[test]
    fn the_section_serialises_as_itself() {
        let a = spec("a", "h1");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["extract"]["fields"]["title"], "h1");
        let back: SourceSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }
}
