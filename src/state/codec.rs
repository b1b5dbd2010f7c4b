//! The compact binary form of state records in JetStream (cluster mode): at most 36 bytes per
//! known issue for Wiz's UUID ids, so a tenant's snapshot stays small and the per-page delta is
//! one short message.
//!
//! A message is a sequence of records:
//! - `R` id known: a remembered issue state;
//! - `M` id known: an in-flight mark (an opening being delivered);
//! - `S` id: a settled mark;
//! - `C` len json: the checkpoint, as JSON (the first format);
//! - `K` len fields: the checkpoint in binary (the compact format, see [`put_checkpoint`]).
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

/// Which form a message's checkpoint takes: the compact one only once every live replica reads
/// it (see [`crate::state::jetstream::LiveSet::format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON checkpoints (`C`), which every version reads.
    Json,
    /// Binary checkpoints (`K`): about a quarter of the JSON's bytes for an idle tenant.
    Compact,
}

impl Format {
    /// As `GET /cluster` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Compact => "compact",
        }
    }
}

pub fn put_checkpoint(out: &mut Vec<u8>, cp: &Checkpoint, format: Format) {
    let (tag, body) = match format {
        Format::Json => (
            b'C',
            serde_json::to_vec(cp).expect("a checkpoint serializes"),
        ),
        Format::Compact => (b'K', compact_checkpoint(cp)),
    };
    out.push(tag);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

// Fields of a compact checkpoint (`K`), in this order after a byte of these flags.
const CP_HIGH_WATER: u8 = 1;
const CP_LAST_FULL_SWEEP: u8 = 1 << 1;
const CP_LAST_FULL_PAGES: u8 = 1 << 2;
const CP_UPDATED_AT_FILTER: u8 = 1 << 3;
const CP_BASELINED: u8 = 1 << 4;
/// The fields seldom set on an idle tenant (a running sweep's position, a feed's windows), as
/// JSON: they change shape more often than they cost bytes.
const CP_REST: u8 = 1 << 5;

/// The checkpoint's rarer fields, as JSON inside a compact checkpoint.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Rest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<Box<super::SweepPosition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feed: Option<Box<crate::feeds::FeedCheckpoint>>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Puts a time the connector wrote (RFC 3339 in UTC with microseconds) as a tag `1` and its
/// microseconds since 1970; any other text as a tag `0` and the text, so it reads back as it
/// was.
fn put_time(out: &mut Vec<u8>, text: &str) {
    let micros = humantime::parse_rfc3339(text)
        .ok()
        .filter(|t| humantime::format_rfc3339_micros(*t).to_string() == text)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as u64);
    match micros {
        Some(m) => {
            out.push(1);
            put_varint(out, m);
        }
        None => {
            out.push(0);
            put_varint(out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

fn compact_checkpoint(cp: &Checkpoint) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut flags = 0;
    if let Some(h) = &cp.high_water {
        flags |= CP_HIGH_WATER;
        put_time(&mut out, h);
    }
    if let Some(t) = cp.last_full_sweep {
        flags |= CP_LAST_FULL_SWEEP;
        put_varint(&mut out, t);
    }
    if let Some(n) = cp.last_full_pages {
        flags |= CP_LAST_FULL_PAGES;
        put_varint(&mut out, u64::from(n));
    }
    if let Some(p) = cp.updated_at_filter {
        flags |= CP_UPDATED_AT_FILTER;
        out.push(u8::from(p.accepted));
        put_varint(&mut out, p.at);
    }
    if let Some(b) = &cp.baselined {
        flags |= CP_BASELINED;
        put_varint(&mut out, b.len() as u64);
        for name in b {
            put_varint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
        }
    }
    if cp.position.is_some() || cp.feed.is_some() {
        flags |= CP_REST;
        let rest = Rest {
            position: cp.position.clone(),
            feed: cp.feed.clone(),
        };
        let json = serde_json::to_vec(&rest).expect("a checkpoint serializes");
        put_varint(&mut out, json.len() as u64);
        out.extend_from_slice(&json);
    }
    out[0] = flags;
    out
}

fn read_compact_checkpoint(b: &[u8]) -> Result<Checkpoint, String> {
    let mut r = Reader { b, at: 0 };
    let flags = r.u8()?;
    let mut cp = Checkpoint::default();
    if flags & CP_HIGH_WATER != 0 {
        cp.high_water = Some(match r.u8()? {
            1 => {
                let micros = r.varint()?;
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
                humantime::format_rfc3339_micros(t).to_string()
            }
            0 => {
                let n = r.varint()? as usize;
                String::from_utf8_lossy(r.take(n)?).into_owned()
            }
            t => return Err(format!("unknown time form {t} in a checkpoint")),
        });
    }
    if flags & CP_LAST_FULL_SWEEP != 0 {
        cp.last_full_sweep = Some(r.varint()?);
    }
    if flags & CP_LAST_FULL_PAGES != 0 {
        cp.last_full_pages = Some(r.varint()? as u32);
    }
    if flags & CP_UPDATED_AT_FILTER != 0 {
        let accepted = r.u8()? != 0;
        let at = r.varint()?;
        cp.updated_at_filter = Some(super::UpdatedAtProbe { accepted, at });
    }
    if flags & CP_BASELINED != 0 {
        let n = r.varint()?;
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..n {
            let len = r.varint()? as usize;
            names.insert(String::from_utf8_lossy(r.take(len)?).into_owned());
        }
        cp.baselined = Some(names);
    }
    if flags & CP_REST != 0 {
        let n = r.varint()? as usize;
        let rest: Rest = serde_json::from_slice(r.take(n)?)
            .map_err(|e| format!("a checkpoint's position or feed windows: {e}"))?;
        cp.position = rest.position;
        cp.feed = rest.feed;
    }
    Ok(cp)
}

/// Encodes one write as a delta message.
pub fn encode_write(w: &Write, format: Format) -> Vec<u8> {
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
                put_checkpoint(&mut out, cp, format);
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
                b'K' => {
                    let n = u16::from_le_bytes([r.u8()?, r.u8()?]) as usize;
                    let body = r.take(n)?;
                    // As with JSON, an unreadable checkpoint is as good as none: a full sweep.
                    self.checkpoint = read_compact_checkpoint(body).ok();
                }
                t => return Err(format!("unknown record tag {t} at byte {}", r.at - 1)),
            }
        }
        Ok(())
    }

    /// About how many bytes [`TenantImage::encode_parts`] makes of it in the compact format
    /// (the one written while every live member reads it), without encoding the records.
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
            .map_or(0, |cp| compact_checkpoint(cp).len() + 3);
        (records + checkpoint) as u64
    }

    /// The whole image as snapshot records, cut into parts of about `part_bytes`.
    pub fn encode_parts(&self, part_bytes: usize, format: Format) -> Vec<Vec<u8>> {
        let mut parts = vec![Vec::new()];
        if let Some(cp) = &self.checkpoint {
            put_checkpoint(parts.last_mut().expect("one part"), cp, format);
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

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a number longer than 64 bits at byte {}", self.at))
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
        for format in [Format::Json, Format::Compact] {
            round_trip(format);
        }
    }

    fn round_trip(format: Format) {
        let uuid = "0b6e2c3a-5f1d-4e7a-9c2b-1d3e4f5a6b7c";
        let one = encode_write(
            &Write::Commit(Commit {
                remember: vec![(uuid.into(), known("OPEN", Some("HIGH"), false))],
                ..Default::default()
            }),
            format,
        );
        assert_eq!(
            one.len(),
            36,
            "tag, id flag, 16-byte id, fingerprint, status, severity"
        );
        let mut img = TenantImage::default();
        img.apply(&encode_write(
            &Write::Mark(vec![
                (
                    "odd id/with spaces".into(),
                    known("WEIRD", Some("SPICY"), true),
                ),
                (uuid.into(), known("OPEN", Some("HIGH"), false)),
            ]),
            format,
        ))
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
        img.apply(&encode_write(
            &Write::Commit(Commit {
                remember: vec![
                    (uuid.into(), known("OPEN", Some("HIGH"), false)),
                    ("x".repeat(300), known(VANISHED, None, false)),
                ],
                settle: vec![uuid.into()],
                checkpoint: Some(cp.clone()),
            }),
            format,
        ))
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
        let parts = img.encode_parts(40, format);
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

    /// An idle tenant's checkpoint as the connector writes it.
    fn idle_checkpoint() -> Checkpoint {
        Checkpoint {
            high_water: Some("2026-12-05T09:55:24.362216Z".into()),
            last_full_sweep: Some(1_796_464_528),
            last_full_pages: Some(1),
            updated_at_filter: Some(crate::state::UpdatedAtProbe {
                accepted: false,
                at: 1_796_464_525,
            }),
            baselined: Some(["out".to_string()].into()),
            position: None,
            feed: None,
        }
    }

    fn checkpoint_of(bytes: &[u8]) -> Option<Checkpoint> {
        let mut img = TenantImage::default();
        img.apply(bytes).unwrap();
        img.checkpoint
    }

    #[test]
    fn a_compact_checkpoint_reads_back_as_written_at_a_quarter_of_the_json() {
        let cp = idle_checkpoint();
        let (mut json, mut compact) = (Vec::new(), Vec::new());
        put_checkpoint(&mut json, &cp, Format::Json);
        put_checkpoint(&mut compact, &cp, Format::Compact);
        assert_eq!(checkpoint_of(&json), Some(cp.clone()));
        assert_eq!(checkpoint_of(&compact), Some(cp.clone()));
        // The size a takeover records for compaction is the compact one.
        let img = TenantImage {
            checkpoint: Some(cp),
            ..Default::default()
        };
        assert_eq!(img.approx_encoded_len(), compact.len() as u64);
        assert!(
            compact.len() * 4 <= json.len(),
            "compact {} bytes, JSON {}",
            compact.len(),
            json.len()
        );
        assert!(compact.len() <= 40, "{} bytes", compact.len());

        // Every field, a time not in the connector's own form (kept as text), a running sweep's
        // position and a feed's windows.
        let mut full = idle_checkpoint();
        full.high_water = Some("2026-12-05T09:55:24.36+01:00".into());
        full.baselined = Some(["a".to_string(), "b b".to_string(), String::new()].into());
        full.position = Some(Box::new(crate::state::SweepPosition {
            full: true,
            started_at: "2026-12-05T09:00:00Z".into(),
            after: Some("cursor".into()),
            pages: 3,
            ..Default::default()
        }));
        full.feed = Some(Box::new(crate::feeds::FeedCheckpoint {
            done_until: Some("2026-12-05T08:00:00Z".into()),
            ..Default::default()
        }));
        let mut bytes = Vec::new();
        put_checkpoint(&mut bytes, &full, Format::Compact);
        assert_eq!(checkpoint_of(&bytes), Some(full));
        // Nothing set: a flags byte.
        let mut empty = Vec::new();
        put_checkpoint(&mut empty, &Checkpoint::default(), Format::Compact);
        assert_eq!(empty.len(), 4);
        assert_eq!(checkpoint_of(&empty), Some(Checkpoint::default()));
        // A damaged body is a checkpoint unread (a full sweep), never a wrong one.
        let mut cut = Vec::new();
        put_checkpoint(&mut cut, &idle_checkpoint(), Format::Compact);
        let n = cut.len();
        cut[1..3].copy_from_slice(&((n - 3 - 5) as u16).to_le_bytes());
        cut.truncate(n - 5);
        assert_eq!(checkpoint_of(&cut), None);
    }
}
