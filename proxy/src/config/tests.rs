//! Tests of the configuration checker.
use super::*;

fn env() -> Environment {
    Environment {
        openai_base_url: Some("http://127.0.0.1:9/v1".into()),
        ..Environment::default()
    }
}

/// `toml`, parsed and checked; it must be valid.
fn compiled(toml: &str) -> Config {
    compile(parse_toml(toml).expect("toml"), &env()).expect("valid")
}

#[test]
fn compiling_never_resolves_names() {
    let c = compiled("");
    let p = &c.profiles["default"];
    assert_eq!(
        p.upstreams[&Provider::Openai].addr,
        Some("127.0.0.1:9".parse().expect("addr")),
        "an IP literal is the address"
    );
    assert_eq!(
        p.upstreams[&Provider::Anthropic].addr,
        None,
        "api.anthropic.com is looked up when a request needs it, not here"
    );
}

#[test]
fn empty_config_has_a_default_profile_with_all_providers() {
    let c = compiled("");
    let p = &c.profiles["default"];
    assert_eq!(p.upstreams.len(), 3);
    let o = &p.upstreams[&Provider::Openai];
    assert_eq!(
        (&*o.host, o.port, &*o.path_prefix, o.tls),
        ("127.0.0.1", 9, "/v1", false)
    );
    assert_eq!(
        &*p.upstreams[&Provider::Anthropic].host,
        "api.anthropic.com"
    );
}

#[test]
fn unknown_fields_and_reserved_names_are_refused() {
    assert!(parse_toml("[limits]\nmax_body = 1").is_err());
    let raw = parse_toml("[profiles.v1beta.openai]\n").expect("toml");
    let err = compile(raw, &env()).expect_err("reserved");
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn azure_style_entry_is_data() {
    let c = compiled(
        r#"[profiles.azure.openai]
base_url = "https://example.openai.azure.com/openai/deployments/gpt4o"
api_key = "k"
auth_header = "api-key"
query = { "api-version" = "2024-10-21" }
"#,
    );
    let u = &c.profiles["azure"].upstreams[&Provider::Openai];
    assert_eq!(&*u.auth_header, "api-key");
    assert_eq!(&*u.query, "api-version=2024-10-21");
    assert_eq!(format!("{:?}", u.api_key), "Some(Secret(***))");
}

#[test]
fn an_upstreams_headers_are_built_once_as_they_are_sent() {
    let c = compiled(
        r#"[profiles.a.openai]
base_url = "http://127.0.0.1:8081/v1"
api_key = "sk-test-1"
headers = { "OpenAI-Organization" = "org-1" }

[profiles.a.anthropic]
base_url = "https://api.anthropic.com"
api_key = "sk-ant-2"
"#,
    );
    let openai = &c.profiles["a"].upstreams[&Provider::Openai].wire;
    assert_eq!(openai.host, "127.0.0.1:8081");
    let (name, value) = openai.credential.as_ref().expect("a key");
    assert_eq!(
        (name.as_str(), value.to_str().ok()),
        ("authorization", Some("Bearer sk-test-1"))
    );
    assert!(value.is_sensitive());
    assert_eq!(
        openai
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().ok()))
            .collect::<Vec<_>>(),
        [("openai-organization", Some("org-1"))]
    );
    let anthropic = &c.profiles["a"].upstreams[&Provider::Anthropic].wire;
    assert_eq!(anthropic.host, "api.anthropic.com");
    let (name, value) = anthropic.credential.as_ref().expect("a key");
    assert_eq!(
        (name.as_str(), value.to_str().ok()),
        ("x-api-key", Some("sk-ant-2"))
    );
    let debug = format!("{:?}", c.profiles["a"].upstreams[&Provider::Anthropic]);
    assert!(!debug.contains("sk-ant-2"), "{debug}");
    assert!(
        c.profiles["a"].upstreams[&Provider::Gemini]
            .wire
            .credential
            .is_none()
    );
}

#[test]
fn a_key_no_header_can_carry_is_refused_without_repeating_it() {
    let raw = parse_toml("[profiles.a.openai]\napi_key = \"sk-line\\nbreak\"\n").expect("toml");
    let err = compile(raw, &env())
        .expect_err("a newline in a key")
        .to_string();
    assert!(
        err.contains("profiles.a.openai") && err.contains("api key"),
        "{err}"
    );
    assert!(!err.contains("sk-line"), "{err}");
    let raw =
        parse_toml("[profiles.a.openai]\nheaders = { \"bad name\" = \"v\" }\n").expect("toml");
    let err = compile(raw, &env())
        .expect_err("a space in a name")
        .to_string();
    assert!(err.contains("invalid header 'bad name'"), "{err}");
}

#[test]
fn bad_values_are_reported_with_their_path() {
    let raw = parse_toml("[limits]\nmax_request_body_bytes = 0").expect("toml");
    let err = compile(raw, &env()).expect_err("zero");
    assert!(err.to_string().contains("limits.max_request_body_bytes"));
    let raw = parse_toml("[profiles.a.openai]\nbase_url = \"ftp://x\"").expect("toml");
    assert!(compile(raw, &env()).is_err());
}

#[test]
fn unset_limits_are_left_out_of_a_written_snapshot() {
    // A proxy a release older refuses fields it does not know (`deny_unknown_fields`): a
    // newer control plane must not send the limits an admin never set.
    let unset = serde_json::to_value(RawLimits::default()).unwrap();
    assert_eq!(unset, serde_json::json!({}));
    let one = RawLimits {
        client_write_timeout_ms: Some(5000),
        ..RawLimits::default()
    };
    assert_eq!(
        serde_json::to_value(one).unwrap(),
        serde_json::json!({"client_write_timeout_ms": 5000})
    );
}

#[test]
fn the_upstream_write_timeout_is_its_own_limit() {
    let c = compiled("");
    assert_eq!(c.limits.upstream_write_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.upstream_idle_timeout, Duration::from_secs(300));
    let raw = parse_toml("[limits]\nupstream_write_timeout_ms = 2500").expect("toml");
    let c = compile(raw, &env()).expect("valid");
    assert_eq!(c.limits.upstream_write_timeout, Duration::from_millis(2500));
    let raw = parse_toml("[limits]\nupstream_write_timeout_ms = 0").expect("toml");
    let err = compile(raw, &env()).expect_err("zero");
    assert!(err.to_string().contains("limits.upstream_write_timeout_ms"));
}
