//! Placement: which replica owns which tenant, as a pure function of the live members and the
//! configured tenants. Rendezvous (highest random weight) hashing keyed by **credential**
//! (`auth_url` + `client_id`), so tenants sharing a Wiz service account share one owner and its
//! rate limiter stays true across the cluster, and a membership change moves only the credentials
//! whose winner joined or left (about 1/n of them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use crate::config::Fleet;

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
    /// Tenants whose full settings this replica keeps in memory: the ones it runs (a tenant it
    /// does not own costs only its [`Fleet`] entry). More than `owned` only before the first
    /// placement; fewer when tenants placed here could not be read from the files.
    pub settings_held: usize,
    /// Tenants that moved here and away by this placement.
    pub acquired: usize,
    pub released: usize,
    /// The digest of the configured tenant set.
    pub digest: String,
    /// When placement last changed here.
    pub placed_at: Option<SystemTime>,
}

/// Where one placement's time went, for its log line (the outcome is what the heartbeat and
/// `/cluster` read; this is only the placement task's): waiting for a reload in progress,
/// computing the owners, and reading the settings of the tenants placed here (the rest is
/// starting and stopping tenants).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlaceTimings {
    pub waited: std::time::Duration,
    pub computed: std::time::Duration,
    pub read: std::time::Duration,
    pub read_from: ReadFrom,
}

/// Where a placement read the settings of the tenants it gave this replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// It gave none.
    #[default]
    Nothing,
    /// A configuration built in memory holds every tenant's settings.
    Memory,
    /// Their byte ranges in the main file, by its index.
    Index,
    /// The main file read whole (and indexed), as it was last checked.
    File,
    /// The files changed since last checked: loaded and checked whole, as a reload does.
    Checked,
}

impl ReadFrom {
    /// The name the placement log line gives.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Nothing => "nothing",
            ReadFrom::Memory => "memory",
            ReadFrom::Index => "index",
            ReadFrom::File => "file",
            ReadFrom::Checked => "checked",
        }
    }
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
    heaviest(credential, members.iter())
}

/// Of `candidates`, the one weighing most for `credential` (ties broken by id). The one rule
/// [`owner_of`] and [`place_from`] share.
fn heaviest<'m>(credential: &str, candidates: impl Iterator<Item = &'m String>) -> Option<&'m str> {
    candidates
        .map(|m| (stable_hash(&[m.as_bytes(), credential.as_bytes()]), m))
        .max()
        .map(|(_, m)| m.as_str())
}

/// Places every tenant of `fleet` over `members`: each credential's owner is computed once.
pub fn place(fleet: &Fleet, members: &BTreeSet<String>) -> Owners {
    let list: Vec<String> = members.iter().cloned().collect();
    let mut by_credential: HashMap<&str, u16> = HashMap::new();
    let owner = fleet
        .entries()
        .map(|e| {
            *by_credential.entry(&e.credential).or_insert_with(|| {
                owner_of(&e.credential, members)
                    .and_then(|o| list.iter().position(|m| m == o))
                    .map_or(Owners::NONE, |i| i as u16)
            })
        })
        .collect();
    Owners {
        members: list,
        owner,
        fleet: fleet.stamp(),
    }
}

/// [`place`]'s answer for `members`, computed from `prev`, the same `fleet` placed over other
/// members. Exact, by the rendezvous property: a tenant whose owner stayed keeps it unless a
/// joining member weighs more, so only the joiners' weights are computed for it; a tenant whose
/// owner left is placed over every member. A failover (members only left) hashes the departed
/// members' tenants alone, about a tenth of the fleet on ten replicas, instead of the whole
/// fleet once per member. Falls back to [`place`] when `prev` is not of this fleet.
pub fn place_from(prev: &Owners, fleet: &Fleet, members: &BTreeSet<String>) -> Owners {
    if prev.fleet != fleet.stamp() || prev.members.is_empty() {
        return place(fleet, members);
    }
    let list: Vec<String> = members.iter().cloned().collect();
    let index = |m: &str| {
        list.iter()
            .position(|x| x == m)
            .map_or(Owners::NONE, |i| i as u16)
    };
    // Each earlier member's index among the new ones (NONE when it left).
    let kept: Vec<u16> = prev.members.iter().map(|m| index(m)).collect();
    let joined: Vec<&String> = members
        .iter()
        .filter(|m| !prev.members.contains(m))
        .collect();
    let mut by_credential: HashMap<&str, u16> = HashMap::new();
    let owner = fleet
        .entries()
        .zip(&prev.owner)
        .map(|(e, o)| {
            let stayed = kept
                .get(usize::from(*o))
                .copied()
                .filter(|k| *k != Owners::NONE);
            match stayed {
                Some(k) if joined.is_empty() => k,
                _ => *by_credential.entry(&e.credential).or_insert_with(|| {
                    let winner = match stayed {
                        // The earlier owner weighs most among those who stayed.
                        Some(k) => heaviest(
                            &e.credential,
                            std::iter::once(&list[usize::from(k)]).chain(joined.iter().copied()),
                        ),
                        None => owner_of(&e.credential, members),
                    };
                    winner.map_or(Owners::NONE, index)
                }),
            }
        })
        .collect();
    Owners {
        members: list,
        owner,
        fleet: fleet.stamp(),
    }
}

/// The owner of each tenant of a [`Fleet`], for one set of members: two bytes a tenant.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    /// The members, in order; `owner` indexes them.
    members: Vec<String>,
    /// Per fleet entry (same order); [`Owners::NONE`] without members.
    owner: Vec<u16>,
    /// The [`Fleet::stamp`] of the fleet placed.
    fleet: u64,
}

impl Owners {
    const NONE: u16 = u16::MAX;

    /// The members placement was computed over.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(String::as_str)
    }

    /// The ids `member` owns, in id order.
    pub fn owned_by<'f>(&'f self, fleet: &'f Fleet, member: &str) -> BTreeSet<&'f str> {
        let Some(i) = self.members.iter().position(|m| m == member) else {
            return BTreeSet::new();
        };
        fleet
            .entries()
            .zip(&self.owner)
            .filter(|(_, o)| usize::from(**o) == i)
            .map(|(e, _)| &*e.id)
            .collect()
    }

    /// Tenants per member (every member listed, with 0 when it owns none).
    pub fn per_member(&self) -> BTreeMap<String, usize> {
        let mut counts = vec![0usize; self.members.len()];
        for o in &self.owner {
            if let Some(c) = counts.get_mut(usize::from(*o)) {
                *c += 1;
            }
        }
        self.members.iter().cloned().zip(counts).collect()
    }
}

/// A digest of the configured tenant set (ids and credentials, not secrets): replicas that read
/// different configurations publish different digests, and the difference is reported.
pub fn fleet_digest(fleet: &Fleet) -> String {
    let mut h1: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h2: u64 = 0x2545_f491_4f6c_dd1d;
    for e in fleet.entries() {
        let (id, cred) = (&*e.id, &*e.credential);
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
    fn placing_a_fleet_agrees_with_owner_of_and_counts_every_member() {
        let settings = crate::config::load_str(
            "fleet.toml",
            &{
                let mut t = String::from("[sinks.out]\ntype = \"stdout\"\n");
                for i in 0..300 {
                    // Tenants 2k and 2k+1 share a credential.
                    t.push_str(&format!(
                        "[tenants.t{i:03}]\napi_url = \"https://api.us1.app.wiz.io/graphql\"\nclient_id = \"c{}\"\nclient_secret = \"s\"\n",
                        i / 2
                    ));
                }
                t
            },
            &crate::config::EnvSource::Fixed(Default::default()),
        )
        .unwrap();
        let fleet = Fleet::of(&settings.tenants);
        assert_eq!(fleet.len(), 300);
        assert!(fleet.contains("t042") && !fleet.contains("t300"));
        let three = members(&["r1", "r2", "r3"]);
        let owners = place(&fleet, &three);
        let per = owners.per_member();
        assert_eq!(per.values().sum::<usize>(), 300);
        assert_eq!(per.len(), 3);
        let mut seen = 0;
        for m in &three {
            let owned = owners.owned_by(&fleet, m);
            assert_eq!(owned.len(), per[m]);
            seen += owned.len();
            for t in &settings.tenants {
                let expected = owner_of(&t.credential_key(), &three) == Some(m.as_str());
                assert_eq!(owned.contains(t.id.as_str()), expected, "{} on {m}", t.id);
            }
        }
        assert_eq!(seen, 300);
        // A member placement does not know owns nothing; no members: nobody owns anything.
        assert!(owners.owned_by(&fleet, "r9").is_empty());
        let none = place(&fleet, &BTreeSet::new());
        assert!(none.per_member().is_empty());
        // The digest is the one a replica computes from full settings.
        assert_eq!(
            fleet_digest(&fleet),
            fleet_digest(&Fleet::of(&settings.tenants))
        );
        assert_eq!(fleet_digest(&fleet).len(), 32);
        assert_ne!(fleet_digest(&fleet), fleet_digest(&Fleet::default()));
    }

    #[test]
    fn placing_from_an_earlier_placement_gives_the_same_owners() {
        // 2,000 tenants, 1,500 credentials (some shared), over member sets that lose, gain and
        // swap members, one after another as a cluster's would.
        let entries: Vec<(String, String)> = (0..2000)
            .map(|i| (format!("t{i:04}"), format!("https://auth|c{}", i % 1500)))
            .collect();
        let fleet = Fleet::from_entries(entries);
        let steps: [&[&str]; 8] = [
            &["r1", "r2", "r3", "r4"],
            &["r1", "r2", "r4"],
            &["r1", "r2", "r4", "r5"],
            &["r2", "r4", "r5", "r6", "r7"],
            &["r2"],
            &["r0", "r2", "r9"],
            &[],
            &["r3", "r8"],
        ];
        let mut prev = place(&fleet, &members(steps[0]));
        for step in &steps[1..] {
            let m = members(step);
            let full = place(&fleet, &m);
            let from = place_from(&prev, &fleet, &m);
            assert_eq!(from.members, full.members, "{step:?}");
            assert_eq!(from.owner, full.owner, "{step:?}");
            prev = from;
        }
        // Another fleet: placed whole, also when it has as many tenants.
        let m = members(&["r1", "r2"]);
        let other = Fleet::from_entries(vec![("a".into(), "https://auth|a".into())]);
        assert_eq!(place_from(&prev, &other, &m).owner, place(&other, &m).owner);
        // (Taken as this fleet's, r3 leaving would keep every tenant of r1 and r2 where the
        // earlier placement had the entry of the same index.)
        let prev = place(&fleet, &members(&["r1", "r2", "r3"]));
        let same_length = Fleet::from_entries(
            (0..2000)
                .map(|i| (format!("u{i:04}"), format!("https://auth|d{i}")))
                .collect(),
        );
        assert_eq!(
            place_from(&prev, &same_length, &m).owner,
            place(&same_length, &m).owner
        );
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
