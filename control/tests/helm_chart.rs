//! The Helm chart (helm/sluice), rendered like `helm template` by scripts/helm_render.sh (Go's
//! text/template + sprig + the values schema, since Helm cannot be installed here). Every
//! manifest must deserialize into its k8s-openapi type *and* serialize back to the same JSON,
//! so a misspelt or misplaced field fails; then the wiring between the objects is checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::Value;

const KEYS: &str = r#"secrets:
  masterKey: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  adminKey: "sluice-admin-0123456789abcdef-0123456789abcdef0123456789abcdef0123456789abcdef"
  proxyKey: "sluice-admin-fedcba9876543210-0123456789abcdef0123456789abcdef0123456789abcdef"
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Renders the chart with `values` (YAML) over the defaults; Err is the renderer's message.
fn render(values: &str, notes: bool) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let mut cmd = Command::new("bash");
    cmd.current_dir(root())
        .arg("scripts/helm_render.sh")
        .args([
            "-chart",
            "helm/sluice",
            "-name",
            "gw",
            "-namespace",
            "ai",
            "-f",
        ])
        .arg(&file);
    if notes {
        cmd.arg("-notes");
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Typed round trip: what the type does not know is lost, and the comparison sees it.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not deserialize: {e}\n{doc:#}", doc["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, doc,
        "{} {} has fields its type does not know",
        doc["kind"], doc["metadata"]["name"]
    );
    t
}

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    hpas: Vec<HorizontalPodAutoscaler>,
    pdbs: Vec<PodDisruptionBudget>,
    pvcs: Vec<PersistentVolumeClaim>,
    monitors: Vec<Value>,
}

fn manifests(yaml: &str) -> Manifests {
    let mut m = Manifests::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
        if v.is_null() {
            continue;
        }
        match v["kind"].as_str().unwrap() {
            "Deployment" => m.deployments.push(typed(&v)),
            "Service" => m.services.push(typed(&v)),
            "ConfigMap" => m.config_maps.push(typed(&v)),
            "Secret" => m.secrets.push(typed(&v)),
            "HorizontalPodAutoscaler" => m.hpas.push(typed(&v)),
            "PodDisruptionBudget" => m.pdbs.push(typed(&v)),
            "PersistentVolumeClaim" => m.pvcs.push(typed(&v)),
            "ServiceMonitor" => m.monitors.push(v),
            other => panic!("unexpected kind {other}"),
        }
    }
    m
}

fn deployment<'a>(m: &'a Manifests, name: &str) -> &'a Deployment {
    m.deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no deployment {name}"))
}

/// The pod spec of a deployment.
fn pod(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn service<'a>(m: &'a Manifests, name: &str) -> &'a Service {
    m.services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// Each Service selects its Deployment's pods and names container ports that exist.
fn service_matches(s: &Service, d: &Deployment) {
    let sel = s.spec.as_ref().unwrap().selector.as_ref().unwrap();
    let tpl = &d.spec.as_ref().unwrap().template;
    let labels = tpl.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in sel {
        assert_eq!(labels.get(k), Some(v), "{k} of {:?}", s.metadata.name);
    }
    let ports: Vec<_> = tpl.spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    for p in s.spec.as_ref().unwrap().ports.iter().flatten() {
        let target = serde_json::to_value(p.target_port.as_ref().unwrap()).unwrap();
        assert!(
            ports.iter().any(|n| Value::String(n.clone()) == target),
            "{target} is no container port of {:?}",
            d.metadata.name
        );
    }
}

fn arg<'a>(d: &'a Deployment, prefix: &str) -> &'a str {
    pod(d).containers[0]
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} argument"))
}

/// Every secretKeyRef names a key of the rendered Secret.
fn secret_refs_resolve(m: &Manifests) {
    let secret = &m.secrets[0];
    let keys = secret.string_data.as_ref().unwrap();
    for d in &m.deployments {
        let c = &pod(d).containers[0];
        for e in c.env.iter().flatten() {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                assert_eq!(r.name, secret.metadata.name.clone().unwrap());
                assert!(keys.contains_key(&r.key), "{} is not in the Secret", r.key);
            }
        }
    }
}

#[test]
fn the_default_chart_renders_valid_wired_manifests() {
    let m = manifests(&render(KEYS, false).unwrap());
    let proxy = deployment(&m, "gw-sluice-proxy");
    let control = deployment(&m, "gw-sluice-control");
    service_matches(service(&m, "gw-sluice-proxy"), proxy);
    service_matches(service(&m, "gw-sluice-control"), control);
    secret_refs_resolve(&m);

    // Proxies: readiness from /readyz, a drain as long as the grace period, spread out.
    let spec = proxy.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let grace: i64 = arg(proxy, "--grace-period-secs=").parse().unwrap();
    let pre_stop = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
    let pause = pre_stop.sleep.as_ref().unwrap().seconds;
    assert!(pod.termination_grace_period_seconds.unwrap() > grace + pause);
    assert!(
        pod.affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .is_some()
    );
    let strategy = spec
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&strategy.max_unavailable).unwrap(),
        serde_json::json!(0)
    );
    // The proxy finds the control plane through the ConfigMap, at its Service.
    let env = m.config_maps[0].data.as_ref().unwrap();
    let control_port = service(&m, "gw-sluice-control")
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0]
        .port;
    assert_eq!(
        env["SLUICE_CONTROL_URL"],
        format!("http://gw-sluice-control:{control_port}")
    );
    // The PodDisruptionBudget keeps a proxy up and selects the proxy pods.
    let pdb = m.pdbs[0].spec.as_ref().unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in pdb
        .selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap()
    {
        assert_eq!(pod_labels.get(k), Some(v));
    }
    // Without a database URL: SQLite on a claim, one control replica, replaced not rolled.
    let cspec = control.spec.as_ref().unwrap();
    assert_eq!(cspec.replicas, Some(1));
    assert_eq!(
        cspec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
    assert_eq!(m.pvcs.len(), 1);
    assert!(m.hpas.is_empty() && m.monitors.is_empty());
}

#[test]
fn postgres_autoscaling_and_monitoring_render_when_asked() {
    let values = format!(
        "{KEYS}  databaseUrl: \"postgres://sluice:pw@db:5432/sluice\"\n\
         proxy:\n  autoscaling: {{enabled: true, minReplicas: 3, maxReplicas: 12}}\n  antiAffinity: hard\n\
         control:\n  replicas: 2\n\
         serviceMonitor: {{enabled: true, labels: {{release: prom}}}}\n\
         extraEnv: {{SLUICE_LOG: debug, OTEL_EXPORTER_OTLP_ENDPOINT: \"http://otel:4318\"}}\n"
    );
    let m = manifests(&render(&values, false).unwrap());
    let proxy = deployment(&m, "gw-sluice-proxy");
    assert_eq!(
        proxy.spec.as_ref().unwrap().replicas,
        None,
        "the HPA owns the count"
    );
    let hpa = m.hpas[0].spec.as_ref().unwrap();
    assert_eq!(hpa.scale_target_ref.name, "gw-sluice-proxy");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 12));
    assert!(
        pod(proxy)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .is_some()
    );
    let control = deployment(&m, "gw-sluice-control");
    assert_eq!(control.spec.as_ref().unwrap().replicas, Some(2));
    assert!(m.pvcs.is_empty(), "no claim with PostgreSQL");
    secret_refs_resolve(&m);
    assert!(
        m.secrets[0]
            .string_data
            .as_ref()
            .unwrap()
            .contains_key("SLUICE_DATABASE_URL")
    );
    assert_eq!(
        m.config_maps[0].data.as_ref().unwrap()["SLUICE_LOG"],
        "debug"
    );
    assert_eq!(m.monitors.len(), 2);
    for mon in &m.monitors {
        assert_eq!(mon["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(mon["metadata"]["labels"]["release"], "prom");
        assert_eq!(mon["spec"]["endpoints"][0]["port"], "metrics");
        let component = mon["metadata"]["name"]
            .as_str()
            .unwrap()
            .trim_start_matches("gw-sluice-");
        let svc = service(&m, &format!("gw-sluice-{component}"));
        let labels = svc.metadata.labels.as_ref().unwrap();
        for (k, v) in mon["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
        }
        assert!(
            svc.spec
                .as_ref()
                .unwrap()
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("metrics"))
        );
    }
    let notes = render(&values, true).unwrap();
    assert!(
        notes.contains("gw-sluice-proxy.ai.svc:8080/v1/openai"),
        "{notes}"
    );
    assert!(!notes.contains("SQLite"));
}

#[test]
fn bad_values_are_refused_with_the_field_named() {
    // Missing secrets.
    let e = render("{}", false).unwrap_err();
    assert!(e.contains("secrets.masterKey is required"), "{e}");
    // Schema: wrong types, unknown keys, malformed keys.
    for (values, field) in [
        (format!("{KEYS}proxy: {{replicas: three}}\n"), "replicas"),
        (
            format!("{KEYS}proxy: {{antiAffinity: sometimes}}\n"),
            "antiAffinity",
        ),
        (format!("{KEYS}proxi: {{}}\n"), "proxi"),
        ("secrets: {masterKey: short}\n".to_owned(), "masterKey"),
    ] {
        let e = render(&values, false).unwrap_err();
        assert!(e.contains("schema") && e.contains(field), "{field}: {e}");
    }
    // An existing Secret replaces the generated one.
    let m = manifests(
        &render(
            "secrets: {existingSecret: sluice-keys, databaseUrl: \"\"}\n",
            false,
        )
        .unwrap(),
    );
    assert!(m.secrets.is_empty());
    let c = &pod(deployment(&m, "gw-sluice-proxy")).containers[0];
    let refs: Vec<_> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .map(|r| r.name.clone())
        .collect();
    assert!(!refs.is_empty() && refs.iter().all(|n| n == "sluice-keys"));
}
