//! Loading: the main file, then `tenants_dir`, then `WIZ_CONNECTOR__...` environment overrides,
//! layered with the `config` crate; then strict deserialization (unknown keys are errors, reported
//! with their path) and resolution into [`Settings`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, File, FileFormat, Map, Source, Value, ValueKind};

use super::error::{ConfigError, Problem};
use super::select::FileIndex;
use super::settings::{resolve, valid_id, Settings};
pub use super::source::EnvSource;
use super::source::Origins;
use super::types::ConfigFile;

/// Where `--config` points when neither it nor `WIZ_CONNECTOR_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "conf/wiz-connector.toml";

/// The main file, parsed once: every stage below reads this instead of parsing the file again
/// (a 100,000-tenant file is 20 MB of TOML; each parse cost over a second).
#[derive(Debug, Clone)]
struct Parsed(Map<String, Value>);

impl Source for Parsed {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The `tenants_dir` as a `config` source: each `<id>.toml` becomes `tenants.<id>`, keeping the
/// file as the origin of its values.
#[derive(Debug, Clone)]
struct TenantsDir {
    files: Vec<(String, PathBuf)>,
}

impl Source for TenantsDir {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        let mut tenants = Map::new();
        for (id, path) in &self.files {
            let table = File::from(path.as_path())
                .format(FileFormat::Toml)
                .required(true)
                .collect()?;
            let origin = path.display().to_string();
            tenants.insert(
                id.clone(),
                Value::new(Some(&origin), ValueKind::Table(table)),
            );
        }
        let mut root = Map::new();
        root.insert(
            "tenants".to_string(),
            Value::new(None, ValueKind::Table(tenants)),
        );
        Ok(root)
    }
}

fn problem(origin: impl Into<String>, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::single(Problem {
        origin: origin.into(),
        tenant: None,
        key: key.to_string(),
        message: message.into(),
    })
}

/// Turns a `config` crate error (syntax, I/O) into ours.
fn from_config_error(origin: &str, e: config::ConfigError) -> ConfigError {
    let key = match &e {
        config::ConfigError::Type { key: Some(k), .. } => k.clone(),
        config::ConfigError::FileParse { .. } => "(syntax)".to_string(),
        _ => "(file)".to_string(),
    };
    problem(origin, &key, e.to_string())
}

/// Lists `<id>.toml` files of `dir`, sorted; other files (editor backups, hidden files) are skipped.
fn list_tenant_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let shown = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        problem(
            &shown,
            "connector.tenants_dir",
            format!("cannot read the tenants directory: {e}"),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| problem(&shown, "connector.tenants_dir", e.to_string()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".toml") else {
            continue;
        };
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if !valid_id(id) {
            return Err(ConfigError::single(Problem {
                origin: path.display().to_string(),
                tenant: Some(id.to_string()),
                key: "(tenant id)".into(),
                message: "a tenant file is named <tenant-id>.toml, and ids use only a-z, 0-9, '_' and '-' (1 to 64 characters)".into(),
            }));
        }
        files.push((id.to_string(), path));
    }
    files.sort();
    Ok(files)
}

/// Loads, layers, checks and resolves the configuration at `path`.
pub fn load(path: &Path, env: &EnvSource) -> Result<Settings, ConfigError> {
    load_only(path, env, None)
}

/// Which tenants a load reads: `None` all of them; otherwise those whose id the function takes.
pub type Wanted<'a> = Option<&'a (dyn Fn(&str) -> bool + Sync)>;

/// [`load`], reading only the `wanted` tenants: the others are neither resolved nor checked (a
/// `tenants_dir` file of a tenant not wanted is not even opened), and the settings returned
/// hold only the wanted ones. What placement uses to start the tenants it gives a replica from
/// files already checked whole: resolving a fleet of 100,000 to start a few thousand of it
/// took most of a failover.
pub fn load_only(
    path: &Path,
    env: &EnvSource,
    wanted: Wanted<'_>,
) -> Result<Settings, ConfigError> {
    let main = path.display().to_string();
    require_file(path, &main)?;
    // The usual case read the fast way; anything else (a tenants_dir, environment overrides, a
    // file the fast way does not take) the layered way, which also words every error.
    if let Some(loaded) = std::fs::read_to_string(path).ok().and_then(|text| {
        // A large file cut down to the wanted tenants first: the parse is most of a load.
        let cut = wanted.and_then(|w| super::select::only_wanted(&text, w));
        load_direct(&main, cut.as_deref().unwrap_or(&text), path, env, wanted)
    }) {
        return loaded;
    }
    load_layered(main, path, env, wanted)
}

/// The error for a main file that is not there.
fn require_file(path: &Path, main: &str) -> Result<(), ConfigError> {
    if path.is_file() {
        return Ok(());
    }
    Err(problem(
        main,
        "(file)",
        "configuration file not found; pass --config FILE or set WIZ_CONNECTOR_CONFIG",
    ))
}

/// The main file read the layered way (see [`load_only`]).
fn load_layered(
    main: String,
    path: &Path,
    env: &EnvSource,
    wanted: Wanted<'_>,
) -> Result<Settings, ConfigError> {
    let owned = path.to_path_buf();
    let make = move || -> MainSource {
        vec![Box::new(
            File::from(owned.as_path())
                .format(FileFormat::Toml)
                .required(true),
        )]
    };
    load_layers(main, make, path, env, wanted)
}

/// [`load_only`] for the tenants placement gives a cluster replica, with the main file's
/// [`FileIndex`]. Given the index of the file as last read, it reads only the common runs and
/// the wanted tenants' runs (see [`FileIndex::read`]); without one, or when the file no longer
/// matches it, it reads the file whole, and returns the index of what it read for next time
/// (`None` when the fast way does not apply: a `tenants_dir`, environment overrides, a shape
/// the scan does not follow). Settings hold exactly the wanted tenants found.
pub fn load_placed(
    path: &Path,
    env: &EnvSource,
    wanted: &std::collections::BTreeSet<String>,
    index: Option<std::sync::Arc<FileIndex>>,
) -> Result<(Settings, Option<std::sync::Arc<FileIndex>>), ConfigError> {
    let main = path.display().to_string();
    let only = |id: &str| wanted.contains(id);
    if let Some(index) = index {
        let ranges = std::fs::File::open(path)
            .ok()
            .and_then(|f| index.read(&f, wanted.iter().map(String::as_str)));
        if let Some(text) = ranges {
            if let Some(Ok(s)) = load_direct(&main, &text, path, env, Some(&only)) {
                if s.tenants.len() == wanted.len() {
                    return Ok((s, Some(index)));
                }
            }
        }
    }
    require_file(path, &main)?;
    if let Ok(text) = std::fs::read_to_string(path) {
        let index = FileIndex::of(&text);
        let cut = index.as_ref().map(|i| i.cut(&text, &only));
        if let Some(loaded) = load_direct(
            &main,
            cut.as_deref().unwrap_or(&text),
            path,
            env,
            Some(&only),
        ) {
            return loaded.map(|s| (s, index.map(std::sync::Arc::new)));
        }
    }
    load_layered(main, path, env, Some(&only)).map(|s| (s, None))
}

/// Loads a configuration given as TOML text; `name` stands for the file in messages. Used by
/// `demo`, which builds its configuration in memory.
pub fn load_str(name: &str, text: &str, env: &EnvSource) -> Result<Settings, ConfigError> {
    if let Some(loaded) = load_direct(name, text, Path::new(name), env, None) {
        return loaded;
    }
    let text = text.to_string();
    let make = move || -> MainSource { vec![Box::new(File::from_str(&text, FileFormat::Toml))] };
    load_layers(name.to_string(), make, Path::new(name), env, None)
}

/// The configuration read straight from the main file's TOML into its types, when that file is
/// the whole configuration (no `tenants_dir`, no environment overrides) and reads without an
/// error: what the layered way gives for such a file, without the `config` crate's tree of it
/// (a value per key with its origin: a large fleet's start spent most of its time there).
/// `None` otherwise, and the layered way reads it (and words its errors). Tenants not `wanted`
/// are dropped from the parsed document before anything is built of them (callers cut a large
/// file down to them before, as the parse is most of a load).
fn load_direct(
    main: &str,
    text: &str,
    path: &Path,
    env: &EnvSource,
    wanted: Wanted<'_>,
) -> Option<Result<Settings, ConfigError>> {
    if !env.overrides().collect().ok()?.is_empty() {
        return None;
    }
    let mut root = toml::de::DeTable::parse(text).ok()?;
    if let Some(wanted) = wanted {
        if let Some(toml::de::DeValue::Table(t)) = root
            .get_mut()
            .get_mut("tenants")
            .map(toml::Spanned::get_mut)
        {
            *t = std::mem::take(t)
                .into_iter()
                .filter(|(id, _)| wanted(id.get_ref()))
                .collect();
        }
    }
    let de = toml::Deserializer::from(root);
    let file = <ConfigFile as serde::Deserialize>::deserialize(de).ok()?;
    if file.connector.tenants_dir.is_some() {
        return None;
    }
    let origins = Origins {
        merged: None,
        main: main.to_string(),
        tenant_files: HashMap::new(),
    };
    Some(finish(file, &origins, env, path))
}

/// The main file as a `config` source, boxed so a path and a string look alike.
type MainSource = Vec<Box<dyn Source + Send + Sync>>;

fn load_layers(
    main: String,
    main_file: impl Fn() -> MainSource,
    path: &Path,
    env: &EnvSource,
    wanted: Wanted<'_>,
) -> Result<Settings, ConfigError> {
    let mut parsed = main_file()
        .collect()
        .map_err(|e| from_config_error(&main, e))?;
    if let Some(wanted) = wanted {
        if let Some(ValueKind::Table(t)) = parsed.get_mut("tenants").map(|v| &mut v.kind) {
            t.retain(|id, _| wanted(id));
        }
    }
    // Stage 1: the main file's `[connector]` and the environment, to learn where tenants_dir is.
    let connector: Map<String, Value> = parsed
        .get("connector")
        .map(|c| ("connector".to_string(), c.clone()))
        .into_iter()
        .collect();
    let stage1 = Config::builder()
        .add_source(Parsed(connector))
        .add_source(env.overrides())
        .build()
        .map_err(|e| from_config_error(&main, e))?;
    let tenants_dir: Option<PathBuf> = match stage1.get::<String>("connector.tenants_dir") {
        Ok(d) => Some(PathBuf::from(d)),
        Err(config::ConfigError::NotFound(_)) => None,
        Err(e) => return Err(from_config_error(&main, e)),
    };

    let mut files = match &tenants_dir {
        Some(d) => list_tenant_files(d)?,
        None => Vec::new(),
    };
    if let Some(wanted) = wanted {
        files.retain(|(id, _)| wanted(id));
    }
    // A tenant defined both in the main file and in tenants_dir is ambiguous: refuse it.
    let in_main = parsed.get("tenants").and_then(|v| match &v.kind {
        ValueKind::Table(t) => Some(t),
        _ => None,
    });
    let mut problems = Vec::new();
    for (id, p) in &files {
        if in_main.is_some_and(|t| t.contains_key(id)) {
            problems.push(Problem {
                origin: p.display().to_string(),
                tenant: Some(id.clone()),
                key: "(tenant id)".into(),
                message: format!("tenant is also defined in {main}; keep one definition"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }

    let tenant_files: HashMap<String, String> = files
        .iter()
        .map(|(id, p)| (id.clone(), p.display().to_string()))
        .collect();
    // Without a tenants_dir and without environment overrides the main file is the whole
    // configuration: it is read as parsed, without merging layers (a second copy of a large
    // fleet's tree) and every value's origin is the main file.
    let overrides = env
        .overrides()
        .collect()
        .map_err(|e| from_config_error(&main, e))?;
    let (tree, merged) = if files.is_empty() && overrides.is_empty() {
        (Value::new(None, ValueKind::Table(parsed)), None)
    } else {
        let merged = Config::builder()
            .add_source(Parsed(parsed))
            .add_source(TenantsDir { files })
            .add_source(env.overrides())
            .build()
            .map_err(|e| {
                let origin = match &e {
                    config::ConfigError::FileParse { uri: Some(u), .. } => u.clone(),
                    _ => main.clone(),
                };
                from_config_error(&origin, e)
            })?;
        (merged.cache.clone(), Some(merged))
    };
    let origins = Origins {
        merged,
        main,
        tenant_files,
    };

    let file: ConfigFile = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // `tenants.<id>.<key>` is reported as tenant + key.
        let segs: Vec<&str> = path.split('.').collect();
        let (tenant, key) = match segs.as_slice() {
            ["tenants", id, rest @ ..] => (Some(id.to_string()), rest.join(".")),
            _ => (
                None,
                if path == "." {
                    String::new()
                } else {
                    path.clone()
                },
            ),
        };
        let key = unknown_field_key(&key, &message);
        let origin = match &tenant {
            Some(id) => origins.of_tenant(id, &key),
            None => origins.of(&key),
        };
        ConfigError::single(Problem {
            origin,
            tenant,
            key: if key.is_empty() {
                "(table)".into()
            } else {
                key
            },
            message: clean_serde_message(&message),
        })
    })?;
    finish(file, &origins, env, path)
}

/// Resolves a read configuration into settings.
fn finish(
    file: ConfigFile,
    origins: &Origins,
    env: &EnvSource,
    path: &Path,
) -> Result<Settings, ConfigError> {
    let settings = resolve(&file, origins, env, path.to_path_buf());
    // A large fleet's file is hundreds of thousands of small allocations: it is freed on another
    // thread, as nothing waits for it.
    if file.tenants.len() > 1000 {
        std::thread::spawn(move || {
            drop(file);
            crate::heap::give_back();
        });
    }
    let settings = settings?;
    // One line for the whole fleet, not one per tenant (a 100,000-tenant configuration would
    // otherwise open the log with 100,000 warnings).
    let insecure: Vec<&str> = settings
        .tenants
        .iter()
        .filter(|t| t.allow_insecure_endpoints)
        .map(|t| t.id.as_str())
        .collect();
    if !insecure.is_empty() {
        const SHOWN: usize = 5;
        let mut names = insecure[..insecure.len().min(SHOWN)].join(", ");
        if insecure.len() > SHOWN {
            names.push_str(&format!(" and {} more", insecure.len() - SHOWN));
        }
        tracing::warn!(
            tenants = insecure.len(),
            which = %names,
            "allow_insecure_endpoints is on: http:// and non-Wiz hosts are accepted for these tenants (simulators and tests only)"
        );
    }
    Ok(settings)
}

/// serde reports an unknown field at the path of its parent table; put the field in the key.
fn unknown_field_key(key: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            return if key.is_empty() || key == field || key.ends_with(&format!(".{field}")) {
                if key.is_empty() {
                    field.to_string()
                } else {
                    key.to_string()
                }
            } else if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
        }
    }
    key.to_string()
}

/// Makes serde's messages read as advice.
fn clean_serde_message(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message} (unknown keys are errors: check the spelling)")
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two ways of reading a file give the same settings: the direct way is only a faster
    /// road to what the layered way gives.
    #[test]
    fn the_direct_way_and_the_layered_way_agree() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/wiz-connector.toml"),
        )
        .unwrap();
        let rich = r#"
[connector]
poll_interval = "90s"
startup_jitter = "5s"
statuses = ["OPEN", "in_progress"]
feeds = ["issues", "detections", "vulnerabilities"]
initial_lookback = { detections = "2d" }
max_concurrent_sweeps = 12
[admin]
listen = "127.0.0.1:9999"
[cluster]
nats_url = "nats://127.0.0.1:4222"
replica_id = "r1"
heartbeat = "1s"
failover_after = "5s"
[hooks]
listen = "127.0.0.1:9998"
[sinks.archive]
type = "file"
path = "/tmp/x/{tenant}.jsonl"
format = "ocsf"
[sinks.hec]
type = "splunk_hec"
url = "https://splunk.example:8088"
token = "hec-token-1234567890"
index = "wiz"
[sinks.siem]
type = "http"
url = "http://127.0.0.1:9/ingest"
gzip = false
timeout = "2s"
max_retries = 0
backlog_max_bytes = 1048576
[routes.gold]
tenants = ["acme*"]
labels = { tier = "gold" }
sinks = ["hec"]
min_severity = "medium"
[telemetry]
service_name = "wiz"
[tenants.acme]
client_id = "id"
client_secret = "secret-value-123"
api_url = "https://api.us20.app.wiz.io/graphql"
labels = { tier = "gold", customer = "acme" }
rate_limit = 2.5
allow_insecure_endpoints = true
write_back = true
webhook_token = "0123456789abcdef0123"
sinks = ["archive"]
[tenants.beta]
client_id = "id2"
client_secret = "secret-value-456"
api_url = "https://api.us20.app.wiz.io/graphql"
poll_interval = "5m"
sinks = ["archive", "hec", "siem"]
"#;
        for (name, text) in [("example", example.as_str()), ("rich", rich)] {
            // A variable the example's secret names; not an override.
            let env = EnvSource::Fixed(HashMap::from([(
                "ACME_WIZ_SECRET".to_string(),
                "secret-from-env-1".to_string(),
            )]));
            let direct = load_direct(name, text, Path::new(name), &env, None)
                .unwrap_or_else(|| panic!("{name}: the direct way takes it"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let owned = text.to_string();
            let layered = load_layers(
                name.to_string(),
                move || -> MainSource { vec![Box::new(File::from_str(&owned, FileFormat::Toml))] },
                Path::new(name),
                &env,
                None,
            )
            .unwrap();
            assert_eq!(
                serde_json::to_value(&direct).unwrap(),
                serde_json::to_value(&layered).unwrap(),
                "{name}"
            );
            assert!(!direct.tenants.is_empty());
        }
        // Reading only some tenants: both ways agree, and hold only those.
        let env = EnvSource::Fixed(HashMap::new());
        let beta_only = |id: &str| id == "beta";
        let direct = load_direct("rich", rich, Path::new("rich"), &env, Some(&beta_only))
            .unwrap()
            .unwrap();
        let layered = load_layers(
            "rich".into(),
            || -> MainSource { vec![Box::new(File::from_str(rich, FileFormat::Toml))] },
            Path::new("rich"),
            &env,
            Some(&beta_only),
        )
        .unwrap();
        let ids = |s: &Settings| s.tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&direct), ["beta"]);
        assert_eq!(ids(&layered), ["beta"]);
        assert_eq!(
            serde_json::to_value(&direct.tenants).unwrap(),
            serde_json::to_value(&layered.tenants).unwrap()
        );
        // What the direct way does not take, it leaves to the layered way.
        let env = EnvSource::Fixed(HashMap::new());
        let coerced = rich.replace("rate_limit = 2.5", "rate_limit = \"2.5\"");
        assert!(load_direct("c", &coerced, Path::new("c"), &env, None).is_none());
        let dir = rich.replace("[admin]", "tenants_dir = \"/nonexistent\"\n[admin]");
        assert!(load_direct("d", &dir, Path::new("d"), &env, None).is_none());
        let overridden = EnvSource::Fixed(HashMap::from([(
            "WIZ_CONNECTOR__CONNECTOR__POLL_INTERVAL".to_string(),
            "2m".to_string(),
        )]));
        assert!(load_direct("e", rich, Path::new("e"), &overridden, None).is_none());
    }
}
