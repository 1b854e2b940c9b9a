//! TLS end to end: a throw-away CA and server certificate from the test kit, a TLS fake coordinator,
//! and a client that trusts only that CA. A client trusting another CA never reaches the coordinator.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Fake, Faults};
use flotilla_client::{Client, ClientConfig, DatasetTrainer};
use flotilla_data::DatasetName;
use flotilla_proto::v1::coordinator_server::CoordinatorServer;
use flotilla_testkit::certs::{CertifiedIssuer, KeyPair, ca, server_cert};
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Serves `fake` over TLS with a certificate for localhost / 127.0.0.1 issued by `issuer`.
async fn serve_tls(
    fake: Arc<Fake>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (cert, key) = server_cert(issuer, &["localhost", "127.0.0.1"]);
    let identity = Identity::from_pem(cert, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .unwrap()
        .add_service(CoordinatorServer::from_arc(fake))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    (
        addr,
        tokio::spawn(async move {
            let _ = server.await;
        }),
    )
}

fn tls_config(addr: std::net::SocketAddr, dir: &Path, ca_pem: &str) -> ClientConfig {
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let mut c = common::config(addr, &dir.join("state"));
    c.coordinator = format!("https://{addr}");
    c.insecure = false;
    c.ca_cert = Some(ca_path);
    c
}

fn trainer() -> DatasetTrainer {
    DatasetTrainer::from_partition(DatasetName::Digits, Path::new("."), 0, 10).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_round_over_tls() {
    let authority = ca("flotilla test CA");
    let fake = Fake::new(Faults::default());
    let (addr, server) = serve_tls(Arc::clone(&fake), &authority).await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(tls_config(addr, dir.path(), &authority.pem())).unwrap();
    let f = Arc::clone(&fake);
    let stats = tokio::time::timeout(
        Duration::from_secs(120),
        client.run(trainer(), async move { f.finished.notified().await }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((stats.tasks_done, stats.uploads_accepted), (1, 1));
    common::check_accepted(&fake, trainer().indices().len() as u64);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_never_talked_to() {
    let authority = ca("flotilla test CA");
    let other = ca("someone else's CA");
    let fake = Fake::new(Faults::default());
    let (addr, server) = serve_tls(Arc::clone(&fake), &authority).await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(tls_config(addr, dir.path(), &other.pem())).unwrap();
    // A certificate the configured CA did not sign never heals by retrying: the run stops at once
    // (well before the 60 s shutdown) with the one-line hint, having sent nothing.
    let err = client
        .run(trainer(), tokio::time::sleep(Duration::from_secs(60)))
        .await
        .expect_err("an untrusted certificate stops the client");
    assert!(
        matches!(err.error, flotilla_client::ClientError::Tls { .. }),
        "{err:?}"
    );
    assert!(
        err.error
            .to_string()
            .contains("not signed by the CA in --ca-cert"),
        "{}",
        err.error
    );
    assert!(!err.stats.enrolled);
    assert_eq!(fake.seen.lock().unwrap().enroll_calls, 0);
    assert!(
        !dir.path()
            .join("state")
            .join(flotilla_client::CREDENTIAL_FILE)
            .exists()
    );
    server.abort();
}
