//! The `file` output: JSON lines appended to a file, written and fsync'd before the ack, rotated
//! by size. It never truncates or rewrites what is already there; after a crash that left a
//! partial line it starts on a fresh line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Batch, SinkChecks, SinkType};

pub struct FileOutput {
    path: PathBuf,
    max_bytes: u64,
    /// `None` only while a write is in progress on the blocking pool, or after a failed open.
    file: Option<File>,
    size: u64,
}

/// Opens `path` for appending; writes a newline first when the last line is incomplete.
fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let mut size = file.metadata()?.len();
    if size > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(size - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            sync(&file)?;
            size += 1;
        }
    }
    Ok((file, size))
}

/// `fsync`, except on files that cannot be synced (`/dev/null`, pipes: EINVAL), where the write
/// is all there is to do.
fn sync(file: &File) -> std::io::Result<()> {
    match file.sync_data() {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// The first `<path>.<n>` (n = 1, 2, ...) that does not exist.
fn rotated_name(path: &Path) -> PathBuf {
    let mut n = 1u32;
    loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Default size at which a file sink rotates.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// `type = "file"`.
pub struct FileSink;

/// `[sinks.<name>]` of type `file`: JSON lines appended to a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The file; created when missing, never truncated.
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes (default 100 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Resolved `file` settings.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub path: PathBuf,
    pub max_bytes: u64,
}

impl SinkType for FileSink {
    type Section = Section;
    type Spec = Spec;
    type Output = FileOutput;

    fn resolve(_: &str, s: &Section, checks: &mut dyn SinkChecks) -> Option<Spec> {
        if s.path.as_os_str().is_empty() {
            checks.error("path", "must not be empty".into());
        }
        let max_bytes = s.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < 4096 {
            checks.error("max_bytes", "must be at least 4096".into());
        }
        Some(Spec {
            path: s.path.clone(),
            max_bytes,
        })
    }

    fn templates(spec: &Spec) -> Vec<(&'static str, &str)> {
        let path = spec.path.to_str().unwrap_or("");
        if path.contains('{') {
            vec![("path", path)]
        } else {
            Vec::new()
        }
    }

    fn instantiate(spec: &Spec, fill: &dyn Fn(&str) -> String) -> Result<Spec, String> {
        Ok(match spec.path.to_str() {
            Some(p) if p.contains('{') => Spec {
                path: PathBuf::from(fill(p)),
                max_bytes: spec.max_bytes,
            },
            _ => spec.clone(),
        })
    }

    async fn open(name: &str, spec: &Spec) -> Result<FileOutput, String> {
        FileOutput::open(spec.path.clone(), spec.max_bytes)
            .map_err(|e| format!("sink `{name}`: cannot open {}: {e}", spec.path.display()))
    }

    async fn check(out: &mut FileOutput) -> Result<String, String> {
        Ok(format!("{} open for appending", out.path.display()))
    }

    async fn write(out: &mut FileOutput, batch: Arc<Batch>) -> Result<super::Written, String> {
        out.write(batch).await.map(Into::into)
    }
}

impl FileOutput {
    pub fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<FileOutput> {
        let (file, size) = open_append(&path)?;
        Ok(FileOutput {
            path,
            max_bytes,
            file: Some(file),
            size,
        })
    }

    pub async fn write(&mut self, batch: Arc<Batch>) -> Result<(), String> {
        let path = self.path.clone();
        let max = self.max_bytes;
        let size = self.size;
        let file = self.file.take();
        let (file, size, result) = tokio::task::spawn_blocking(move || {
            write_blocking(&path, max, file, size, &batch.lines)
        })
        .await
        .map_err(|e| format!("file writer failed: {e}"))?;
        self.file = file;
        self.size = size;
        result.map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// Rotates when needed, appends, fsyncs. Returns the file (when open) and its size either way.
fn write_blocking(
    path: &Path,
    max: u64,
    file: Option<File>,
    size: u64,
    lines: &[u8],
) -> (Option<File>, u64, std::io::Result<()>) {
    let (mut file, mut size) = match file {
        Some(f) => (f, size),
        None => match open_append(path) {
            Ok(x) => x,
            Err(e) => return (None, 0, Err(e)),
        },
    };
    if size > 0 && size + lines.len() as u64 > max {
        let rotated = rotated_name(path);
        let step = file
            .sync_all()
            .and_then(|_| std::fs::rename(path, &rotated))
            .and_then(|_| open_append(path));
        match step {
            Ok((f, s)) => {
                tracing::info!(file = %path.display(), rotated = %rotated.display(), "rotated the event file");
                file = f;
                size = s;
            }
            Err(e) => return (Some(file), size, Err(e)),
        }
    }
    let result = file.write_all(lines).and_then(|_| sync(&file));
    match result {
        Ok(()) => (Some(file), size + lines.len() as u64, Ok(())),
        // A partial write may have happened: reopen next time (which restores a fresh line).
        Err(e) => (None, size, Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(text: &str) -> Arc<Batch> {
        Arc::new(Batch {
            feed: "issues",
            tenant: Arc::from("t"),
            lines: text.as_bytes().to_vec(),
            formatted: Default::default(),
            events: text.lines().count(),
            only: None,
        })
    }

    #[tokio::test]
    async fn appends_and_starts_on_a_fresh_line_after_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"old\":1}\n{\"torn\":").unwrap();
        let mut out = FileOutput::open(path.clone(), 1 << 20).unwrap();
        out.write(batch("{\"a\":1}\n{\"b\":2}\n")).await.unwrap();
        out.write(batch("{\"c\":3}\n")).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"torn\":\n{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n"
        );
    }

    #[tokio::test]
    async fn files_that_cannot_be_synced_still_take_writes() {
        // fdatasync on /dev/null (and on pipes) fails with EINVAL.
        let mut out = FileOutput::open(PathBuf::from("/dev/null"), 1 << 20).unwrap();
        out.write(batch("{\"a\":1}\n")).await.unwrap();
    }

    #[tokio::test]
    async fn rotates_by_size_without_losing_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out = FileOutput::open(path.clone(), 20).unwrap();
        for i in 0..5 {
            out.write(batch(&format!("{{\"n\":{i:04}}}\n")))
                .await
                .unwrap();
        }
        let mut all = String::new();
        for p in [
            "events.jsonl.1",
            "events.jsonl.2",
            "events.jsonl.3",
            "events.jsonl.4",
        ] {
            all.push_str(&std::fs::read_to_string(dir.path().join(p)).unwrap_or_default());
        }
        all.push_str(&std::fs::read_to_string(&path).unwrap());
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(
            lines,
            vec![
                "{\"n\":0000}",
                "{\"n\":0001}",
                "{\"n\":0002}",
                "{\"n\":0003}",
                "{\"n\":0004}"
            ]
        );
        assert!(
            dir.path().join("events.jsonl.1").exists(),
            "rotated at least once"
        );
        for p in std::fs::read_dir(dir.path()).unwrap() {
            let len = p.unwrap().metadata().unwrap().len();
            assert!(len <= 20, "no file grew past max_bytes");
        }
    }
}
