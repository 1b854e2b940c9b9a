//! Traces and structured logs of real processes: an OTLP/gRPC receiver inside the test
//! (`opentelemetry-proto`'s `TraceService`, served with tonic) gets the spans of a coordinator and
//! a client process, which must share one trace per task; and `--log-format json` lines parse as
//! JSON and carry the span fields.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::Value;

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// The OTLP receiver: keeps every span it is sent.
#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Received {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        attributes: attrs(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port of a runtime of its own; its URL.
fn start_receiver(rt: &tokio::runtime::Runtime, receiver: Receiver) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let incoming = accepted(listener);
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// The accepted connections of `listener`, as the stream tonic serves.
fn accepted(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await.map(|(s, _)| s);
            if tx.send(accepted).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A 2-client job of `rounds` rounds on digits, quick to run.
fn job_spec(rounds: u64) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace("clients_per_round = 10", "clients_per_round = 2")
        .replace("min_clients = 10", "min_clients = 2")
}

/// `flotilla client` on digits part `i/2`, with extra environment and arguments.
fn spawn_client(f: &mut Federation, i: usize, token: &str, env: &[(&str, &str)], args: &[&str]) {
    let name = format!("client-{i}");
    let child = Command::new(bin())
        .args([
            "client",
            "--coordinator",
            &format!("https://127.0.0.1:{}", f.grpc),
        ])
        .args(["--ca-cert", &f.ca(), "--token", token])
        .arg("--state-dir")
        .arg(f.dir.join(&name))
        .args(["--dataset", "digits", "--partition", &format!("{i}/2")])
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(f.dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    f.clients.0.push(child);
}

/// SIGTERM to every process, then waits for each to exit (the graceful path that flushes spans).
fn stop_gracefully(procs: &mut Procs) {
    for c in &procs.0 {
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {}", c.id());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &mut procs.0 {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(status.success(), "process exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "process {} did not stop", c.id());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn one_trace_holds_a_client_task_and_the_coordinator_calls_it_made() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let url = start_receiver(&rt, receiver.clone());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("RUST_LOG", "info"),
    ];
    let mut f = Federation::with_server("otlp", None, &[], &env);
    let token = f.last_line(&["enroll-token", "create", "--uses", "2", "--expires", "1h"]);
    for i in 0..2 {
        spawn_client(&mut f, i, &token, &env, &[]);
    }
    let job = f.submit(&job_spec(2));
    f.wait_for(&job, "2 rounds", Duration::from_secs(180), completed);
    stop_gracefully(&mut f.clients);
    stop_gracefully(&mut f.server);

    let spans = receiver.0.lock().unwrap().clone();
    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert!(
        services.contains("flotilla-coordinator") && services.contains("flotilla-client"),
        "spans from both processes: {services:?}; logs in {}",
        f.dir.display()
    );
    let client_spans: HashMap<&[u8], &Received> = spans
        .iter()
        .filter(|s| s.service == "flotilla-client")
        .map(|s| (s.span_id.as_slice(), s))
        .collect();
    // A task of this job: its trace holds the coordinator's UploadUpdate span, whose parent is a
    // span of the client (the `upload` span under the task).
    let tasks: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.service == "flotilla-client"
                && s.name == "task"
                && s.attributes.get("job") == Some(&job)
                && s.attributes.get("outcome").map(String::as_str) == Some("done")
        })
        .collect();
    assert!(
        tasks.len() >= 4,
        "2 clients × 2 rounds of finished tasks: {tasks:#?}"
    );
    for task in tasks {
        let in_trace: Vec<&Received> = spans
            .iter()
            .filter(|s| s.trace_id == task.trace_id)
            .collect();
        let upload = in_trace
            .iter()
            .find(|s| {
                s.service == "flotilla-coordinator"
                    && s.name == "flotilla.v1.Coordinator/UploadUpdate"
            })
            .unwrap_or_else(|| {
                panic!("no coordinator upload span in the task's trace: {in_trace:#?}")
            });
        assert_eq!(upload.attributes["rpc"], "UploadUpdate");
        assert_eq!(upload.attributes["job"], job);
        assert_eq!(upload.attributes["round"], task.attributes["round"]);
        let parent = client_spans
            .get(upload.parent.as_slice())
            .unwrap_or_else(|| panic!("the upload span's parent is no client span: {upload:#?}"));
        assert_eq!(parent.name, "upload");
        assert_eq!(parent.parent, task.span_id, "upload is a child of the task");
        // The check-in that brought the task is in the same trace, on both sides.
        assert!(
            in_trace.iter().any(|s| s.service == "flotilla-coordinator"
                && s.name == "flotilla.v1.Coordinator/CheckIn"),
            "check-in in the task's trace: {in_trace:#?}"
        );
    }
    // The coordinator's round attempts: one committed attempt per round.
    let committed = spans
        .iter()
        .filter(|s| {
            s.name == "round_attempt"
                && s.attributes.get("job") == Some(&job)
                && s.attributes.get("outcome").map(String::as_str) == Some("committed")
        })
        .count();
    assert_eq!(committed, 2, "one committed round_attempt span per round");
}

#[test]
fn json_logs_parse_and_carry_span_fields() {
    let env = [("RUST_LOG", "info")];
    let mut f = Federation::with_server("jsonlog", None, &["--log-format", "json"], &env);
    let token = f.last_line(&["enroll-token", "create", "--uses", "2", "--expires", "1h"]);
    for i in 0..2 {
        spawn_client(&mut f, i, &token, &env, &["--log-format", "json"]);
    }
    let job = f.submit(&job_spec(1));
    f.wait_for(&job, "1 round", Duration::from_secs(180), completed);
    stop_gracefully(&mut f.clients);
    stop_gracefully(&mut f.server);
    for log in ["server-0.log", "client-0.log"] {
        let text = std::fs::read_to_string(f.dir.join(log)).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{log}: {e}: {l}")))
            .collect();
        assert!(!lines.is_empty(), "{log} is empty");
        for l in &lines {
            assert!(
                l["level"].is_string() && l["fields"].is_object(),
                "{log}: {l}"
            );
        }
        // The job id, as an event field or a field of an enclosing span.
        let carries_job = |l: &Value| {
            l["fields"]["job"].to_string().trim_matches('"') == job
                || l["spans"].as_array().is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|s| s["job"].to_string().trim_matches('"') == job)
                })
        };
        assert!(
            lines.iter().any(carries_job),
            "{log}: no line carries job {job}:\n{text}"
        );
    }
    // A client's line inside its task names the task's span with its fields.
    let client = std::fs::read_to_string(f.dir.join("client-0.log")).unwrap();
    assert!(
        client.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["span"]["name"] == "task" && v["span"]["round"].is_number()
        }),
        "no client line inside a task span:\n{client}"
    );
}
