//! Placement: which replica owns which tenant, as a pure function of the live members and the
//! configured tenants. Rendezvous (highest random weight) hashing keyed by **credential**
//! (`auth_url` + `client_id`), so tenants sharing a Wiz service account share one owner and its
//! rate limiter stays true across the cluster, and a membership change moves only the credentials
//! whose winner joined or left (about 1/n of them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::config::TenantSpec;

/// What a placement decided: written by the placement task (see [`crate::reload`]), read by the
/// heartbeat (what this replica announces) and `/cluster`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlaceOutcome {
    /// Tenants per member (every member listed).
    pub per_member: BTreeMap<String, usize>,
    /// Tenants this replica owns.
    pub owned: usize,
    /// Configured tenants.
    pub configured: usize,
    /// Tenants that moved here and away by this placement.
    pub acquired: usize,
    pub released: usize,
    /// The digest of the configured tenant set.
    pub digest: String,
    /// When placement last changed here.
    pub placed_at: Option<SystemTime>,
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser for avalanche): the same on every
/// replica and every build, unlike `std`'s hasher, which is allowed to change.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member that owns `credential`: the one with the highest weight (ties broken by id, so
/// every replica picks the same). `None` without members.
pub fn owner_of<'m>(credential: &str, members: &'m BTreeSet<String>) -> Option<&'m str> {
    members
        .iter()
        .map(|m| (stable_hash(&[m.as_bytes(), credential.as_bytes()]), m))
        .max()
        .map(|(_, m)| m.as_str())
}

/// Owner of every tenant (by id), for the given live members.
pub fn assign<'a>(
    tenants: impl IntoIterator<Item = &'a TenantSpec>,
    members: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut by_credential: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for t in tenants {
        let owner = by_credential
            .entry(t.credential_key())
            .or_insert_with_key(|c| owner_of(c, members).map(str::to_string))
            .clone();
        if let Some(o) = owner {
            out.insert(t.id.clone(), o);
        }
    }
    out
}

/// A digest of the configured tenant set (ids and credentials, not secrets): replicas that read
/// different configurations publish different digests, and the difference is reported.
pub fn fleet_digest<'a>(tenants: impl IntoIterator<Item = &'a TenantSpec>) -> String {
    let mut items: Vec<(String, String)> = tenants
        .into_iter()
        .map(|t| (t.id.clone(), t.credential_key()))
        .collect();
    items.sort();
    let mut h1: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h2: u64 = 0x2545_f491_4f6c_dd1d;
    for (id, cred) in &items {
        h1 = stable_hash(&[&h1.to_le_bytes(), id.as_bytes(), cred.as_bytes()]);
        h2 = stable_hash(&[cred.as_bytes(), id.as_bytes(), &h2.to_le_bytes()]);
    }
    format!("{:016x}{:016x}", h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_credential_has_one_owner_and_a_join_moves_about_a_quarter() {
        let three = members(&["r1", "r2", "r3"]);
        let four = members(&["r1", "r2", "r3", "r4"]);
        let creds: Vec<String> = (0..4000)
            .map(|i| format!("https://auth|client-{i}"))
            .collect();
        let mut per = BTreeMap::new();
        let mut moved = 0;
        for c in &creds {
            let a = owner_of(c, &three).unwrap();
            let b = owner_of(c, &four).unwrap();
            *per.entry(a).or_insert(0) += 1;
            if a != b {
                moved += 1;
                assert_eq!(b, "r4", "a join only moves credentials to the new member");
            }
        }
        // Balanced within 10% of a third each.
        for (m, n) in &per {
            assert!((1200..=1467).contains(n), "{m} owns {n} of 4000");
        }
        // About a quarter move (1000 expected).
        assert!((850..=1150).contains(&moved), "{moved} of 4000 moved");
        // Leaving moves only the leaver's credentials.
        let two = members(&["r1", "r3"]);
        for c in &creds {
            let a = owner_of(c, &three).unwrap();
            if a != "r2" {
                assert_eq!(owner_of(c, &two).unwrap(), a);
            }
        }
        assert_eq!(owner_of("x", &BTreeSet::new()), None);
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Pinned: a change here would move every tenant of a running cluster during an upgrade.
        assert_eq!(
            stable_hash(&[b"r1", b"https://auth|c"]),
            0x8f9c_a398_6242_4214
        );
    }
}
