//! An OCSF event validator for the tests, reading the schema files kept in
//! `tests/fixtures/ocsf-schema-1.8.0` (OCSF 1.8.0, Apache-2.0: see its LICENSE and NOTICE).
//!
//! It compiles an event class the way the schema's own compiler defines it: `extends` chains
//! flattened with the child's entries over the parent's (enum values merged); `$include`d
//! profiles' attributes added and tagged with the profile, unless the including class or object
//! declares the attribute with `"profile": null`; each attribute's definition is its dictionary
//! entry with the class's or object's entry on top; a type that is not a dictionary type names
//! an object. A class's uid is its category's uid × 1000 + its own.
//!
//! Errors (what `ocsf` output must have none of): an unknown `class_uid`; a `category_uid` that is
//! not the class's; `type_uid` other than `class_uid` × 100 + `activity_id`; a required attribute
//! missing or null (attributes of a profile count only when `metadata.profiles` lists it), in the
//! event and in every object present, array elements included; a value of the wrong JSON type
//! (`timestamp_t` is integer milliseconds); an enum value the enum does not list; a string over
//! its type's `max_len` or a number outside its type's `range`; a failed `at_least_one` or
//! `just_one` constraint; an unknown profile in `metadata.profiles`. Attributes the schema does
//! not define, and attributes of a profile the event does not declare, are reported apart
//! (`undefined`), as the reference validator's warnings are.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

/// One attribute of a compiled class or object.
#[derive(Debug, Clone)]
struct Attr {
    /// A dictionary type (`string_t`, ...) or an object name.
    kind: String,
    is_array: bool,
    required: bool,
    /// The profile it comes from, if any.
    profile: Option<String>,
    /// Enum values, by their JSON text (`"1"`, `"99"`).
    values: Option<BTreeSet<String>>,
}

/// A class or an object, compiled.
#[derive(Debug, Clone, Default)]
struct Compiled {
    attrs: BTreeMap<String, Attr>,
    constraints: Map<String, Value>,
}

pub struct Schema {
    dir: PathBuf,
    pub version: String,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
    categories: HashMap<String, i64>,
    profiles: BTreeSet<String>,
    /// class uid → (file, category uid).
    classes: HashMap<i64, (PathBuf, i64)>,
    objects: Mutex<HashMap<String, Compiled>>,
}

/// What validating one event found.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    /// Attributes the schema does not define, by path.
    pub undefined: Vec<String>,
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

impl Schema {
    pub fn load(dir: &Path) -> Schema {
        let dict = read(&dir.join("dictionary.json"));
        let categories = obj(&read(&dir.join("categories.json"))["attributes"])
            .into_iter()
            .map(|(name, c)| (name, c["uid"].as_i64().unwrap()))
            .collect::<HashMap<_, _>>();
        let profiles = std::fs::read_dir(dir.join("profiles"))
            .unwrap()
            .map(|e| {
                read(&e.unwrap().path())["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut classes = HashMap::new();
        for sub in ["findings", "application"] {
            for e in std::fs::read_dir(dir.join("events").join(sub)).unwrap() {
                let path = e.unwrap().path();
                let class = read(&path);
                let Some(uid) = class["uid"].as_i64() else {
                    continue; // abstract (finding, application)
                };
                let category = class["category"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        // A class without its own category takes its parent's.
                        let parent = class["extends"].as_str()?;
                        let p = read(&dir.join("events").join(sub).join(format!("{parent}.json")));
                        p["category"].as_str().map(str::to_string)
                    })
                    .unwrap();
                let cat = categories[&category];
                classes.insert(cat * 1000 + uid, (path, cat));
            }
        }
        Schema {
            dir: dir.to_path_buf(),
            version: read(&dir.join("version.json"))["version"]
                .as_str()
                .unwrap()
                .to_string(),
            dictionary: obj(&dict["attributes"]),
            types: obj(&dict["types"]["attributes"]),
            categories,
            profiles,
            classes,
            objects: Mutex::new(HashMap::new()),
        }
    }

    /// The schema kept in the repository.
    pub fn bundled() -> Schema {
        Schema::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsf-schema-1.8.0"),
        )
    }

    /// The file of an event class or object by name.
    fn item_file(&self, name: &str, event: bool) -> PathBuf {
        if !event {
            return self.dir.join("objects").join(format!("{name}.json"));
        }
        ["events", "events/findings", "events/application"]
            .iter()
            .map(|d| self.dir.join(d).join(format!("{name}.json")))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no event class `{name}`"))
    }

    /// Compiles a class or object file: its parent first, its profiles, then its own entries.
    fn compile(&self, path: &Path, event: bool) -> Compiled {
        let item = read(path);
        let mut out = match item["extends"].as_str() {
            Some("object") | None => Compiled::default(),
            Some(parent) => self.compile(&self.item_file(parent, event), event),
        };
        if let Some(c) = item["constraints"].as_object() {
            out.constraints = c.clone();
        }
        let own = obj(&item["attributes"]);
        if let Some(includes) = own.get("$include").and_then(Value::as_array) {
            for inc in includes {
                let p = read(&self.dir.join(inc.as_str().unwrap()));
                let profile = p["name"].as_str().unwrap().to_string();
                for (name, entry) in obj(&p["attributes"]) {
                    // An attribute the item declares with `"profile": null` is its own.
                    let untagged = own
                        .get(&name)
                        .is_some_and(|e| e.get("profile").is_some_and(Value::is_null));
                    let tag = (!untagged).then(|| profile.clone());
                    self.merge(&mut out, &name, &entry, Some(tag));
                }
            }
        }
        for (name, entry) in own.iter().filter(|(n, _)| *n != "$include") {
            self.merge(&mut out, name, entry, None);
        }
        out
    }

    /// Adds `entry` for attribute `name` over what `out` has (and the dictionary under both).
    /// `profile`: `Some(tag)` from an included profile; `None` from the item itself (keeps an
    /// existing tag unless the entry sets `"profile"`).
    fn merge(
        &self,
        out: &mut Compiled,
        name: &str,
        entry: &Value,
        profile: Option<Option<String>>,
    ) {
        let dict = self.dictionary.get(name).cloned().unwrap_or(Value::Null);
        let before = out.attrs.get(name).cloned();
        let pick = |k: &str| entry.get(k).or_else(|| dict.get(k));
        let kind = pick("type")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| before.as_ref().map(|b| b.kind.clone()))
            .unwrap_or_else(|| "string_t".to_string());
        let is_array = pick("is_array")
            .and_then(Value::as_bool)
            .or_else(|| before.as_ref().map(|b| b.is_array))
            .unwrap_or(false);
        let required = match entry.get("requirement").and_then(Value::as_str) {
            Some(r) => r == "required",
            None => before.as_ref().is_some_and(|b| b.required),
        };
        let profile = match profile {
            Some(tag) => tag,
            None => match entry.get("profile") {
                Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                _ => before.as_ref().and_then(|b| b.profile.clone()),
            },
        };
        let mut values = before.and_then(|b| b.values);
        // The schema compiler makes these three enums from the classes themselves; they are
        // checked as such in `validate`.
        let generated = ["class_uid", "category_uid", "type_uid"].contains(&name);
        for e in [dict.get("enum"), entry.get("enum")]
            .into_iter()
            .flatten()
            .filter(|_| !generated)
        {
            let set = values.get_or_insert_with(BTreeSet::new);
            set.extend(obj(e).keys().cloned());
        }
        out.attrs.insert(
            name.to_string(),
            Attr {
                kind,
                is_array,
                required,
                profile,
                values,
            },
        );
    }

    fn object(&self, name: &str) -> Compiled {
        if let Some(c) = self.objects.lock().unwrap().get(name) {
            return c.clone();
        }
        let c = self.compile(&self.item_file(name, false), false);
        self.objects
            .lock()
            .unwrap()
            .insert(name.to_string(), c.clone());
        c
    }

    /// Validates one event.
    pub fn validate(&self, event: &Value) -> Report {
        let mut r = Report::default();
        let Some(class_uid) = event["class_uid"].as_i64() else {
            r.errors.push("class_uid: missing".into());
            return r;
        };
        let Some((path, category)) = self.classes.get(&class_uid) else {
            r.errors
                .push(format!("class_uid: unknown class {class_uid}"));
            return r;
        };
        if event["category_uid"].as_i64() != Some(*category) {
            r.errors.push(format!(
                "category_uid: {} is not the class's category {category}",
                event["category_uid"]
            ));
        }
        if let Some(activity) = event["activity_id"].as_i64() {
            if event["type_uid"].as_i64() != Some(class_uid * 100 + activity) {
                r.errors.push(format!(
                    "type_uid: {} is not class_uid * 100 + activity_id ({})",
                    event["type_uid"],
                    class_uid * 100 + activity
                ));
            }
        }
        let active: BTreeSet<String> = event["metadata"]["profiles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for p in &active {
            if !self.profiles.contains(p) {
                r.errors
                    .push(format!("metadata.profiles: unknown profile `{p}`"));
            }
        }
        let class = self.compile(path, true);
        self.check_object(&class, event, "", &active, &mut r);
        r
    }

    fn check_object(
        &self,
        item: &Compiled,
        value: &Value,
        at: &str,
        active: &BTreeSet<String>,
        r: &mut Report,
    ) {
        let Some(map) = value.as_object() else {
            r.errors.push(format!("{at}: not an object"));
            return;
        };
        let path = |name: &str| {
            if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}.{name}")
            }
        };
        let counts = |a: &Attr| a.profile.as_ref().is_none_or(|p| active.contains(p));
        for (name, attr) in &item.attrs {
            if attr.required && counts(attr) && map.get(name).is_none_or(Value::is_null) {
                r.errors.push(format!("{}: required, missing", path(name)));
            }
        }
        for (kind, names) in &item.constraints {
            let names: Vec<&str> = names
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let present = names
                .iter()
                .filter(|n| map.get(**n).is_some_and(|v| !v.is_null()))
                .count();
            let ok = match kind.as_str() {
                "at_least_one" => present >= 1,
                "just_one" => present == 1,
                _ => true,
            };
            if !ok && !names.is_empty() {
                r.errors.push(format!(
                    "{}: constraint {kind} of {names:?} fails ({present} present)",
                    if at.is_empty() { "(event)" } else { at }
                ));
            }
        }
        for (name, v) in map {
            let Some(attr) = item.attrs.get(name) else {
                r.undefined.push(path(name));
                continue;
            };
            if !counts(attr) {
                // An attribute of a profile the event does not declare (the reference
                // validator's warning): reported with the undefined ones.
                r.undefined.push(format!(
                    "{} (profile {})",
                    path(name),
                    attr.profile.as_deref().unwrap_or("")
                ));
            }
            if v.is_null() {
                continue;
            }
            if attr.is_array {
                match v.as_array() {
                    Some(items) => {
                        for (i, e) in items.iter().enumerate() {
                            self.check_value(attr, e, &format!("{}[{i}]", path(name)), active, r);
                        }
                    }
                    None => r.errors.push(format!("{}: not an array", path(name))),
                }
            } else {
                self.check_value(attr, v, &path(name), active, r);
            }
        }
    }

    fn check_value(
        &self,
        attr: &Attr,
        v: &Value,
        at: &str,
        active: &BTreeSet<String>,
        r: &mut Report,
    ) {
        if attr.kind == "object" {
            // The generic object (`unmapped`, ...): any members.
            if !v.is_object() {
                r.errors.push(format!("{at}: not an object"));
            }
            return;
        }
        if !attr.kind.ends_with("_t") {
            let object = self.object(&attr.kind);
            return self.check_object(&object, v, at, active, r);
        }
        // The base type of a dictionary type (`port_t` is an `integer_t`), and its limits.
        let def = self.types.get(&attr.kind).cloned().unwrap_or(Value::Null);
        let base = def["type"].as_str().unwrap_or(&attr.kind).to_string();
        let ok = match base.as_str() {
            "string_t" => v.is_string(),
            "integer_t" | "long_t" => {
                v.is_i64() || v.is_u64() && v.as_u64() <= Some(i64::MAX as u64)
            }
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "json_t" => true,
            _ => v.is_string(),
        };
        if !ok {
            r.errors
                .push(format!("{at}: {v} is not a {} ({base})", attr.kind));
            return;
        }
        if let (Some(max), Some(s)) = (def["max_len"].as_u64(), v.as_str()) {
            if s.len() as u64 > max {
                r.errors.push(format!("{at}: longer than {max}"));
            }
        }
        if let (Some(range), Some(n)) = (def["range"].as_array(), v.as_i64()) {
            let (lo, hi) = (range[0].as_i64().unwrap(), range[1].as_i64().unwrap());
            if n < lo || n > hi {
                r.errors.push(format!("{at}: {n} outside [{lo}, {hi}]"));
            }
        }
        if let Some(values) = &attr.values {
            let key = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !values.contains(&key) {
                r.errors.push(format!(
                    "{at}: {v} is not one of the enum's values {values:?}"
                ));
            }
        }
    }

    /// The category uid of a category name (for the tests' expectations).
    pub fn category(&self, name: &str) -> i64 {
        self.categories[name]
    }
}
