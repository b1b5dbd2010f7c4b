//! The compact binary form of state records in JetStream (cluster mode): at most 36 bytes per
//! known issue for Wiz's UUID ids, so a tenant's snapshot stays small and the per-page delta is
//! one short message.
//!
//! A message is a sequence of records:
//! - `R` id known: a remembered issue state;
//! - `M` id known: an in-flight mark (an opening being delivered);
//! - `S` id: a settled mark;
//! - `C` len json: the checkpoint.
//!
//! An id is `0` + 16 bytes for a lower-case hyphenated UUID, else its length (1..=254) and bytes,
//! or `255`, a u16 length and bytes. A known state is the 16-byte fingerprint, a status byte (high
//! bit: silent; 1..=5 the usual statuses, 0 followed by a length-prefixed string for any other)
//! and a severity byte (0 none, 1..=5 Wiz's five, 255 followed by a length-prefixed string).

use std::collections::BTreeMap;

use super::{Checkpoint, Commit, Write};
use crate::change::{Known, VANISHED};

const STATUSES: [&str; 5] = ["OPEN", "IN_PROGRESS", "RESOLVED", "REJECTED", VANISHED];
const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL"];

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if (1..=254).contains(&b.len()) {
        out.push(b.len() as u8);
    } else {
        let n = b.len().min(u16::MAX as usize);
        out.push(255);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        out.extend_from_slice(&b[..n]);
        return;
    }
    out.extend_from_slice(b);
}

fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let b = id.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for (i, c) in b.iter().enumerate() {
        if [8, 13, 18, 23].contains(&i) {
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                out[n] = h << 4 | v;
                n += 1;
            }
        }
    }
    Some(out)
}

fn put_id(out: &mut Vec<u8>, id: &str) {
    match uuid_bytes(id) {
        Some(u) => {
            out.push(0);
            out.extend_from_slice(&u);
        }
        None => put_str(out, id),
    }
}

fn put_known(out: &mut Vec<u8>, k: &Known) {
    out.extend_from_slice(&k.fingerprint);
    let silent = if k.silent { 0x80 } else { 0 };
    match STATUSES.iter().position(|s| *s == k.status) {
        Some(i) => out.push(silent | (i as u8 + 1)),
        None => {
            out.push(silent);
            put_str(out, &k.status);
        }
    }
    match k.severity.as_deref() {
        None => out.push(0),
        Some(s) => match SEVERITIES.iter().position(|x| *x == s) {
            Some(i) => out.push(i as u8 + 1),
            None => {
                out.push(255);
                put_str(out, s);
            }
        },
    }
}

/// Appends a remembered state (`R`) or an in-flight mark (`M`).
pub fn put_record(out: &mut Vec<u8>, tag: u8, id: &str, k: &Known) {
    out.push(tag);
    put_id(out, id);
    put_known(out, k);
}

pub fn put_checkpoint(out: &mut Vec<u8>, cp: &Checkpoint) {
    let json = serde_json::to_vec(cp).expect("a checkpoint serializes");
    out.push(b'C');
    out.extend_from_slice(&(json.len() as u16).to_le_bytes());
    out.extend_from_slice(&json);
}

/// Encodes one write as a delta message.
pub fn encode_write(w: &Write) -> Vec<u8> {
    let mut out = Vec::new();
    match w {
        Write::Mark(marks) => {
            for (id, k) in marks {
                put_record(&mut out, b'M', id, k);
            }
        }
        Write::Commit(Commit {
            remember,
            settle,
            checkpoint,
        }) => {
            for (id, k) in remember {
                put_record(&mut out, b'R', id, k);
            }
            for id in settle {
                out.push(b'S');
                put_id(&mut out, id);
            }
            if let Some(cp) = checkpoint {
                put_checkpoint(&mut out, cp);
            }
        }
    }
    out
}

/// A tenant's whole state, as read back from JetStream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TenantImage {
    pub checkpoint: Option<Checkpoint>,
    pub issues: BTreeMap<String, Known>,
    pub marks: BTreeMap<String, Known>,
}

impl TenantImage {
    /// Applies one message's records. An undecodable message is an error naming the offset.
    pub fn apply(&mut self, msg: &[u8]) -> Result<(), String> {
        let mut r = Reader { b: msg, at: 0 };
        while r.at < msg.len() {
            let tag = r.u8()?;
            match tag {
                b'R' | b'M' => {
                    let id = r.id()?;
                    let k = r.known()?;
                    if tag == b'R' {
                        self.issues.insert(id, k);
                    } else {
                        self.marks.insert(id, k);
                    }
                }
                b'S' => {
                    let id = r.id()?;
                    self.marks.remove(&id);
                }
                b'C' => {
                    let n = u16::from_le_bytes([r.u8()?, r.u8()?]) as usize;
                    let json = r.take(n)?;
                    self.checkpoint = serde_json::from_slice(json).ok();
                }
                t => return Err(format!("unknown record tag {t} at byte {}", r.at - 1)),
            }
        }
        Ok(())
    }

    /// The whole image as snapshot records, cut into parts of about `part_bytes`.
    /// About how many bytes [`TenantImage::encode_parts`] makes of it, without encoding it.
    pub fn approx_encoded_len(&self) -> u64 {
        let records: usize = self
            .issues
            .keys()
            .chain(self.marks.keys())
            .map(|id| id.len() + 24)
            .sum();
        let checkpoint = self
            .checkpoint
            .as_ref()
            .map_or(0, |cp| serde_json::to_vec(cp).map_or(0, |j| j.len() + 3));
        (records + checkpoint) as u64
    }

    pub fn encode_parts(&self, part_bytes: usize) -> Vec<Vec<u8>> {
        let mut parts = vec![Vec::new()];
        if let Some(cp) = &self.checkpoint {
            put_checkpoint(parts.last_mut().expect("one part"), cp);
        }
        let records = self
            .issues
            .iter()
            .map(|(id, k)| (b'R', id, k))
            .chain(self.marks.iter().map(|(id, k)| (b'M', id, k)));
        for (tag, id, k) in records {
            let last = parts.last_mut().expect("one part");
            if last.len() >= part_bytes {
                parts.push(Vec::new());
            }
            put_record(parts.last_mut().expect("one part"), tag, id, k);
        }
        parts
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| format!("record cut short at byte {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn string(&mut self, first: u8) -> Result<String, String> {
        let n = if first == 255 {
            u16::from_le_bytes([self.u8()?, self.u8()?]) as usize
        } else {
            first as usize
        };
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn id(&mut self) -> Result<String, String> {
        let first = self.u8()?;
        if first != 0 {
            return self.string(first);
        }
        let u = self.take(16)?;
        let hex = hex::encode(u);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        ))
    }

    fn known(&mut self) -> Result<Known, String> {
        let fingerprint: [u8; 16] = self.take(16)?.try_into().expect("16 bytes");
        let st = self.u8()?;
        let silent = st & 0x80 != 0;
        let status = match (st & 0x7f) as usize {
            0 => {
                let n = self.u8()?;
                self.string(n)?
            }
            i if i <= STATUSES.len() => STATUSES[i - 1].to_string(),
            i => return Err(format!("unknown status code {i} at byte {}", self.at - 1)),
        };
        let severity = match self.u8()? {
            0 => None,
            255 => {
                let n = self.u8()?;
                Some(self.string(n)?)
            }
            i if (i as usize) <= SEVERITIES.len() => Some(SEVERITIES[i as usize - 1].to_string()),
            i => return Err(format!("unknown severity code {i} at byte {}", self.at - 1)),
        };
        Ok(Known {
            fingerprint,
            status,
            severity,
            silent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(status: &str, severity: Option<&str>, silent: bool) -> Known {
        Known {
            fingerprint: [9; 16],
            status: status.into(),
            severity: severity.map(Into::into),
            silent,
        }
    }

    #[test]
    fn deltas_and_snapshots_round_trip_and_a_uuid_issue_costs_36_bytes() {
        let uuid = "0b6e2c3a-5f1d-4e7a-9c2b-1d3e4f5a6b7c";
        let one = encode_write(&Write::Commit(Commit {
            remember: vec![(uuid.into(), known("OPEN", Some("HIGH"), false))],
            ..Default::default()
        }));
        assert_eq!(
            one.len(),
            36,
            "tag, id flag, 16-byte id, fingerprint, status, severity"
        );
        let mut img = TenantImage::default();
        img.apply(&encode_write(&Write::Mark(vec![
            (
                "odd id/with spaces".into(),
                known("WEIRD", Some("SPICY"), true),
            ),
            (uuid.into(), known("OPEN", Some("HIGH"), false)),
        ])))
        .unwrap();
        let cp = Checkpoint {
            high_water: Some("2026-01-01T00:00:00Z".into()),
            last_full_sweep: Some(7),
            position: None,
            last_full_pages: None,
            updated_at_filter: None,
            baselined: None,
            feed: None,
        };
        img.apply(&encode_write(&Write::Commit(Commit {
            remember: vec![
                (uuid.into(), known("OPEN", Some("HIGH"), false)),
                ("x".repeat(300), known(VANISHED, None, false)),
            ],
            settle: vec![uuid.into()],
            checkpoint: Some(cp.clone()),
        })))
        .unwrap();
        assert_eq!(img.checkpoint, Some(cp));
        assert_eq!(img.issues[uuid], known("OPEN", Some("HIGH"), false));
        assert_eq!(img.issues[&"x".repeat(300)], known(VANISHED, None, false));
        assert_eq!(
            img.marks.keys().collect::<Vec<_>>(),
            vec!["odd id/with spaces"]
        );
        assert_eq!(
            img.marks["odd id/with spaces"],
            known("WEIRD", Some("SPICY"), true)
        );
        // A snapshot in small parts reads back to the same image.
        let parts = img.encode_parts(40);
        assert!(parts.len() >= 3, "{}", parts.len());
        let mut back = TenantImage::default();
        for p in &parts {
            back.apply(p).unwrap();
        }
        assert_eq!(back, img);
        let err = back.apply(&[b'R', 0, 1, 2]).unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        assert!(back.apply(b"Z").unwrap_err().contains("unknown record tag"));
    }
}
