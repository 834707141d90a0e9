//! The span queue and the exporter thread. Request threads append encoded spans to one
//! bounded buffer (a short lock, no allocation once it has grown); the exporter thread
//! takes the whole buffer every batch delay, or as soon as a batch is full, wraps it in an
//! `ExportTraceServiceRequest` and sends it over OTLP/HTTP or OTLP/gRPC. Past the queue's
//! bound spans are dropped and counted, never waited for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Protocol, Settings, otlp};

/// Spans per export request at most (the SDK's default too).
const MAX_BATCH: usize = 512;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans dropped because the queue was full, and exports that failed, since start.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
pub static FAILED_EXPORTS: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Pending {
    spans: Vec<u8>,
    count: usize,
    stop: bool,
}

/// Where finished spans wait for the exporter.
pub struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    max: usize,
    max_bytes: usize,
}

impl Queue {
    /// Queues one encoded span (from [`otlp::span`]); drops it when the queue is full.
    pub fn push(&self, span: &[u8]) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.count >= self.max || p.spans.len() + span.len() > self.max_bytes {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.spans.extend_from_slice(span);
        p.count += 1;
        if p.count == MAX_BATCH {
            self.wake.notify_one();
        }
    }
}

/// The running exporter; [`Exporter::stop`] sends what is queued and ends it.
pub struct Exporter {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    pub fn start(s: &Settings, resource: Vec<u8>) -> Result<(Arc<Queue>, Self), String> {
        let sender = Sender::new(s)?;
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            max: s.max_queue,
            max_bytes: s.max_queue_bytes,
        });
        let q = Arc::clone(&queue);
        let delay = s.batch_delay;
        let thread = std::thread::Builder::new()
            .name("sluice-otlp".into())
            .spawn(move || run(&q, delay, &resource, sender))
            .map_err(|e| format!("starting the OTLP exporter: {e}"))?;
        Ok((
            Arc::clone(&queue),
            Self {
                queue,
                thread: Some(thread),
            },
        ))
    }

    /// Sends what is queued and waits for the thread (each export is bounded in time).
    pub fn stop(&mut self) {
        self.queue
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.queue.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(queue: &Queue, delay: Duration, resource: &[u8], mut sender: Sender) {
    let mut batch = Vec::new();
    let mut failing = false;
    loop {
        let (count, stop) = {
            let guard = queue.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut p, _) = queue
                .wake
                .wait_timeout_while(guard, delay, |p| p.count < MAX_BATCH && !p.stop)
                .unwrap_or_else(PoisonError::into_inner);
            // The request threads get the (cleared) buffer that was sent last time, unless
            // a burst grew it: then a fresh one, so the peak is not kept for good.
            batch.clear();
            if batch.capacity() > 4 << 20 {
                batch = Vec::new();
            }
            std::mem::swap(&mut batch, &mut p.spans);
            (std::mem::take(&mut p.count), p.stop)
        };
        if count > 0 {
            let body = otlp::request(resource, &batch);
            match sender.send(body) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("OTLP export works again");
                }
                Ok(()) => {}
                Err(e) => {
                    FAILED_EXPORTS.fetch_add(1, Ordering::Relaxed);
                    // Once per failing stretch, not once per batch.
                    if !failing {
                        tracing::warn!(error = %e, spans = count, "OTLP export failed; spans are dropped until it works");
                    }
                    failing = true;
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Sends export requests, on the exporter thread's own single-threaded runtime.
struct Sender {
    rt: tokio::runtime::Runtime,
    to: Target,
}

enum Target {
    Http {
        uri: http::Uri,
        client: Box<Client<HttpConnector, Full<Bytes>>>,
    },
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
}

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Sender {
    fn new(s: &Settings) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("the OTLP exporter's runtime: {e}"))?;
        let to = match s.protocol {
            Protocol::HttpProtobuf => {
                let url = format!("{}/v1/traces", s.endpoint);
                let uri = url
                    .parse::<http::Uri>()
                    .map_err(|e| format!("OTLP endpoint {url}: {e}"))?;
                if uri.scheme_str() != Some("http") {
                    return Err(format!(
                        "OTLP endpoint {url}: OTLP/HTTP is sent over plain http:// (a collector \
                         beside the proxy); use OTEL_EXPORTER_OTLP_PROTOCOL=grpc for TLS"
                    ));
                }
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
                connector.set_nodelay(true);
                Target::Http {
                    uri,
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                }
            }
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(s.endpoint.clone())
                    .map_err(|e| format!("OTLP endpoint {}: {e}", s.endpoint))?
                    .timeout(EXPORT_TIMEOUT);
                if s.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                        .map_err(|e| format!("OTLP endpoint {}: {e}", s.endpoint))?;
                }
                // Connecting waits for the first export; the channel's worker lives on
                // this runtime.
                let _entered = rt.enter();
                Target::Grpc(tonic::client::Grpc::new(endpoint.connect_lazy()))
            }
        };
        Ok(Self { rt, to })
    }

    fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
        let Self { rt, to } = self;
        rt.block_on(async {
            match to {
                Target::Http { uri, client } => {
                    let req = http::Request::post(uri.clone())
                        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                        .body(Full::new(Bytes::from(body)))
                        .map_err(|e| e.to_string())?;
                    let exchange = async {
                        let answer = client.request(req).await.map_err(|e| e.to_string())?;
                        let status = answer.status();
                        // Read the answer so the connection is kept for the next batch.
                        let _ = answer.into_body().collect().await;
                        Ok::<_, String>(status)
                    };
                    let status = tokio::time::timeout(EXPORT_TIMEOUT, exchange)
                        .await
                        .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))??;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("the collector answered {status}"))
                    }
                }
                Target::Grpc(grpc) => {
                    grpc.ready().await.map_err(|e| e.to_string())?;
                    grpc.unary(
                        tonic::Request::new(Bytes::from(body)),
                        http::uri::PathAndQuery::from_static(GRPC_EXPORT),
                        RawCodec,
                    )
                    .await
                    .map(drop)
                    .map_err(|s| format!("the collector answered {:?}: {}", s.code(), s.message()))
                }
            }
        })
    }
}

/// A gRPC codec for messages that are already encoded: the request goes out as it is and
/// the answer (an `ExportTraceServiceResponse`, whose partial-success counts Sluice does
/// not act on) is skipped.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_queue_drops_past_its_span_count_and_its_bytes() {
        let q = Queue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            max: 3,
            max_bytes: 100,
        };
        let before = DROPPED.load(Ordering::Relaxed);
        q.push(&[1; 60]);
        // 60 + 60 is past 100 bytes: dropped.
        q.push(&[2; 60]);
        q.push(&[3; 30]);
        q.push(&[4; 5]);
        // A fourth span is past the count of 3, however small.
        q.push(&[5; 1]);
        let p = q.pending.lock().unwrap();
        assert_eq!((p.count, p.spans.len()), (3, 95));
        assert!(DROPPED.load(Ordering::Relaxed) >= before + 2);
    }
}
