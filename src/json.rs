//! Writing JSON by hand, field by field, for the hot path: the native normalizers and the OCSF
//! and ECS writers share it. A leaf module.

use crate::wiz::page::Str;

/// Writes one JSON object field by field. Strings that serde borrowed from the response had no
/// escape sequences, and strict JSON cannot hold raw quotes, backslashes or control characters, so
/// they are copied verbatim; only strings serde had to unescape are escaped again. This is most of
/// the speed of the hot path.
pub struct JsonWriter<'o> {
    pub out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> JsonWriter<'o> {
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonWriter { out, first: true }
    }

    /// `,"key":` (keys are constants without characters that need escaping).
    pub fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A value known to need no escaping (ids we made, constants, validated tenant ids).
    pub fn safe(&mut self, key: &str, value: &str) {
        debug_assert!(!value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    pub fn escaped(&mut self, key: &str, value: &str) {
        self.key(key);
        write_escaped(self.out, value);
    }

    pub fn str(&mut self, key: &str, value: Option<Str<'_>>) {
        self.key(key);
        match value {
            Some(v) => write_str(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    pub fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.extend_from_slice(json.as_bytes());
    }

    pub fn close(self) {
        self.out.push(b'}');
    }
}

/// A console's base URL (without a trailing `/`) escaped for the inside of a JSON string, once per
/// tenant: every event's `url` starts with it.
pub fn console_json(console: &str) -> String {
    let quoted = serde_json::to_string(console.trim_end_matches('/')).expect("a string serializes");
    quoted[1..quoted.len() - 1].to_string()
}

/// `"<console>/issues#~(issue~'<id>)"`: an issue's page in the Wiz console, as a JSON string.
pub fn write_issue_url(out: &mut Vec<u8>, console_json: &str, issue_id: &str) {
    out.push(b'"');
    out.extend_from_slice(console_json.as_bytes());
    out.extend_from_slice(b"/issues#~(issue~'");
    push_url_safe(out, issue_id);
    out.extend_from_slice(b")\"");
}

pub fn write_str(out: &mut Vec<u8>, v: Str<'_>) {
    if v.verbatim {
        out.push(b'"');
        out.extend_from_slice(v.text.as_bytes());
        out.push(b'"');
    } else {
        write_escaped(out, v.text);
    }
}

pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// Appends `id` with anything but `[A-Za-z0-9-_.]` percent-encoded (Wiz ids are UUIDs; this only
/// guards against odd ones breaking the link).
pub fn push_url_safe(out: &mut Vec<u8>, id: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// The raw value of member `key` at the top level of the JSON object `line` (never one inside a
/// nested value), found without parsing the rest; `None` when it is absent or `line` is not an
/// object. For a sink that needs one member of an event it otherwise passes through as is.
pub fn top_level<'a>(line: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut found = None;
    members(line, |name, value| {
        if name == key.as_bytes() {
            found = Some(value);
            return true;
        }
        false
    });
    found
}

/// The raw value of the first of `keys` (in that order of preference) at the top level of
/// `line`, read in one pass.
pub fn top_level_first<'a>(line: &'a [u8], keys: &[&str]) -> Option<&'a [u8]> {
    let mut best: Option<(usize, &'a [u8])> = None;
    members(line, |name, value| {
        if let Some(rank) = keys.iter().position(|k| k.as_bytes() == name) {
            if best.is_none_or(|(b, _)| rank < b) {
                best = Some((rank, value));
            }
            return rank == 0;
        }
        false
    });
    best.map(|(_, v)| v)
}

/// The raw text of a JSON string value, unescaped (`None` when it is not a string).
pub fn string_value(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner)
            .ok()
            .map(std::borrow::Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw)
        .ok()
        .map(std::borrow::Cow::Owned)
}

/// Calls `visit(name, raw value)` for each top-level member of the object `line`, in order,
/// until it returns true or the object ends (or turns out not to be one).
fn members<'a>(line: &'a [u8], mut visit: impl FnMut(&'a [u8], &'a [u8]) -> bool) {
    let ws = |i: &mut usize| {
        while line.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    let mut i = 0;
    ws(&mut i);
    if line.get(i) != Some(&b'{') {
        return;
    }
    i += 1;
    loop {
        ws(&mut i);
        if line.get(i) != Some(&b'"') {
            return;
        }
        let Some(name_end) = string_end(line, i) else {
            return;
        };
        let name = &line[i + 1..name_end - 1];
        i = name_end;
        ws(&mut i);
        if line.get(i) != Some(&b':') {
            return;
        }
        i += 1;
        ws(&mut i);
        let start = i;
        let Some(end) = value_end(line, i) else {
            return;
        };
        i = end;
        if visit(name, &line[start..i]) {
            return;
        }
        ws(&mut i);
        match line.get(i) {
            Some(b',') => i += 1,
            _ => return,
        }
    }
}

/// The index after the string starting at `line[start]` (a `"`).
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&b) = line.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index after the value starting at `line[start]`.
fn value_end(line: &[u8], start: usize) -> Option<usize> {
    match *line.get(start)? {
        b'"' => string_end(line, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while let Some(&b) = line.get(i) {
                match b {
                    b'"' => {
                        i = string_end(line, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = line[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(line.len() - start);
            (len > 0).then_some(start + len)
        }
    }
}

#[cfg(test)]
mod top_level_tests {
    use super::top_level;

    #[test]
    fn finds_a_member_at_the_top_level_only() {
        let line = br#"{"a":{"time":1,"b":"x\"time\":2"},"list":[{"time":3}],"s":"}","time":1733300000123, "n": null}"#;
        assert_eq!(top_level(line, "time"), Some(&b"1733300000123"[..]));
        assert_eq!(top_level(line, "s"), Some(&br#""}""#[..]));
        assert_eq!(top_level(line, "list"), Some(&br#"[{"time":3}]"#[..]));
        assert_eq!(top_level(line, "n"), Some(&b"null"[..]));
        assert_eq!(top_level(line, "b"), None);
        assert_eq!(top_level(b"[1]", "time"), None);
        assert_eq!(top_level(br#"{"time":"#, "time"), None);
        assert_eq!(top_level(br#"{"a":"unterminated}"#, "time"), None);
    }

    #[test]
    fn the_first_preferred_member_and_string_values() {
        let line = br#"{"id":"e","issue_id":"i-1","detection_id":"d-\"2","x":{"finding_id":"no"}}"#;
        let v = super::top_level_first(line, &["detection_id", "finding_id", "issue_id"]).unwrap();
        assert_eq!(super::string_value(v).unwrap(), "d-\"2");
        let v = super::top_level_first(line, &["finding_id", "issue_id"]).unwrap();
        assert_eq!(super::string_value(v).unwrap(), "i-1");
        assert_eq!(super::top_level_first(line, &["finding_id"]), None);
        assert_eq!(super::string_value(b"12"), None);
    }
}
