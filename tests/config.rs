//! Configuration: layering, defaults, and every error naming file, tenant and key.

mod common;

use std::collections::HashMap;

use common::write_config;
use wiz_connector::config::{
    load, load_only, load_placed, Cloud, ConfigError, EnvSource, SecretSource, Settings,
};

const SECRET: &str = "s3cr3t-Value-that-must-never-leak";

fn good_tenant(id: &str) -> String {
    format!(
        "[tenants.{id}]\nclient_id = \"cid-{id}\"\nclient_secret = \"{SECRET}\"\napi_url = \"https://api.us20.app.wiz.io/graphql\"\n"
    )
}

fn env(pairs: &[(&str, &str)]) -> EnvSource {
    EnvSource::Fixed(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    )
}

fn load_str(body: &str, e: &EnvSource) -> (Result<Settings, ConfigError>, String) {
    let c = write_config(body);
    let r = load(&c.path, e);
    (r, c.path.display().to_string())
}

/// Loads `body`, expects exactly one problem, returns (origin, tenant, key, message).
fn one_problem(body: &str, e: &EnvSource) -> (String, Option<String>, String, String, String) {
    let (r, path) = load_str(body, e);
    let err = r.expect_err("config should be refused");
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = err.problems[0].clone();
    (p.origin, p.tenant, p.key, p.message, path)
}

#[test]
fn a_complete_config_resolves_with_defaults() {
    let body = format!(
        "[connector]\npoll_interval = \"60s\"\nstatuses = [\"OPEN\", \"in_progress\"]\n[sinks.console]\ntype = \"stdout\"\n[sinks.archive]\ntype = \"file\"\npath = \"events.jsonl\"\n{}",
        good_tenant("acme")
    );
    let (r, path) = load_str(&body, &env(&[]));
    let s = r.unwrap();
    assert_eq!(s.sinks.len(), 2);
    let t = &s.tenants[0];
    assert_eq!(t.id, "acme");
    assert_eq!(t.origin, path);
    assert_eq!(t.auth_url.as_str(), "https://auth.app.wiz.io/oauth/token");
    assert_eq!(t.audience, "wiz-api");
    assert_eq!(t.cloud, Cloud::Commercial);
    assert_eq!(t.console_url.as_str(), "https://app.wiz.io/");
    assert_eq!(t.poll_interval.0.as_secs(), 60);
    assert_eq!(t.page_size, 500);
    assert_eq!(t.rate_limit, 3.0);
    assert_eq!(t.request_timeout.0.as_secs(), 60);
    assert_eq!(t.statuses, vec!["OPEN", "IN_PROGRESS"]);
    assert_eq!(t.secret_source, SecretSource::Literal);
    assert_eq!(s.admin.listen.to_string(), "127.0.0.1:8686");
}

#[test]
fn gov_cloud_fedramp_and_legacy_hosts_get_the_right_defaults() {
    let body = format!(
        "{}auth_url = \"https://auth.gov.wiz.io/oauth/token\"\n{}auth_url = \"https://auth0.gov.wiz.io/oauth/token\"\n[tenants.fed]\nclient_id = \"x\"\nclient_secret = \"y\"\napi_url = \"https://api.us1.app.wiz.us/graphql\"\n",
        good_tenant("gov"),
        good_tenant("legacy")
    );
    let s = load_str(&body, &env(&[])).0.unwrap();
    let by = |id: &str| s.tenants.iter().find(|t| t.id == id).unwrap().clone();
    assert_eq!(
        by("gov").auth_url.as_str(),
        "https://auth.gov.wiz.io/oauth/token"
    );
    assert_eq!(by("gov").audience, "wiz-api");
    assert_eq!(by("legacy").audience, "beyond-api");
    let fed = by("fed");
    assert_eq!(fed.cloud, Cloud::Fedramp);
    assert_eq!(fed.auth_url.as_str(), "https://auth.app.wiz.us/oauth/token");
    assert_eq!(fed.console_url.as_str(), "https://app.wiz.us/");
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    for (body, tenant, key) in [
        (format!("colour = 1\n{}", good_tenant("a")), None, "colour"),
        (
            format!("[connector]\npage_sise = 5\n{}", good_tenant("a")),
            None,
            "connector.page_sise",
        ),
        (
            format!("{}pol_interval = \"5s\"\n", good_tenant("a")),
            Some("a"),
            "pol_interval",
        ),
        (
            format!(
                "[sinks.x]\ntype = \"file\"\npath = \"a\"\nrotate = 1\n{}",
                good_tenant("a")
            ),
            None,
            "sinks.x.rotate",
        ),
    ] {
        let (origin, t, k, msg, path) = one_problem(&body, &env(&[]));
        assert_eq!(origin, path);
        assert_eq!(t.as_deref(), tenant);
        assert_eq!(k, key, "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }
}

#[test]
fn range_duration_and_type_errors_name_the_key() {
    let cases = [
        (
            "[connector]\npage_size = 0\n",
            None,
            "connector.page_size",
            "between 1 and 500",
        ),
        (
            "[connector]\npage_size = 501\n",
            None,
            "connector.page_size",
            "between 1 and 500",
        ),
        (
            "[connector]\npoll_interval = \"5 parsecs\"\n",
            None,
            "connector.poll_interval",
            "invalid duration",
        ),
        (
            "[connector]\nrequest_timeout = \"200s\"\n",
            None,
            "connector.request_timeout",
            "115s",
        ),
        (
            "[connector]\nstatuses = [\"OPEN\", \"DONE\"]\n",
            None,
            "connector.statuses",
            "unknown status \"DONE\"",
        ),
        (
            "[admin]\nlisten = \"localhost\"\n",
            None,
            "admin.listen",
            "not an address",
        ),
        (
            "[connector]\npage_size = \"many\"\n",
            None,
            "connector.page_size",
            "invalid",
        ),
        (
            "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
            None,
            "telemetry.otlp_endpoint",
            "not an http(s) URL",
        ),
    ];
    for (extra, tenant, key, needle) in cases {
        let body = format!("{extra}{}", good_tenant("a"));
        let (_, t, k, msg, _) = one_problem(&body, &env(&[]));
        assert_eq!((t.as_deref(), k.as_str()), (tenant, key), "{msg}");
        assert!(msg.contains(needle), "{key}: {msg}");
    }
    let tenant_cases = [
        ("page_size = 900", "page_size", "between 1 and 500"),
        (
            "poll_interval = \"soon\"",
            "poll_interval",
            "invalid duration",
        ),
        ("rate_limit = 0", "rate_limit", "above 0"),
        (
            "request_timeout = \"0s\"",
            "request_timeout",
            "between 1s and 115s",
        ),
    ];
    for (line, key, needle) in tenant_cases {
        let body = format!("{}{line}\n", good_tenant("acme"));
        let (_, t, k, msg, _) = one_problem(&body, &env(&[]));
        assert_eq!((t.as_deref(), k.as_str()), (Some("acme"), key), "{msg}");
        assert!(msg.contains(needle), "{key}: {msg}");
    }
}

#[test]
fn endpoints_must_be_https_on_wiz_hosts_unless_insecure_is_allowed() {
    let base = "[tenants.acme]\nclient_id = \"c\"\nclient_secret = \"s\"\n";
    for (line, key, needle) in [
        ("api_url = \"http://api.us20.app.wiz.io/graphql\"", "api_url", "not https"),
        ("api_url = \"https://wiz.example.com/graphql\"", "api_url", "not a Wiz host"),
        ("api_url = \"https://user:pw@api.us20.app.wiz.io/graphql\"", "api_url", "credentials"),
        ("api_url = \"not a url\"", "api_url", "not a URL"),
        ("api_url = \"https://api.us20.app.wiz.io/graphql\"\nauth_url = \"https://evil.example/token\"", "auth_url", "not a Wiz host"),
    ] {
        let (_, t, k, msg, _) = one_problem(&format!("{base}{line}\n"), &env(&[]));
        assert_eq!((t.as_deref(), k.as_str()), (Some("acme"), key), "{msg}");
        assert!(msg.contains(needle), "{msg}");
    }
    let ok = format!("{base}api_url = \"http://127.0.0.1:9/graphql\"\nauth_url = \"http://127.0.0.1:9/oauth/token\"\nallow_insecure_endpoints = true\n");
    let s = load_str(&ok, &env(&[])).0.unwrap();
    assert!(s.tenants[0].allow_insecure_endpoints);
}

#[test]
fn tenant_ids_and_required_keys_are_checked() {
    let (_, t, k, msg, _) = one_problem(
        &good_tenant("Acme!").replace("[tenants.Acme!]", "[tenants.\"Acme!\"]"),
        &env(&[]),
    );
    assert_eq!((t.as_deref(), k.as_str()), (Some("Acme!"), "(tenant id)"));
    assert!(msg.contains("a-z, 0-9"), "{msg}");
    let long = "a".repeat(65);
    let (_, t, _, _, _) = one_problem(&good_tenant(&long), &env(&[]));
    assert_eq!(t.as_deref(), Some(long.as_str()));

    let (r, _) = load_str("[tenants.acme]\nclient_secret = \"s\"\n", &env(&[]));
    let err = r.unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec!["client_id", "api_url"], "{err}");
    assert!(err
        .to_string()
        .contains("tenant `acme`: key `client_id`: is required"));
}

#[test]
fn secrets_come_from_literals_env_vars_or_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let body = format!(
        "{}{}{}",
        good_tenant("lit"),
        good_tenant("env").replace(SECRET, "${ENV_WIZ_SECRET}"),
        good_tenant("file").replace(
            &format!("client_secret = \"{SECRET}\""),
            &format!("client_secret_file = \"{}\"", secret_file.display())
        ),
    );
    let s = load_str(&body, &env(&[("ENV_WIZ_SECRET", SECRET)]))
        .0
        .unwrap();
    use secrecy::ExposeSecret;
    for t in &s.tenants {
        assert_eq!(t.client_secret.expose_secret(), SECRET, "{}", t.id);
    }
    let by = |id: &str| {
        s.tenants
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .secret_source
            .clone()
    };
    assert_eq!(by("env"), SecretSource::Env("ENV_WIZ_SECRET".into()));
    assert_eq!(by("file"), SecretSource::File(secret_file.clone()));

    // Missing variable, both forms, neither form, unreadable file.
    let (_, t, k, msg, _) = one_problem(
        &good_tenant("env").replace(SECRET, "${NOPE_SECRET}"),
        &env(&[]),
    );
    assert_eq!((t.as_deref(), k.as_str()), (Some("env"), "client_secret"));
    assert!(msg.contains("NOPE_SECRET is not set"), "{msg}");
    let both = format!("{}client_secret_file = \"/x\"\n", good_tenant("b"));
    assert_eq!(one_problem(&both, &env(&[])).2, "client_secret_file");
    let neither =
        "[tenants.n]\nclient_id = \"c\"\napi_url = \"https://api.us20.app.wiz.io/graphql\"\n";
    assert_eq!(one_problem(neither, &env(&[])).2, "client_secret");
    let missing = good_tenant("f").replace(
        &format!("client_secret = \"{SECRET}\""),
        "client_secret_file = \"/definitely/not/here\"",
    );
    let (_, _, k, msg, _) = one_problem(&missing, &env(&[]));
    assert_eq!(k, "client_secret_file");
    assert!(msg.contains("cannot read /definitely/not/here"), "{msg}");
}

#[test]
fn environment_overrides_apply_and_errors_name_the_variable() {
    let body = good_tenant("acme").replace(SECRET, "from-file");
    let e = env(&[
        ("WIZ_CONNECTOR__TENANTS__ACME__CLIENT_SECRET", SECRET),
        ("WIZ_CONNECTOR__CONNECTOR__STATUSES", "OPEN,RESOLVED"),
        ("WIZ_CONNECTOR__CONNECTOR__PAGE_SIZE", "250"),
        // Not an override: one underscore after the prefix.
        ("WIZ_CONNECTOR_CONFIG", "/elsewhere.toml"),
    ]);
    let s = load_str(&body, &e).0.unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(s.tenants[0].client_secret.expose_secret(), SECRET);
    assert_eq!(s.tenants[0].statuses, vec!["OPEN", "RESOLVED"]);
    assert_eq!(s.tenants[0].page_size, 250);

    let e = env(&[("WIZ_CONNECTOR__CONNECTOR__PAGE_SIZE", "900")]);
    let (origin, _, key, _, _) = one_problem(&good_tenant("acme"), &e);
    assert_eq!(key, "connector.page_size");
    assert_eq!(
        origin,
        "environment variable WIZ_CONNECTOR__CONNECTOR__PAGE_SIZE"
    );
}

#[test]
fn tenants_dir_adds_one_tenant_per_file_and_names_the_file_in_errors() {
    let cfg = write_config("");
    let tdir = cfg.dir.path().join("tenants.d");
    std::fs::create_dir(&tdir).unwrap();
    let main = format!(
        "[connector]\ntenants_dir = \"{}\"\n{}",
        tdir.display(),
        good_tenant("main-one")
    );
    std::fs::write(&cfg.path, &main).unwrap();
    let tenant_body = |id: &str| {
        good_tenant(id)
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(tdir.join("beta.toml"), tenant_body("beta")).unwrap();
    std::fs::write(tdir.join("gamma.toml"), tenant_body("gamma")).unwrap();
    std::fs::write(tdir.join("notes.txt"), "ignored").unwrap();
    std::fs::write(tdir.join(".hidden.toml"), "ignored = true").unwrap();
    let s = load(&cfg.path, &env(&[])).unwrap();
    let ids: Vec<&str> = s.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["beta", "gamma", "main-one"]);
    assert_eq!(
        s.tenants[0].origin,
        tdir.join("beta.toml").display().to_string()
    );

    // An env override reaches a tenant defined in tenants_dir.
    let s = load(
        &cfg.path,
        &env(&[("WIZ_CONNECTOR__TENANTS__BETA__CLIENT_ID", "overridden")]),
    )
    .unwrap();
    assert_eq!(s.tenants[0].client_id, "overridden");

    // A bad key in a tenant file names that file, the tenant and the key.
    std::fs::write(
        tdir.join("gamma.toml"),
        format!("{}\npage_size = 0\n", tenant_body("gamma")),
    )
    .unwrap();
    let err = load(&cfg.path, &env(&[])).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    let p = &err.problems[0];
    assert_eq!(p.origin, tdir.join("gamma.toml").display().to_string());
    // Reading only some tenants (what placement does) neither opens nor checks the others'
    // files: only beta is built, gamma's error is not seen; with gamma wanted, it is.
    let beta = |id: &str| id == "beta";
    let s = load_only(&cfg.path, &env(&[]), Some(&beta)).unwrap();
    let ids: Vec<&str> = s.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["beta"]);
    assert_eq!(
        s.tenants[0].origin,
        tdir.join("beta.toml").display().to_string()
    );
    let gamma = |id: &str| id == "gamma";
    let err = load_only(&cfg.path, &env(&[]), Some(&gamma)).unwrap_err();
    assert_eq!(err.problems[0].tenant.as_deref(), Some("gamma"), "{err}");
    assert_eq!(
        (p.tenant.as_deref(), p.key.as_str()),
        (Some("gamma"), "page_size")
    );
    std::fs::write(
        tdir.join("gamma.toml"),
        format!("{}\nextra_key = 1\n", tenant_body("gamma")),
    )
    .unwrap();
    let p = load(&cfg.path, &env(&[])).unwrap_err().problems[0].clone();
    assert_eq!(p.origin, tdir.join("gamma.toml").display().to_string());
    assert_eq!(p.key, "extra_key");

    // Defined twice: refused.
    std::fs::write(tdir.join("gamma.toml"), tenant_body("gamma")).unwrap();
    std::fs::write(tdir.join("main-one.toml"), tenant_body("main-one")).unwrap();
    let err = load(&cfg.path, &env(&[])).unwrap_err();
    assert!(err.to_string().contains("also defined in"), "{err}");

    // A syntax error names the file.
    std::fs::remove_file(tdir.join("main-one.toml")).unwrap();
    std::fs::write(tdir.join("gamma.toml"), "client_id = \n").unwrap();
    let err = load(&cfg.path, &env(&[])).unwrap_err();
    assert!(err.to_string().contains("gamma.toml"), "{err}");
}

/// What placement does: reads its tenants from the main file, first whole (indexing it), then
/// through the index; a file changed since is read whole again, and indexed anew.
#[test]
fn placement_reads_its_tenants_through_the_main_files_index() {
    let body = ["alpha", "beta", "gamma"].map(good_tenant).concat();
    let cfg = write_config(&format!("[connector]\npage_size = 100\n{body}"));
    let wanted: std::collections::BTreeSet<String> = ["beta", "gamma"].map(String::from).into();
    let described = |s: &Settings| {
        s.tenants
            .iter()
            .map(|t| format!("{} {} {}", t.id, t.client_id, t.page_size))
            .collect::<Vec<_>>()
    };
    let (whole, index) = load_placed(&cfg.path, &env(&[]), &wanted, None).unwrap();
    assert_eq!(
        described(&whole),
        ["beta cid-beta 100", "gamma cid-gamma 100"]
    );
    let index = index.expect("a plain main file is indexed");
    let (read, kept) = load_placed(&cfg.path, &env(&[]), &wanted, Some(index.clone())).unwrap();
    assert_eq!(described(&read), described(&whole));
    assert!(
        std::sync::Arc::ptr_eq(&kept.unwrap(), &index),
        "the index was used, not made again"
    );
    // beta's client id is longer now: the index no longer fits, and the file is read whole.
    std::fs::write(
        &cfg.path,
        format!("[connector]\npage_size = 100\n{body}").replace("cid-beta", "cid-beta-2"),
    )
    .unwrap();
    let (changed, fresh) = load_placed(&cfg.path, &env(&[]), &wanted, Some(index.clone())).unwrap();
    assert_eq!(
        described(&changed),
        ["beta cid-beta-2 100", "gamma cid-gamma 100"]
    );
    assert!(!std::sync::Arc::ptr_eq(&fresh.unwrap(), &index));
    // A tenant no longer configured is simply not there (the caller counts).
    let more: std::collections::BTreeSet<String> = ["beta", "delta"].map(String::from).into();
    let (some, _) = load_placed(&cfg.path, &env(&[]), &more, Some(index)).unwrap();
    assert_eq!(described(&some), ["beta cid-beta-2 100"]);
}

#[test]
fn a_missing_file_or_broken_toml_is_a_clear_error() {
    let err = load(std::path::Path::new("/nope/wiz.toml"), &env(&[])).unwrap_err();
    assert!(err.to_string().contains("/nope/wiz.toml"));
    assert!(err.to_string().contains("--config"));
    let (r, path) = load_str("[connector\npage_size = 1", &env(&[]));
    let err = r.unwrap_err();
    assert!(err.to_string().contains(&path), "{err}");
    assert_eq!(err.problems[0].key, "(syntax)");
}

#[test]
fn secrets_never_appear_in_debug_display_or_serialized_settings() {
    let body = format!(
        "{}{}",
        good_tenant("a"),
        good_tenant("b").replace(SECRET, "${B_SECRET}")
    );
    let s = load_str(&body, &env(&[("B_SECRET", SECRET)])).0.unwrap();
    let debug = format!("{s:?} {:?}", s.tenants[0]);
    let json = serde_json::to_string_pretty(&s).unwrap();
    for out in [&debug, &json] {
        assert!(!out.contains(SECRET), "secret leaked: {out}");
        assert!(out.contains("REDACTED"));
    }
    assert!(json.contains("[REDACTED] (from ${B_SECRET})"), "{json}");
    // An error about a tenant does not echo its secret either.
    let bad = format!("{}page_size = 0\n", good_tenant("a"));
    let err = load_str(&bad, &env(&[])).0.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/wiz-connector.toml");
    let s = load(&path, &env(&[("ACME_WIZ_SECRET", SECRET)])).unwrap();
    assert_eq!(s.tenants.len(), 1);
    assert_eq!(s.sinks.len(), 2);
    assert_eq!(
        s.tenants[0].secret_source,
        SecretSource::Env("ACME_WIZ_SECRET".into())
    );
}

#[test]
fn the_cluster_section_is_checked_and_resolved() {
    let e = env(&[("HOSTNAME", "pod-7")]);
    let (r, _) = load_str(
        &format!(
            "[cluster]\nnats_url = \"nats://nats:4222\"\n{}",
            good_tenant("a")
        ),
        &e,
    );
    let c = r.unwrap().cluster.expect("cluster mode on");
    assert_eq!(c.nats_url, "nats://nats:4222");
    assert_eq!(c.heartbeat.0, std::time::Duration::from_secs(2));
    assert_eq!(c.failover_after.0, std::time::Duration::from_secs(10));
    assert!(!c.replica_id.is_empty(), "defaults to the host name");
    let (r, _) = load_str(&good_tenant("a"), &e);
    assert!(r.unwrap().cluster.is_none(), "no [cluster]: one process");

    let (_, _, key, message, _) = one_problem(
        &format!(
            "[cluster]\nnats_url = \"http://nats:4222\"\n{}",
            good_tenant("a")
        ),
        &e,
    );
    assert_eq!(key, "cluster.nats_url");
    assert!(message.contains("not a NATS URL"), "{message}");
    let (_, _, key, message, _) = one_problem(
        &format!(
            "[cluster]\nnats_url = \"nats://n:4222\"\nheartbeat = \"2s\"\nfailover_after = \"5s\"\n{}",
            good_tenant("a")
        ),
        &e,
    );
    assert_eq!(key, "cluster.failover_after");
    assert!(message.contains("at least three heartbeats"), "{message}");
    let (_, _, key, _, _) = one_problem(
        &format!(
            "[cluster]\nnats_url = \"nats://n:4222\"\nreplica_id = \"bad id!\"\n{}",
            good_tenant("a")
        ),
        &e,
    );
    assert_eq!(key, "cluster.replica_id");
    let (_, _, key, message, _) = one_problem(
        &format!(
            "[cluster]\nnats_url = \"nats://user:{SECRET}@n:4222\"\n{}",
            good_tenant("a")
        ),
        &e,
    );
    assert_eq!(key, "cluster.nats_url");
    assert!(
        message.contains("must not carry credentials") && !message.contains(SECRET),
        "{message}"
    );
    let (_, _, key, message, _) = one_problem(&format!("[cluster]\n{}", good_tenant("a")), &e);
    assert_eq!(key, "cluster.nats_url");
    assert!(message.contains("is required"), "{message}");
    let (r, _) = load_str(
        &format!(
            "[cluster]\nnats_url = \"nats://n:4222\"\nbogus = 1\n{}",
            good_tenant("a")
        ),
        &e,
    );
    assert!(r.unwrap_err().to_string().contains("bogus"));
}

#[test]
fn a_sink_format_is_native_ocsf_or_ecs_and_an_http_body_keeps_its_old_key() {
    let tenant = good_tenant("acme");
    let s = common::settings(&format!(
        "[sinks.a]\ntype = \"file\"\npath = \"a.jsonl\"\nformat = \"ocsf\"\n[sinks.b]\ntype = \"stdout\"\nformat = \"ecs\"\n[sinks.c]\ntype = \"stdout\"\n[sinks.d]\ntype = \"http\"\nurl = \"https://siem.example/in\"\nformat = \"json_array\"\n[sinks.e]\ntype = \"http\"\nurl = \"https://siem.example/in\"\nformat = \"ecs\"\nbody = \"json_array\"\n{tenant}"
    ));
    let format = |name: &str| {
        let spec = s.sinks.iter().find(|x| x.name == name).unwrap();
        serde_json::to_value(spec).unwrap()
    };
    assert_eq!(format("a")["format"], "ocsf");
    assert_eq!(format("b")["format"], "ecs");
    assert_eq!(format("c")["format"], "native");
    // `format = "json_array"` on an http sink is the body it always meant; the schema stays
    // native.
    assert_eq!(format("d")["format"], "native");
    assert_eq!(format("d")["json_array"], true);
    assert_eq!(format("e")["format"], "ecs");
    assert_eq!(format("e")["json_array"], true);

    let (r, _) = load_str(
        &format!("[sinks.a]\ntype = \"stdout\"\nformat = \"cef\"\n{tenant}"),
        &env(&[]),
    );
    let err = r.expect_err("an unknown format is refused").to_string();
    assert!(
        err.contains("sinks.a")
            && err.contains("unknown format \"cef\"; use \"native\", \"ocsf\" or \"ecs\""),
        "{err}"
    );
    let (r, _) = load_str(
        &format!("[sinks.a]\ntype = \"http\"\nurl = \"https://siem.example/in\"\nbody = \"xml\"\n{tenant}"),
        &env(&[]),
    );
    let err = r.expect_err("an unknown body is refused").to_string();
    assert!(
        err.contains("sinks.a.body") && err.contains("\"xml\""),
        "{err}"
    );
}

#[test]
fn a_splunk_hec_sink_is_checked_and_its_token_redacted() {
    let tenant = good_tenant("acme");
    // The index may hold placeholders, checked like any sink template.
    let labelled = format!("{tenant}labels = {{ customer = \"acme\" }}\n");
    let s = common::settings(&format!(
        "[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"https://splunk.example:8088\"\ntoken = \"hec-secret-1\"\nindex = \"wiz_{{label.customer}}\"\nack = true\n{labelled}"
    ));
    let spec = serde_json::to_value(&s.sinks[0]).unwrap();
    assert_eq!(spec["type"], "splunk_hec");
    assert_eq!(spec["sourcetype"], "wiz:{feed}");
    assert_eq!(spec["source"], "wiz-connector");
    assert_eq!(spec["gzip"], true);
    assert_eq!(spec["ack"], true);
    assert_eq!(spec["max_batch_bytes"], 1048576);
    assert!(!spec.to_string().contains("hec-secret-1"), "{spec}");
    for (body, want) in [
        ("url = \"splunk:8088\"\ntoken = \"t\"\n", "sinks.splunk.url"),
        ("url = \"https://s:8088\"\n", "sinks.splunk.token"),
        (
            "url = \"https://s:8088\"\ntoken = \"t\"\nmax_batch_bytes = 10\n",
            "sinks.splunk.max_batch_bytes",
        ),
        (
            "url = \"https://s:8088\"\ntoken = \"t\"\nack_timeout = \"0s\"\n",
            "sinks.splunk.ack_timeout",
        ),
    ] {
        let (r, _) = load_str(
            &format!("[sinks.splunk]\ntype = \"splunk_hec\"\n{body}{tenant}"),
            &env(&[]),
        );
        let err = r.expect_err(body).to_string();
        assert!(err.contains(want), "{want} in {err}");
    }
}
