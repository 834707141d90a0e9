//! Tracing settings, from the environment.

use std::time::Duration;

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies, to `<endpoint>/v1/traces`.
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// Tracing settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's base URL (`http://collector:4318`, or `:4317` for gRPC).
    pub endpoint: String,
    /// How to send.
    pub protocol: Protocol,
    /// Share of new traces recorded (a client's sampled flag is followed).
    pub sample_ratio: f64,
    /// How long spans wait to be sent in a batch.
    pub batch_delay: Duration,
    /// Spans queued at most (more are dropped, not waited for).
    pub max_queue: usize,
    /// Bytes of encoded spans queued at most (captured content makes spans large).
    pub max_queue_bytes: usize,
    /// `service.name`.
    pub service_name: String,
    /// More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Bytes of captured content (profiles with content capture on) kept per attribute;
    /// 0 keeps content out of spans altogether.
    pub content_max_bytes: usize,
}

impl Settings {
    /// `SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT`, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (none: tracing off); `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
    /// `grpc`); `SLUICE_OTEL_SAMPLE_RATIO` (0-1, default 1); `SLUICE_OTEL_BATCH_DELAY_MS`
    /// (default 1000); `SLUICE_OTEL_MAX_QUEUE` (default 8192); `SLUICE_OTEL_MAX_QUEUE_BYTES`
    /// (default 64 MiB); `OTEL_SERVICE_NAME` (else
    /// `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, else `sluice`);
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,…`, values percent-encoded);
    /// `SLUICE_OTEL_CONTENT_MAX_BYTES` (default 4096; 0: no content in spans).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let Some(endpoint) = get("SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.trim().is_empty())
        else {
            return Ok(None);
        };
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL is {other:?}; Sluice sends http/protobuf or grpc"
                ));
            }
        };
        let number = |name: &str, default: f64| -> Result<f64, String> {
            get(name).map_or(Ok(default), |v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name} must be a number, not {v:?}"))
            })
        };
        let sample_ratio = number("SLUICE_OTEL_SAMPLE_RATIO", 1.0)?;
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err("SLUICE_OTEL_SAMPLE_RATIO must be between 0 and 1".into());
        }
        let delay = number("SLUICE_OTEL_BATCH_DELAY_MS", 1000.0)?;
        let queue = number("SLUICE_OTEL_MAX_QUEUE", 8192.0)?;
        let queue_bytes = number("SLUICE_OTEL_MAX_QUEUE_BYTES", 67_108_864.0)?;
        if !(65_536.0..=4_294_967_296.0).contains(&queue_bytes) {
            return Err("SLUICE_OTEL_MAX_QUEUE_BYTES must be 65536-4294967296".into());
        }
        let content = number("SLUICE_OTEL_CONTENT_MAX_BYTES", 4096.0)?;
        if !(0.0..=1_048_576.0).contains(&content) {
            return Err("SLUICE_OTEL_CONTENT_MAX_BYTES must be 0-1048576".into());
        }
        if !(1.0..=600_000.0).contains(&delay) || !(1.0..=1_048_576.0).contains(&queue) {
            return Err(
                "SLUICE_OTEL_BATCH_DELAY_MS must be 1-600000 and SLUICE_OTEL_MAX_QUEUE 1-1048576"
                    .into(),
            );
        }
        let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => parse_resource_attributes(&v)?,
            None => Vec::new(),
        };
        Ok(Some(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_owned(),
            protocol,
            sample_ratio,
            batch_delay: Duration::from_millis(delay as u64),
            max_queue: queue as usize,
            max_queue_bytes: queue_bytes as usize,
            service_name: get("OTEL_SERVICE_NAME")
                .filter(|n| !n.trim().is_empty())
                .or_else(|| {
                    resource_attributes
                        .iter()
                        .find(|(k, _)| k == "service.name")
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_else(|| "sluice".into()),
            resource_attributes,
            content_max_bytes: content as usize,
        }))
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values
/// percent-encoded (the OpenTelemetry environment specification).
fn parse_resource_attributes(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!(
                "OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"
            ));
        };
        let mut bytes = Vec::with_capacity(val.len());
        let raw = val.trim().as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
            match (raw[i], hex) {
                (b'%', Some(b)) => {
                    bytes.push(b);
                    i += 3;
                }
                (c, _) => {
                    bytes.push(c);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(bytes)
            .map_err(|_| format!("OTEL_RESOURCE_ATTRIBUTES: {k:?} is not UTF-8 once decoded"))?;
        out.push((k.trim().to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(Settings::from_env(env(&[])).unwrap().is_none());
        let s = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("SLUICE_OTEL_SAMPLE_RATIO", "0.25"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol, s.sample_ratio),
            ("http://c:4318", Protocol::HttpProtobuf, 0.25)
        );
        assert_eq!(s.content_max_bytes, 4096);
        assert_eq!(s.max_queue_bytes, 64 << 20);
        let s = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("SLUICE_OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        let s = Settings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=billing, k8s.pod.name=p%2C1 ,empty=",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.service_name, "billing");
        assert_eq!(
            s.resource_attributes,
            vec![
                ("service.name".to_owned(), "billing".to_owned()),
                ("k8s.pod.name".to_owned(), "p,1".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        for bad in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("SLUICE_OTEL_SAMPLE_RATIO", "2"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("SLUICE_OTEL_CONTENT_MAX_BYTES", "-1"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_RESOURCE_ATTRIBUTES", "a=1,justakey"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("SLUICE_OTEL_MAX_QUEUE_BYTES", "1024"),
            ][..],
        ] {
            let pairs: &'static [(&'static str, &'static str)] = bad;
            assert!(Settings::from_env(env(pairs)).is_err());
        }
    }
}
