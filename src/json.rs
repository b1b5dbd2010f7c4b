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
