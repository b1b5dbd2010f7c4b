//! A sink's durable backlog: the batches a destination could not take, kept on disk in order
//! until it takes them again.
//!
//! **A queue of segment files.** Each sink has a directory (`state_dir/backlog/<sink>/`) of
//! append-only segment files named after the sequence number of their first record, and a
//! `head` file with the sequence number of the next record to deliver. A record is
//! `len (u32 LE) | crc32 (u32 LE) | payload`, the payload `seq (u64) | events (u32) | tenant |
//! feed | output key | lines`, the three strings length-prefixed. Appending writes one record
//! at the end of the last segment and syncs it before it returns (the tenant then moves on, so
//! the record must outlive the process); a segment past [`SEGMENT_BYTES`] is closed and a new
//! one begun. Delivering moves `head` on (a small file replaced by rename) and deletes a
//! segment once every record in it is delivered, so the disk is given back a segment at a time.
//!
//! **Crash safety.** A kill -9 during an append leaves at most a torn last record: opening the
//! queue checks every record's length and checksum and cuts the last segment at the first bad
//! one (that record's page was never acknowledged, so its tenant sends it again). A kill -9
//! after a delivery and before `head` moved delivers that record once more: at least once, as
//! everywhere else. A bad record inside an earlier segment (damage, not a crash) ends that
//! segment's readable part; it is counted and logged, never silently skipped.
//!
//! Why not the redb store: a backlog is a FIFO of opaque, often large byte batches written and
//! read once. Segment files write them sequentially once (a B-tree writes large values to
//! fresh pages and rewrites the tree's spine on every commit), read them sequentially, and give
//! space back by deleting whole files, without compaction. The numbers are in
//! docs/benchmarks.md.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment is closed and a new one begun once it holds this much.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// The record header: length and checksum of the payload.
const HEADER: usize = 8;

/// The longest payload a record may have (a page far larger than any sink takes).
const MAX_PAYLOAD: usize = 256 << 20;

/// One batch in the backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its place in the queue (delivered in this order).
    pub seq: u64,
    pub tenant: Arc<str>,
    pub feed: String,
    /// The filled values of the sink's templated settings (empty for an untemplated sink), so
    /// a drained batch goes to the output it was meant for.
    pub key: String,
    pub events: u32,
    pub lines: Vec<u8>,
}

impl Record {
    /// What [`Backlog::pop`] needs to mark it delivered (the lines may have gone to the sink).
    pub fn receipt(&self) -> Receipt {
        Receipt {
            seq: self.seq,
            bytes: self.disk_bytes(),
            events: self.events,
        }
    }

    /// Its size on disk, header included.
    pub fn disk_bytes(&self) -> u64 {
        (HEADER + 8 + 4 + 2 + self.tenant.len() + 1 + self.feed.len() + 2 + self.key.len()) as u64
            + self.lines.len() as u64
    }

    fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.disk_bytes() as usize);
        payload.extend_from_slice(&[0; HEADER]);
        payload.extend_from_slice(&self.seq.to_le_bytes());
        payload.extend_from_slice(&self.events.to_le_bytes());
        payload.extend_from_slice(&(self.tenant.len() as u16).to_le_bytes());
        payload.extend_from_slice(self.tenant.as_bytes());
        payload.push(self.feed.len() as u8);
        payload.extend_from_slice(self.feed.as_bytes());
        payload.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        payload.extend_from_slice(self.key.as_bytes());
        payload.extend_from_slice(&self.lines);
        let len = (payload.len() - HEADER) as u32;
        let crc = crc32fast::hash(&payload[HEADER..]);
        payload[..4].copy_from_slice(&len.to_le_bytes());
        payload[4..8].copy_from_slice(&crc.to_le_bytes());
        payload
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let s = payload.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let events = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let tl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let tenant = std::str::from_utf8(take(tl)?).ok()?.into();
        let fl = take(1)?[0] as usize;
        let feed = std::str::from_utf8(take(fl)?).ok()?.to_string();
        let kl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(take(kl)?).ok()?.to_string();
        let lines = payload[at..].to_vec();
        Some(Record {
            seq,
            tenant,
            feed,
            key,
            events,
            lines,
        })
    }
}

/// A delivered record, as [`Backlog::pop`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    /// Its size on disk.
    pub bytes: u64,
    pub events: u32,
}

/// Why a backlog could not take or give a record.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("the backlog at `{path}` cannot be written: {source} (free disk space or fix the permissions; the tenant holds its page meanwhile)")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a tenant id, feed or output of over 64 KiB cannot be kept in the backlog")]
    TooLong,
}

/// One segment file (named after the sequence number of its first record).
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes of valid records in it.
    len: u64,
}

/// What one sink's backlog holds, for `GET /sinks` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub events: u64,
    pub bytes: u64,
    pub records: u64,
}

/// A sink's durable queue of batches (see the module docs).
#[derive(Debug)]
pub struct Backlog {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending.
    writer: Option<File>,
    /// The first segment, open for reading, and the offset of the next record in it.
    reader: Option<(File, u64)>,
    /// Sequence number of the next record to deliver, and of the next one appended.
    head: u64,
    next: u64,
    depth: Depth,
    /// Records found damaged (not torn by a crash) when the queue was opened.
    pub damaged: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BacklogError + '_ {
    move |source| BacklogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Backlog {
    /// Opens (or creates) the backlog in `dir`, checking every record; a torn last record is cut.
    pub fn open(dir: &Path) -> Result<Backlog, BacklogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let head_path = dir.join("head");
        let head = match fs::read_to_string(&head_path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&head_path)(e)),
        };
        let mut firsts: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                let first = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u64>()
                    .ok()?;
                Some((first, p))
            })
            .collect();
        firsts.sort();
        let mut b = Backlog {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            writer: None,
            reader: None,
            head,
            next: head,
            depth: Depth::default(),
            damaged: 0,
        };
        let count = firsts.len();
        let mut reader_at: Option<u64> = None;
        for (i, (_, path)) in firsts.into_iter().enumerate() {
            let last = i + 1 == count;
            let (len, records, bad) = b.scan(&path, &mut reader_at)?;
            if bad {
                if last {
                    // A torn append: cut it off (its page was never acknowledged).
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(len).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                } else {
                    // Damage, not a crash: the readable records before it are delivered, and
                    // a copy of the whole file is kept aside for inspection.
                    b.damaged += 1;
                    let aside = path.with_extension("damaged");
                    let _ = fs::copy(&path, &aside);
                    tracing::error!(path = %path.display(), copy = %aside.display(), "a backlog segment is damaged: the records after the damage cannot be read; a copy of the file is kept");
                }
            }
            if records == 0 && !last {
                // Every record delivered (or none readable): give the space back.
                let _ = fs::remove_file(&path);
                continue;
            }
            b.segments.push_back(Segment { path, len });
        }
        if let Some(seg) = b.segments.front() {
            let offset = reader_at.unwrap_or(seg.len);
            let f = File::open(&seg.path).map_err(io_err(&seg.path))?;
            b.reader = Some((f, offset));
        }
        if let Some(seg) = b.segments.back() {
            let f = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?;
            b.writer = Some(f);
        }
        Ok(b)
    }

    /// Reads every record of one segment: its valid length, how many records at or after the
    /// head it holds, and whether it ended in a bad record. Counts those records in.
    fn scan(
        &mut self,
        path: &Path,
        reader_at: &mut Option<u64>,
    ) -> Result<(u64, u64, bool), BacklogError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(path))?;
        let mut at = 0usize;
        let mut live = 0u64;
        while at < bytes.len() {
            let Some(rec) = parse_at(&bytes, at) else {
                return Ok((at as u64, live, true));
            };
            let size = rec.disk_bytes();
            self.next = self.next.max(rec.seq + 1);
            if rec.seq >= self.head {
                if reader_at.is_none() && self.segments.is_empty() {
                    *reader_at = Some(at as u64);
                }
                live += 1;
                self.count_in(&rec, size);
            }
            at += size as usize;
        }
        Ok((at as u64, live, false))
    }

    fn count_in(&mut self, rec: &Record, size: u64) {
        self.depth.events += rec.events as u64;
        self.depth.bytes += size;
        self.depth.records += 1;
    }

    /// What it holds.
    pub fn depth(&self) -> Depth {
        self.depth
    }

    pub fn is_empty(&self) -> bool {
        self.depth.records == 0
    }

    /// Appends one batch and syncs it to disk; its sequence number is returned. On an error
    /// nothing was added (a partly written record is cut off again).
    pub fn append(
        &mut self,
        tenant: &Arc<str>,
        feed: &str,
        key: &str,
        events: u32,
        lines: &[u8],
    ) -> Result<u64, BacklogError> {
        if tenant.len() > u16::MAX as usize || feed.len() > u8::MAX as usize || key.len() > 65535 {
            return Err(BacklogError::TooLong);
        }
        let rec = Record {
            seq: self.next,
            tenant: tenant.clone(),
            feed: feed.to_string(),
            key: key.to_string(),
            events,
            lines: lines.to_vec(),
        };
        let size = rec.disk_bytes();
        let roll = self
            .segments
            .back()
            .is_none_or(|s| s.len > 0 && s.len + size > SEGMENT_BYTES);
        if roll {
            let path = self.dir.join(format!("{:020}.seg", rec.seq));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // The new file's name must survive too.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            if self.segments.is_empty() {
                let r = File::open(&path).map_err(io_err(&path))?;
                self.reader = Some((r, 0));
            }
            self.segments.push_back(Segment { path, len: 0 });
            self.writer = Some(f);
        }
        let seg = self.segments.back_mut().expect("a segment exists");
        let writer = self.writer.as_mut().expect("the last segment is open");
        let bytes = rec.encode();
        let written = writer.write_all(&bytes).and_then(|()| writer.sync_data());
        if let Err(e) = written {
            // Cut what may have been written, so the next append starts clean.
            let _ = writer.set_len(seg.len);
            return Err(io_err(&seg.path)(e));
        }
        seg.len += size;
        self.next += 1;
        self.count_in(&rec, size);
        Ok(rec.seq)
    }

    /// The next record to deliver, read from disk (`None` when empty).
    pub fn peek(&mut self) -> Result<Option<Record>, BacklogError> {
        loop {
            let Some(seg) = self.segments.front() else {
                return Ok(self.exhausted());
            };
            let path = seg.path.clone();
            let seg_len = seg.len;
            let last = self.segments.len() == 1;
            let Some((file, offset)) = self.reader.as_mut() else {
                return Ok(None);
            };
            if *offset >= seg_len {
                if last {
                    return Ok(self.exhausted());
                }
                self.drop_front()?;
                continue;
            }
            let mut header = [0u8; HEADER];
            file.seek(SeekFrom::Start(*offset))
                .and_then(|_| file.read_exact(&mut header))
                .map_err(io_err(&path))?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            let mut payload = vec![0u8; len.min(MAX_PAYLOAD)];
            file.read_exact(&mut payload).map_err(io_err(&path))?;
            let rec = (crc32fast::hash(&payload) == crc)
                .then(|| Record::decode(&payload))
                .flatten();
            match rec {
                Some(rec) if rec.seq >= self.head => return Ok(Some(rec)),
                Some(rec) => {
                    // Delivered before a restart (head is past it): skip.
                    *offset += rec.disk_bytes();
                }
                None => {
                    // Checked when opened and written since: only damage gets here.
                    self.damaged += 1;
                    tracing::error!(path = %path.display(), "a backlog record is damaged; skipping the rest of its segment");
                    *offset = seg_len;
                }
            }
        }
    }

    /// Nothing readable is left: the counts say so too (records skipped as damaged were still
    /// counted), so the sink goes back to writing directly.
    fn exhausted(&mut self) -> Option<Record> {
        self.depth = Depth::default();
        None
    }

    /// Marks the record [`Backlog::peek`] gave delivered (by its [`Receipt`]): `head` moves
    /// past it, and a segment with nothing left is deleted.
    pub fn pop(&mut self, rec: Receipt) -> Result<(), BacklogError> {
        if rec.seq < self.head {
            // Already delivered (a second drainer for a moment, after a sink restart).
            return Ok(());
        }
        if let Some((_, offset)) = self.reader.as_mut() {
            *offset += rec.bytes;
        }
        self.head = rec.seq + 1;
        self.depth.events -= (rec.events as u64).min(self.depth.events);
        self.depth.bytes -= rec.bytes.min(self.depth.bytes);
        self.depth.records = self.depth.records.saturating_sub(1);
        let head_path = self.dir.join("head");
        let tmp = self.dir.join("head.tmp");
        fs::write(&tmp, self.head.to_string())
            .and_then(|()| fs::rename(&tmp, &head_path))
            .map_err(io_err(&head_path))?;
        let done = self
            .segments
            .front()
            .zip(self.reader.as_ref())
            .is_some_and(|(s, (_, off))| *off >= s.len);
        if done {
            self.drop_front()?;
        }
        Ok(())
    }

    /// Deletes the first segment (fully delivered) and opens the next for reading; the last
    /// segment is emptied instead, so appends go on in a fresh file.
    fn drop_front(&mut self) -> Result<(), BacklogError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        let _ = fs::remove_file(&seg.path);
        self.reader = None;
        match self.segments.front() {
            Some(next) => {
                let f = File::open(&next.path).map_err(io_err(&next.path))?;
                self.reader = Some((f, 0));
            }
            None => self.writer = None,
        }
        Ok(())
    }
}

/// The record starting at `at` in a segment's bytes, if whole and intact.
fn parse_at(bytes: &[u8], at: usize) -> Option<Record> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = Record::decode(payload)?;
    (rec.disk_bytes() as usize == HEADER + len).then_some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> Arc<str> {
        s.into()
    }

    fn push(b: &mut Backlog, t: &str, n: u32) -> u64 {
        let lines = format!("{{\"n\":{n}}}\n").repeat(n as usize);
        b.append(&tenant(t), "issues", "", n, lines.as_bytes())
            .unwrap()
    }

    fn drain(b: &mut Backlog) -> Vec<(String, u32)> {
        let mut got = Vec::new();
        while let Some(r) = b.peek().unwrap() {
            got.push((r.tenant.to_string(), r.events));
            b.pop(r.receipt()).unwrap();
        }
        got
    }

    #[test]
    fn records_come_out_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Backlog::open(dir.path()).unwrap();
        assert!(b.is_empty());
        push(&mut b, "a", 3);
        push(&mut b, "b", 2);
        push(&mut b, "a", 1);
        assert_eq!(b.depth().events, 6);
        // Deliver one, then "crash" (drop) and reopen.
        let first = b.peek().unwrap().unwrap();
        assert_eq!((first.seq, first.events), (0, 3));
        b.pop(first.receipt()).unwrap();
        drop(b);
        let mut b = Backlog::open(dir.path()).unwrap();
        assert_eq!(b.depth().events, 3);
        assert_eq!(b.depth().records, 2);
        assert_eq!(drain(&mut b), [("b".into(), 2), ("a".into(), 1)]);
        assert!(b.is_empty());
        assert_eq!(b.depth(), Depth::default());
        // Appending after it emptied goes on with new sequence numbers.
        assert_eq!(push(&mut b, "c", 1), 3);
        drop(b);
        let mut b = Backlog::open(dir.path()).unwrap();
        assert_eq!(drain(&mut b), [("c".into(), 1)]);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Backlog::open(dir.path()).unwrap();
        push(&mut b, "a", 2);
        push(&mut b, "a", 3);
        let seg = b.segments.back().unwrap().path.clone();
        drop(b);
        // A kill -9 in the middle of the second append.
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut b = Backlog::open(dir.path()).unwrap();
        assert_eq!(b.depth().records, 1);
        assert_eq!(b.damaged, 0);
        // The cut file takes appends again, readable after reopening.
        push(&mut b, "a", 4);
        drop(b);
        let mut b = Backlog::open(dir.path()).unwrap();
        assert_eq!(drain(&mut b), [("a".into(), 2), ("a".into(), 4)]);
    }

    #[test]
    fn segments_roll_over_and_are_deleted_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Backlog::open(dir.path()).unwrap();
        let big = vec![b'x'; (SEGMENT_BYTES / 3) as usize];
        for i in 0..7u32 {
            b.append(&tenant("t"), "audit", "k", i, &big).unwrap();
        }
        let files = |d: &Path| {
            fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        // A third of a segment plus its header: two records to a segment.
        assert_eq!(files(dir.path()), 4);
        for _ in 0..4 {
            let r = b.peek().unwrap().unwrap();
            assert_eq!(r.key, "k");
            b.pop(r.receipt()).unwrap();
        }
        assert_eq!(files(dir.path()), 2, "the first two segments are gone");
        drop(b);
        let mut b = Backlog::open(dir.path()).unwrap();
        let seqs: Vec<u32> = std::iter::from_fn(|| {
            let r = b.peek().unwrap()?;
            b.pop(r.receipt()).unwrap();
            Some(r.events)
        })
        .collect();
        assert_eq!(seqs, [4, 5, 6]);
        assert_eq!(files(dir.path()), 0);
    }

    #[test]
    fn damage_inside_an_earlier_segment_is_counted_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Backlog::open(dir.path()).unwrap();
        let big = vec![b'x'; (SEGMENT_BYTES / 3) as usize];
        for i in 0..4u32 {
            b.append(&tenant("t"), "issues", "", i, &big).unwrap();
        }
        let first = b.segments.front().unwrap().path.clone();
        drop(b);
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 20] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let b = Backlog::open(dir.path()).unwrap();
        assert_eq!(b.damaged, 1);
        assert_eq!(b.depth().records, 2, "the second segment's records");
        assert!(
            first.with_extension("damaged").exists(),
            "a copy kept aside"
        );
        // Damage inside the segment being read: the rest of it is skipped, and once nothing
        // readable is left the counts say empty (the sink writes directly again).
        let mut b = b;
        let second = b.segments.front().unwrap().path.clone();
        let r = b.peek().unwrap().unwrap();
        b.pop(r.receipt()).unwrap();
        let mut bytes = fs::read(&second).unwrap();
        let at = r.disk_bytes() as usize + HEADER + 20;
        bytes[at] ^= 0xff;
        fs::write(&second, bytes).unwrap();
        assert_eq!(b.depth().records, 1);
        assert!(b.peek().unwrap().is_none());
        assert_eq!(b.damaged, 2);
        assert!(b.is_empty());
        assert_eq!(b.depth(), Depth::default());
    }
}
