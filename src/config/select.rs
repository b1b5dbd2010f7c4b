//! Cutting a main file down to some tenants before it is parsed. Placement reads only the
//! tenants it gives a replica ([`super::load_only`]); parsing a whole 72 MB file to keep a tenth
//! of it took each survivor of a failover 8 to 12 s at 300,000 tenants. A line scan that drops
//! the other tenants' tables first costs a few milliseconds.
//!
//! The scan follows only the shapes it can be sure of: one line per key and value, tables
//! opened by `[tenants.<id>]` headers (and sub-tables such as `[tenants.<id>.labels]`). A file
//! with a value spanning lines (a multi-line string, array or inline table), a quoted table
//! name, a `[tenants]` table, or an array of tables under `tenants` is not cut: it is parsed
//! whole, as before. Whatever is kept is parsed by the real parser, and the tenants not wanted
//! are still filtered out of the parsed document, so the cut can only spare work, never change
//! what a wanted tenant reads.
//!
//! The same scan makes a [`FileIndex`]: where each tenant's tables sit, so that a later
//! placement reads only the byte ranges it needs instead of scanning the file again.

/// What one line is, to the scan.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// A key and value, a comment or a blank line.
    Other,
    /// `[name]`, the name without its brackets.
    Table(&'a str),
    /// `[[name]]`.
    ArrayOfTables(&'a str),
}

/// The shape of `line`, or `None` when a value may go on past it (an unterminated string, an
/// open bracket or brace) or it holds a multi-line string's quotes.
fn shape(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.contains("\"\"\"") || line.contains("'''") {
        return None;
    }
    let mut depth: i32 = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => break,
            '"' => loop {
                match chars.next()? {
                    '\\' => {
                        chars.next()?;
                    }
                    '"' => break,
                    _ => {}
                }
            },
            '\'' => loop {
                if chars.next()? == '\'' {
                    break;
                }
            },
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix("[[") {
        return Some(Line::ArrayOfTables(rest.split("]]").next()?.trim()));
    }
    if let Some(rest) = t.strip_prefix('[') {
        return Some(Line::Table(rest.split(']').next()?.trim()));
    }
    Some(Line::Other)
}

/// Which tenant a table name belongs to: `Ok(None)` for a table outside `tenants`, `Err` when
/// the scan cannot tell (a quoted name, `[tenants]` itself).
fn tenant_of(name: &str) -> Result<Option<&str>, ()> {
    if name.contains(['"', '\'']) {
        return Err(());
    }
    let mut parts = name.split('.').map(str::trim);
    if parts.next() != Some("tenants") {
        return Ok(None);
    }
    match parts.next() {
        Some(id) if !id.is_empty() => Ok(Some(id)),
        _ => Err(()),
    }
}

/// Calls `each` with the runs of `text` in order: `Some(id)` for the lines of tenant `id`'s
/// tables (its `[tenants.<id>]` table and sub-tables such as `[tenants.<id>.labels]`), `None`
/// for everything else (other tables, comments and blank lines before the first table). Runs
/// of the same owner that follow each other are one run. `None` when `text` has a shape the
/// scan does not follow (see the module docs); `each` may have been called before that.
fn runs<'a>(
    text: &'a str,
    mut each: impl FnMut(Option<&'a str>, std::ops::Range<usize>),
) -> Option<()> {
    let mut owner: Option<&str> = None;
    let (mut start, mut at) = (0, 0);
    for line in text.split_inclusive('\n') {
        let next = match shape(line)? {
            Line::Other => owner,
            Line::Table(name) => tenant_of(name).ok()?,
            Line::ArrayOfTables(name) => match tenant_of(name).ok()? {
                Some(_) => return None,
                None => None,
            },
        };
        if next != owner {
            if at > start {
                each(owner, start..at);
            }
            (start, owner) = (at, next);
        }
        at += line.len();
    }
    if at > start {
        each(owner, start..at);
    }
    Some(())
}

/// `text` with the tables of tenants not `wanted` left out, or `None` when its shape is not one
/// the scan follows (see the module docs).
pub(super) fn only_wanted(text: &str, wanted: &dyn Fn(&str) -> bool) -> Option<String> {
    let mut out = String::with_capacity(text.len() / 8);
    runs(text, |owner, range| {
        if owner.is_none_or(wanted) {
            out.push_str(&text[range]);
        }
    })?;
    Some(out)
}

/// Where each tenant's tables sit in a main file, from one scan of its text. A cluster replica
/// keeps it for the files it last checked, so that a placement reads the tenants it gains by
/// their byte ranges instead of scanning the whole file again: at 300,000 tenants (a 72 MB
/// file) the scan took each survivor of a failover 0.5 to 3.7 s, nine survivors at once on two
/// cores. 16 bytes a tenant (one more entry per extra run of its tables elsewhere in the file).
///
/// A read through the index checks what it reads: the file's length, and that each tenant's
/// range begins with that tenant's table header and ends a line. A file changed since (which
/// the caller's size and time check should already have caught) fails the check and is read
/// whole.
#[derive(Debug, Default)]
pub struct FileIndex {
    /// The file's length when it was scanned.
    len: u64,
    /// The runs outside any tenant's tables (connector, sinks, routes, comments), in file order:
    /// every read keeps them.
    common: Vec<Span>,
    /// Each tenant's runs, by the hash of its id (then file order). A 32-bit hash, not the id:
    /// the fleet keeps the ids already, and a colliding tenant's run (a few in a fleet of
    /// 300,000) is told apart by its header when read.
    tenants: Vec<Run>,
}

/// One run of a tenant's tables (ordered by hash, then place in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    hash: u32,
    start: u64,
    len: u32,
}

impl Run {
    fn span(&self) -> Span {
        Span {
            start: self.start,
            end: self.start + u64::from(self.len),
        }
    }
}

/// A byte range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: u64,
    end: u64,
}

/// The hash an index files a tenant under (fixed keys: the same in every run).
fn id_hash(id: &str) -> u32 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id) as u32
}

impl FileIndex {
    /// The index of a main file's `text`, or `None` when its shape is not one the scan follows
    /// (such a file is always read whole).
    pub fn of(text: &str) -> Option<FileIndex> {
        let mut index = FileIndex {
            len: text.len() as u64,
            ..Default::default()
        };
        let mut too_long = false;
        runs(text, |owner, range| match owner {
            Some(id) => match u32::try_from(range.len()) {
                Ok(len) => index.tenants.push(Run {
                    hash: id_hash(id),
                    len,
                    start: range.start as u64,
                }),
                Err(_) => too_long = true,
            },
            None => index.common.push(Span {
                start: range.start as u64,
                end: range.end as u64,
            }),
        })?;
        if too_long {
            return None;
        }
        index.tenants.sort_unstable();
        index.tenants.shrink_to_fit();
        index.common.shrink_to_fit();
        Some(index)
    }

    /// `text` (the text indexed) with the tables of tenants not `wanted` left out: what
    /// [`only_wanted`] gives, without scanning again.
    pub fn cut(&self, text: &str, wanted: &dyn Fn(&str) -> bool) -> String {
        let mut spans = self.common.clone();
        let bytes = text.as_bytes();
        spans.extend(
            self.tenants.iter().map(Run::span).filter(|s| {
                header_of(&bytes[s.start as usize..s.end as usize]).is_some_and(wanted)
            }),
        );
        spans.sort_unstable();
        let mut out = String::with_capacity(spans.iter().map(|s| (s.end - s.start) as usize).sum());
        for s in spans {
            out.push_str(&text[s.start as usize..s.end as usize]);
        }
        out
    }

    /// Reads from `file` (the file indexed) its common runs and the `wanted` tenants' runs, in
    /// file order: the text [`only_wanted`] would give. `None` when the file does not match the
    /// index (its length differs, a run does not begin with its tenant's header or does not
    /// end a line, a wanted tenant has no run) or cannot be read.
    pub fn read<'a>(
        &self,
        file: &std::fs::File,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> Option<String> {
        use std::os::unix::fs::FileExt;
        if file.metadata().ok()?.len() != self.len {
            return None;
        }
        // Each run with the tenant it must belong to (`None`: a common run).
        let mut spans: Vec<(Span, Option<&str>)> = self.common.iter().map(|s| (*s, None)).collect();
        for id in wanted {
            let h = id_hash(id);
            let first = self.tenants.partition_point(|r| r.hash < h);
            let found = self.tenants[first..].iter().take_while(|r| r.hash == h);
            let before = spans.len();
            spans.extend(found.map(|r| (r.span(), Some(id))));
            if spans.len() == before {
                return None;
            }
        }
        spans.sort_unstable_by_key(|(s, _)| *s);
        let mut out =
            Vec::with_capacity(spans.iter().map(|(s, _)| (s.end - s.start) as usize).sum());
        for (span, owner) in spans {
            let at = out.len();
            out.resize(at + (span.end - span.start) as usize, 0);
            file.read_exact_at(&mut out[at..], span.start).ok()?;
            let run = &out[at..];
            if !(run.ends_with(b"\n") || span.end == self.len) {
                return None;
            }
            if let Some(id) = owner {
                match header_of(run) {
                    Some(h) if h == id => {}
                    // Another tenant filed under the same hash: not this one's run.
                    Some(h) if id_hash(h) == id_hash(id) => out.truncate(at),
                    _ => return None,
                }
            }
        }
        String::from_utf8(out).ok()
    }
}

/// The tenant whose table header opens `run` (a tenant's run always opens with one).
fn header_of(run: &[u8]) -> Option<&str> {
    let end = run
        .iter()
        .position(|b| *b == b'\n')
        .map_or(run.len(), |i| i + 1);
    let line = std::str::from_utf8(&run[..end]).ok()?;
    match shape(line)? {
        Line::Table(name) => tenant_of(name).ok()?,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# fleet\n[connector]\nstatuses = [\"OPEN\", \"IN_PROGRESS\"] # both\n\
        [sinks.out]\ntype = \"file\"\npath = \"/tmp/a [b].jsonl\"\n\
        [tenants.a]\nclient_id = \"x\"\nlabels = { customer = \"acme\" }\n\
        [tenants.b]\r\nclient_id = \"y\"\r\n[tenants.b.labels]\ncustomer = \"globex\"\n\
        [tenants.c]\nclient_id = 'it is [not] a header'\n\
        [[routes.x.rules]]\nsink = \"out\"\n";

    #[test]
    fn keeps_every_other_table_and_only_the_wanted_tenants() {
        let b = |id: &str| id == "b";
        let cut = only_wanted(FILE, &b).unwrap();
        assert_eq!(
            cut,
            "# fleet\n[connector]\nstatuses = [\"OPEN\", \"IN_PROGRESS\"] # both\n\
             [sinks.out]\ntype = \"file\"\npath = \"/tmp/a [b].jsonl\"\n\
             [tenants.b]\r\nclient_id = \"y\"\r\n[tenants.b.labels]\ncustomer = \"globex\"\n\
             [[routes.x.rules]]\nsink = \"out\"\n"
        );
        let all = only_wanted(FILE, &|_| true).unwrap();
        assert_eq!(all, FILE);
    }

    #[test]
    fn shapes_it_cannot_follow_are_left_whole() {
        let any = |_: &str| true;
        for text in [
            "[tenants.a]\nstatuses = [\n\"OPEN\",\n]\n",
            "[tenants.a]\nnote = \"\"\"\n[tenants.b]\n\"\"\"\n",
            "[tenants.a]\nlabels = {\n  customer = \"acme\" }\n",
            "[tenants]\na.client_id = \"x\"\n",
            "[tenants.\"a\"]\nclient_id = \"x\"\n",
            "[[tenants.a]]\nclient_id = \"x\"\n",
            "[tenants.a]\nclient_id = \"unterminated\n",
        ] {
            assert_eq!(only_wanted(text, &any), None, "{text:?}");
        }
    }
    /// A file whose tenant `a` has its tables in two places, with `b` between them.
    const SPLIT: &str = "[connector]\nx = 1\n[tenants.a]\nclient_id = \"x\"\n\
        [tenants.b]\nclient_id = \"y\"\n[sinks.out]\ntype = \"file\"\n\
        [tenants.a.labels]\ncustomer = \"acme\"\n[tenants.c]\nclient_id = \"z\"";

    fn file_of(text: &str) -> (tempfile::NamedTempFile, std::fs::File) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let opened = std::fs::File::open(f.path()).unwrap();
        (f, opened)
    }

    #[test]
    fn an_index_cuts_and_reads_what_the_scan_keeps() {
        for text in [FILE, SPLIT] {
            let index = FileIndex::of(text).unwrap();
            let (_keep, file) = file_of(text);
            for wanted in [&[][..], &["a"], &["b"], &["a", "c"], &["a", "b", "c"]] {
                let w = |id: &str| wanted.contains(&id);
                let expected = only_wanted(text, &w).unwrap();
                assert_eq!(index.cut(text, &w), expected, "{wanted:?}");
                let read = index.read(&file, wanted.iter().copied());
                assert_eq!(read.as_deref(), Some(expected.as_str()), "{wanted:?}");
            }
        }
        // `a`'s two runs are both read, in file order, with the common runs between.
        let index = FileIndex::of(SPLIT).unwrap();
        let (_keep, file) = file_of(SPLIT);
        assert_eq!(
            index.read(&file, ["a"]).unwrap(),
            "[connector]\nx = 1\n[tenants.a]\nclient_id = \"x\"\n[sinks.out]\ntype = \"file\"\n\
             [tenants.a.labels]\ncustomer = \"acme\"\n"
        );
        assert!(FileIndex::of("[tenants.a]\nx = [\n1]\n").is_none());
        // The 16 bytes a tenant the docs give.
        assert_eq!(std::mem::size_of::<Run>(), 16);
    }

    #[test]
    fn a_read_through_an_index_refuses_a_file_that_no_longer_matches() {
        let index = FileIndex::of(SPLIT).unwrap();
        // A tenant the index does not know.
        let (_keep, file) = file_of(SPLIT);
        assert_eq!(index.read(&file, ["a", "d"]), None);
        // Another length.
        let (_keep, file) = file_of(&format!("{SPLIT}\n"));
        assert_eq!(index.read(&file, ["b"]), None);
        // The same length, shifted: `b`'s range no longer begins with its header.
        let shifted = SPLIT
            .replacen("x = 1\n", "", 1)
            .replacen("\"z\"", "\"z\"\nx = 1", 1);
        assert_eq!(shifted.len(), SPLIT.len());
        let (_keep, file) = file_of(&shifted);
        assert_eq!(index.read(&file, ["b"]), None);
    }

    #[test]
    fn a_tenant_filed_under_anothers_hash_is_told_apart_by_its_header() {
        // Two ids with the same 32-bit hash (a fleet of 300,000 has a few such pairs).
        let mut seen = std::collections::HashMap::new();
        let (x, y) = (0..)
            .map(|n| format!("t{n}"))
            .find_map(|id| {
                seen.insert(id_hash(&id), id.clone())
                    .map(|other| (other, id))
            })
            .unwrap();
        let text = format!(
            "[connector]\n[tenants.{x}]\nclient_id = \"x\"\n[sinks.out]\ntype = \"file\"\n\
             [tenants.{y}]\nclient_id = \"y\"\n[tenants.{x}.labels]\ncustomer = \"acme\"\n"
        );
        let index = FileIndex::of(&text).unwrap();
        let (_keep, file) = file_of(&text);
        for id in [&x, &y] {
            let w = |t: &str| t == id.as_str();
            assert_eq!(
                index.read(&file, [id.as_str()]).unwrap(),
                only_wanted(&text, &w).unwrap(),
                "{id}"
            );
        }
    }
}
