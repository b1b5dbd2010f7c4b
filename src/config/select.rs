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

/// `text` with the tables of tenants not `wanted` left out, or `None` when its shape is not one
/// the scan follows (see the module docs).
pub(super) fn only_wanted(text: &str, wanted: &dyn Fn(&str) -> bool) -> Option<String> {
    let mut out = String::with_capacity(text.len() / 8);
    // Whether the lines since the last table header are kept.
    let mut keep = true;
    for line in text.split_inclusive('\n') {
        match shape(line)? {
            Line::Other => {}
            Line::Table(name) => {
                keep = match tenant_of(name).ok()? {
                    Some(id) => wanted(id),
                    None => true,
                };
            }
            Line::ArrayOfTables(name) => {
                if tenant_of(name).ok()?.is_some() {
                    return None;
                }
                keep = true;
            }
        }
        if keep {
            out.push_str(line);
        }
    }
    Some(out)
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
}
