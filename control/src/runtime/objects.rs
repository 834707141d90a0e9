//! The Kubernetes objects that run one catalogue MCP server: pure functions from the
//! server's document and the runtime's settings to a Secret, a Deployment, a Service and a
//! NetworkPolicy, each carrying the hash of its own content so that an unchanged server is
//! never written (and its pods never restarted).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, KeyToPath, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretEnvSource,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::documents::{McpServerBody, McpTransport};

/// Label every object Sluice manages carries (with [`NAME_LABEL`]): what garbage
/// collection lists.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice");
/// The component label.
pub const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "sluice-mcp-server");
/// Which server an object belongs to (its object name).
pub const SERVER_LABEL: &str = "sluice.dev/mcp-server";
/// The SHA-256 of the object as Sluice wrote it.
pub const SPEC_HASH: &str = "sluice.dev/spec-hash";
/// On the pod template: the hash of the Secret, so a changed environment rolls the pods.
pub const CONFIG_HASH: &str = "sluice.dev/config-hash";
/// On the pod template: set by a restart request.
pub const RESTARTED_AT: &str = "sluice.dev/restarted-at";
/// The server's name as the catalogue spells it.
pub const SERVER_NAME: &str = "sluice.dev/mcp-server-name";
/// Where the stdio bridge's config is mounted.
const BRIDGE_DIR: &str = "/etc/sluice-bridge";
/// Where the init container puts the `sluice` binary for the bridge.
const BRIDGE_BIN_DIR: &str = "/opt/sluice";
/// The bridge's profile: the server is reached at `/v1/mcp/bridge`.
const BRIDGE_PROFILE: &str = "bridge";
/// Port the bridge listens on.
const BRIDGE_PORT: u16 = 8080;

/// How the runtime lays servers out in the cluster.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Namespace the servers run in.
    pub namespace: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// An image holding the `sluice` binary at `/usr/local/bin/sluice` (and `cp`): the init
    /// container that installs the stdio bridge.
    pub bridge_image: String,
    /// Labels of the proxies' pods: the only pods a server accepts connections from.
    pub proxy_pod_labels: BTreeMap<String, String>,
    /// The proxies' namespace, when it is not `namespace`.
    pub proxy_namespace: Option<String>,
    /// CPU request of a server's container.
    pub cpu_request: String,
    /// Memory request of a server's container.
    pub memory_request: String,
    /// Memory limit of a server's container.
    pub memory_limit: String,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            namespace: "sluice-mcp".into(),
            cluster_domain: "cluster.local".into(),
            bridge_image: format!(
                "ghcr.io/sluice-gateway/sluice:{}",
                env!("CARGO_PKG_VERSION")
            ),
            proxy_pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "sluice-proxy".to_owned(),
            )]),
            proxy_namespace: None,
            cpu_request: "50m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
        }
    }
}

/// Everything the cluster runs for one server.
#[derive(Debug, Clone)]
pub struct ServerObjects {
    /// The object name shared by all four (`sluice-mcp-…`).
    pub name: String,
    /// Its environment (HTTP servers) or the bridge's config (stdio servers).
    pub secret: Secret,
    /// One replica of the server.
    pub deployment: Deployment,
    /// Where the proxies reach it.
    pub service: Service,
    /// Ingress from the proxies only; egress to DNS and the server's `egress` ranges.
    pub network_policy: NetworkPolicy,
    /// The URL proxies use.
    pub url: String,
}

/// Whether the runtime runs this server: it has an image and no URL of its own.
pub fn is_managed(server: &McpServerBody) -> bool {
    server.image.is_some() && server.url.is_none()
}

/// A DNS-1123 label for the server: `sluice-mcp-<name>`, with a hash suffix when the
/// name had to change or be shortened, so two servers never share objects.
pub fn object_name(server_name: &str) -> String {
    let cleaned: String = server_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let mut name = format!("sluice-mcp-{cleaned}");
    if cleaned != server_name || name.len() > 63 {
        let digest = hex::encode(Sha256::digest(server_name.as_bytes()));
        name.truncate(63 - 9);
        let trimmed = name.trim_end_matches('-').len();
        name.truncate(trimmed);
        name.push('-');
        name.push_str(&digest[..8]);
    }
    name
}

/// The in-cluster URL proxies use to reach a managed server.
pub fn server_url(server: &McpServerBody, s: &RuntimeSettings) -> String {
    let (port, path) = listen_of(server);
    format!(
        "http://{}.{}.svc.{}:{port}{path}",
        object_name(&server.name),
        s.namespace,
        s.cluster_domain
    )
}

fn is_stdio(server: &McpServerBody) -> bool {
    matches!(server.transport, McpTransport::Stdio)
}

fn listen_of(server: &McpServerBody) -> (u16, String) {
    if is_stdio(server) {
        (BRIDGE_PORT, format!("/v1/mcp/{BRIDGE_PROFILE}"))
    } else {
        (
            server.port.unwrap_or(8080),
            server.path.clone().unwrap_or_else(|| "/mcp".into()),
        )
    }
}

fn hash_of<T: Serialize>(value: &T) -> String {
    // k8s-openapi structs serialise in declaration order and maps are ordered: the same
    // object always gives the same bytes.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The `sluice proxy` config that serves a stdio server over Streamable HTTP inside its pod:
/// one unprefixed server in one profile, no keys (the NetworkPolicy admits only the
/// proxies), every policy left to the proxies in front.
pub fn bridge_config(server: &McpServerBody) -> Result<String, String> {
    use sluice_proxy::config::{RawConfig, RawMcpServer, RawProfile};
    let mut raw = RawConfig {
        listen: Some(format!("0.0.0.0:{BRIDGE_PORT}")),
        ..Default::default()
    };
    raw.mcp_servers.insert(
        server.name.clone(),
        RawMcpServer {
            command: server.command.clone(),
            env: server.env.clone(),
            prefix: Some(false),
            ..Default::default()
        },
    );
    raw.profiles.insert(
        BRIDGE_PROFILE.into(),
        RawProfile {
            mcp_servers: vec![server.name.clone()],
            ..Default::default()
        },
    );
    toml::to_string(&raw).map_err(|e| format!("cannot write the bridge config: {e}"))
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (NAME_LABEL.0.to_owned(), NAME_LABEL.1.to_owned()),
        (SERVER_LABEL.to_owned(), name.to_owned()),
    ])
}

fn meta(name: &str, server: &McpServerBody, s: &RuntimeSettings) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(s.namespace.clone()),
        labels: Some(labels(name)),
        annotations: Some(BTreeMap::from([(
            SERVER_NAME.to_owned(),
            server.name.clone(),
        )])),
        ..Default::default()
    }
}

fn stamp(meta: &mut ObjectMeta, hash: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH.to_owned(), hash);
}

/// The four objects for `server` (which [`is_managed`]).
pub fn build(server: &McpServerBody, s: &RuntimeSettings) -> Result<ServerObjects, String> {
    let name = object_name(&server.name);
    let image = server
        .image
        .clone()
        .ok_or_else(|| format!("MCP server '{}' has no image", server.name))?;
    let (port, _) = listen_of(server);

    let data: BTreeMap<String, ByteString> = if is_stdio(server) {
        BTreeMap::from([(
            "bridge.toml".to_owned(),
            ByteString(bridge_config(server)?.into_bytes()),
        )])
    } else {
        server
            .env
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect()
    };
    let mut secret = Secret {
        metadata: meta(&name, server, s),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let secret_hash = hash_of(&secret);
    stamp(&mut secret.metadata, secret_hash.clone());

    let mut deployment = Deployment {
        metadata: meta(&name, server, s),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(SERVER_LABEL.to_owned(), name.clone())])),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: pod_template(server, s, &name, image, port, secret_hash),
            ..Default::default()
        }),
        ..Default::default()
    };
    let h = hash_of(&deployment);
    stamp(&mut deployment.metadata, h);

    let mut service = Service {
        metadata: meta(&name, server, s),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(SERVER_LABEL.to_owned(), name.clone())])),
            ports: Some(vec![ServicePort {
                name: Some("mcp".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let h = hash_of(&service);
    stamp(&mut service.metadata, h);

    let mut network_policy = NetworkPolicy {
        metadata: meta(&name, server, s),
        spec: Some(network_policy_spec(server, s, &name, port)),
    };
    let h = hash_of(&network_policy);
    stamp(&mut network_policy.metadata, h);

    Ok(ServerObjects {
        url: server_url(server, s),
        name,
        secret,
        deployment,
        service,
        network_policy,
    })
}

fn pod_template(
    server: &McpServerBody,
    s: &RuntimeSettings,
    name: &str,
    image: String,
    port: u16,
    secret_hash: String,
) -> PodTemplateSpec {
    let stdio = is_stdio(server);
    let mut container = Container {
        name: "server".into(),
        image: Some(image),
        ports: Some(vec![ContainerPort {
            name: Some("mcp".into()),
            container_port: i32::from(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity(s.cpu_request.clone())),
                ("memory".to_owned(), Quantity(s.memory_request.clone())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity(s.memory_limit.clone()),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = Vec::new();
    let mut init_containers = Vec::new();
    if stdio {
        // The image's own entrypoint is replaced by the bridge, which starts `command`.
        container.command = Some(vec![
            format!("{BRIDGE_BIN_DIR}/sluice"),
            "proxy".into(),
            "--config".into(),
            format!("{BRIDGE_DIR}/bridge.toml"),
        ]);
        container.volume_mounts = Some(vec![
            VolumeMount {
                name: "sluice-bin".into(),
                mount_path: BRIDGE_BIN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "bridge-config".into(),
                mount_path: BRIDGE_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]);
        init_containers.push(Container {
            name: "install-bridge".into(),
            image: Some(s.bridge_image.clone()),
            command: Some(vec![
                "cp".into(),
                "/usr/local/bin/sluice".into(),
                format!("{BRIDGE_BIN_DIR}/sluice"),
            ]),
            volume_mounts: Some(vec![VolumeMount {
                name: "sluice-bin".into(),
                mount_path: BRIDGE_BIN_DIR.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "sluice-bin".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "bridge-config".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.to_owned()),
                items: Some(vec![KeyToPath {
                    key: "bridge.toml".into(),
                    path: "bridge.toml".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    } else {
        if !server.command.is_empty() {
            container.command = Some(server.command.clone());
        }
        container.env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(name)),
            annotations: Some(BTreeMap::from([(CONFIG_HASH.to_owned(), secret_hash)])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            volumes: (!volumes.is_empty()).then_some(volumes),
            // MCP servers have no business with the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn network_policy_spec(
    server: &McpServerBody,
    s: &RuntimeSettings,
    name: &str,
    port: u16,
) -> NetworkPolicySpec {
    let from = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(s.proxy_pod_labels.clone()),
            ..Default::default()
        }),
        namespace_selector: s.proxy_namespace.as_ref().map(|ns| LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                ns.clone(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut egress = vec![NetworkPolicyEgressRule {
        // Name resolution, wherever the cluster's DNS runs.
        ports: Some(vec![
            NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            tcp(53),
        ]),
        ..Default::default()
    }];
    if !server.egress.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(
                server
                    .egress
                    .iter()
                    .map(|cidr| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: cidr.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
    }
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(SERVER_LABEL.to_owned(), name.to_owned())])),
            ..Default::default()
        }),
        policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
        ingress: Some(vec![NetworkPolicyIngressRule {
            from: Some(vec![from]),
            ports: Some(vec![tcp(i32::from(port))]),
        }]),
        egress: Some(egress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_labels_and_distinct() {
        assert_eq!(object_name("github"), "sluice-mcp-github");
        let a = object_name("My_Server");
        let b = object_name("my-server");
        assert_ne!(a, b);
        let long = object_name(&"x".repeat(100));
        for n in [&a, &b, &long] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(!n.ends_with('-'));
        }
    }
}
