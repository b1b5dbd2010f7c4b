//! The configured fleet as every cluster replica keeps it, owned or not: each tenant's id and
//! credential key, and nothing else (about 100 bytes a tenant, where a resolved [`TenantSpec`]
//! takes kilobytes). Placement needs no more; a replica holds full settings only for the tenants
//! it owns, and reads the others from the files when placement gives them to it (see
//! [`crate::reload`]).

use super::settings::TenantSpec;

/// Every configured tenant's id and credential, in id order.
#[derive(Debug)]
pub struct Fleet {
    entries: Vec<FleetEntry>,
    /// Unique to this fleet in the process: a placement computed over it records it, so that
    /// one computed over another fleet (even of the same length) is never taken as its own
    /// (see [`crate::cluster::placement::place_from`]).
    stamp: u64,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new(Vec::new())
    }
}

/// One configured tenant, as placement sees it.
#[derive(Debug)]
pub struct FleetEntry {
    pub id: Box<str>,
    /// [`TenantSpec::credential_key`]: tenants sharing it share an owner.
    pub credential: Box<str>,
}

impl Fleet {
    /// The fleet of `tenants`, given in id order (as [`super::Settings::tenants`] holds them).
    pub fn of(tenants: &[std::sync::Arc<TenantSpec>]) -> Fleet {
        let entries: Vec<FleetEntry> = tenants
            .iter()
            .map(|t| FleetEntry {
                id: t.id.as_str().into(),
                credential: t.credential_key().into_boxed_str(),
            })
            .collect();
        debug_assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
        Fleet::new(entries)
    }

    fn new(entries: Vec<FleetEntry>) -> Fleet {
        static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Fleet {
            entries,
            stamp: STAMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This fleet's stamp (see the field).
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// A fleet of (id, credential) pairs, sorted here by id: for tests of placement.
    #[cfg(test)]
    pub(crate) fn from_entries(mut pairs: Vec<(String, String)>) -> Fleet {
        pairs.sort();
        let entries = pairs
            .into_iter()
            .map(|(id, credential)| FleetEntry {
                id: id.into_boxed_str(),
                credential: credential.into_boxed_str(),
            })
            .collect();
        Fleet::new(entries)
    }

    /// Configured tenants.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `id` is configured.
    pub fn contains(&self, id: &str) -> bool {
        self.entries.binary_search_by(|e| (*e.id).cmp(id)).is_ok()
    }

    /// The tenants, in id order.
    pub fn entries(&self) -> impl Iterator<Item = &FleetEntry> {
        self.entries.iter()
    }
}
