//! Configuration mistakes of a new user's first hour, with real processes: each must stop the
//! program at once with one line that says what to do, never a retry loop.
//!
//! - a client or an admin command given the wrong CA (`--ca-cert` of another `flotilla dev-certs`);
//! - a server given a certificate its clients would refuse (a CA certificate, an expired one, a key
//!   that belongs to another certificate).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Federation, bin, free_port};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The bound the issue sets for a client given the wrong CA.
const CLIENT_EXIT_BOUND: Duration = Duration::from_secs(5);

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("flotilla-first-hour-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `flotilla dev-certs DIR`: a CA and a server certificate of its own, as a user would make them.
fn dev_certs(dir: &Path) {
    let out = Command::new(bin())
        .arg("dev-certs")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dev-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits up to `limit` for `child` to exit, then kills it. Returns its output and how long it ran,
/// or `None` if it had to be killed.
fn wait_output(mut child: Child, limit: Duration) -> (Option<Output>, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let elapsed = start.elapsed();
            return (Some(child.wait_with_output().unwrap()), elapsed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "killed after {limit:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (None, start.elapsed())
}

/// The lines of `out`'s stderr that start with `error:` (what `main` prints), and all of stderr.
fn error_lines(out: &Output) -> (Vec<String>, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    (errors, stderr)
}

/// A training set the client can load without any download: 8 samples, 4 features, 2 classes.
fn tiny_csv(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.csv");
    let rows: String = (0..8).map(|i| format!("{i},0.5,1,0,{}\n", i % 2)).collect();
    std::fs::write(&path, rows).unwrap();
    path
}

#[test]
fn a_client_given_the_wrong_ca_stops_at_once_with_the_hint() {
    let f = Federation::new("wrong-ca-client", None);
    let token = f.last_line(&["enroll-token", "create", "--uses", "1", "--expires", "1h"]);
    let other = f.dir.join("other-certs");
    dev_certs(&other);
    let wrong_ca = other.join("ca.pem");
    let child = Command::new(bin())
        .args([
            "client",
            "--coordinator",
            &format!("https://127.0.0.1:{}", f.grpc),
        ])
        .args(["--token", &token])
        .arg("--state-dir")
        .arg(f.dir.join("client-state"))
        .arg("--data")
        .arg(tiny_csv(&f.dir))
        .arg("--ca-cert")
        .arg(&wrong_ca)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, elapsed) = wait_output(child, Duration::from_secs(30));
    let out = out.expect("the client kept running with the wrong CA");
    assert!(
        elapsed <= CLIENT_EXIT_BOUND,
        "the client took {elapsed:?} to give up"
    );
    assert!(!out.status.success());
    let (errors, stderr) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    let hint = &errors[0];
    assert!(
        hint.contains(&format!(
            "the coordinator's certificate is not signed by the CA in --ca-cert {}",
            wrong_ca.display()
        )),
        "{hint}"
    );
    assert!(
        hint.contains("give the CA that signed the server certificate"),
        "{hint}"
    );
    assert!(hint.contains("flotilla dev-certs"), "{hint}");
    // Said once, not wrapped around itself; and never treated as an outage to wait out.
    assert_eq!(hint.matches("not signed by").count(), 1, "{hint}");
    assert!(!stderr.contains("backing off"), "{stderr}");
    // Nothing was stored: the client never got as far as enrolling.
    assert!(!f.dir.join("client-state/credential.json").exists());
}

#[test]
fn an_admin_command_given_the_wrong_ca_fails_with_the_same_hint() {
    let f = Federation::new("wrong-ca-admin", None);
    let other = f.dir.join("other-certs");
    dev_certs(&other);
    let out = Command::new(bin())
        .args(["enroll-token", "create", "--admin-url", &f.admin_url()])
        .arg("--ca-cert")
        .arg(other.join("ca.pem"))
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (errors, stderr) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    let hint = &errors[0];
    assert!(
        hint.contains("the coordinator's certificate is not signed by the CA given with --ca-cert"),
        "{hint}"
    );
    assert!(
        hint.contains("give the CA that signed the server certificate"),
        "{hint}"
    );
    assert!(
        hint.contains(&format!("calling {}/v1/enrollment-tokens", f.admin_url())),
        "{hint}"
    );
    // The right CA still works, so the hint is about the CA and nothing else.
    let token = f.last_line(&["enroll-token", "create"]);
    assert!(!token.is_empty());
}

/// Starts `flotilla server` with `cert` and `key` and returns its output once it exits (it must,
/// within a generous bound that only guards against a hang).
fn server_with(dir: &Path, cert: &Path, key: &Path) -> Output {
    let child = Command::new(bin())
        .arg("server")
        .arg("--data-dir")
        .arg(dir.join("server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, _) = wait_output(child, Duration::from_secs(60));
    out.expect("the server started with a certificate its clients refuse")
}

/// Writes `cert.pem` and `key.pem` for `params` into `dir`, signed by a fresh CA (or self-signed
/// when `self_signed`).
fn write_cert(dir: &Path, params: CertificateParams, self_signed: bool) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = if self_signed {
        params.self_signed(&key).unwrap()
    } else {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        params.signed_by(&key, &Issuer::new(ca, ca_key)).unwrap()
    };
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn localhost() -> CertificateParams {
    let mut p =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    p
}

#[test]
fn the_server_refuses_a_ca_certificate_as_its_own() {
    let s = Scratch::new("ca-as-leaf");
    // What `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -addext
    // subjectAltName=DNS:localhost,IP:127.0.0.1` makes: self-signed, basicConstraints CA:TRUE.
    let mut p = localhost();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (cert, key) = write_cert(&s.0, p, true);
    let out = server_with(&s.0, &cert, &key);
    assert!(!out.status.success());
    let (errors, stderr) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    let e = &errors[0];
    assert!(
        e.contains(&format!(
            "--tls-cert {} is a CA certificate (basicConstraints CA:TRUE); clients refuse it",
            cert.display()
        )),
        "{e}"
    );
    assert!(e.contains("leaf certificate signed by your CA"), "{e}");
    assert!(e.contains("flotilla dev-certs"), "{e}");
}

#[test]
fn the_server_refuses_an_expired_certificate() {
    let s = Scratch::new("expired");
    let mut p = localhost();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let (cert, key) = write_cert(&s.0, p, false);
    let out = server_with(&s.0, &cert, &key);
    assert!(!out.status.success());
    let (errors, stderr) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    let e = &errors[0];
    assert!(
        e.contains(&format!("--tls-cert {} expired at", cert.display())),
        "{e}"
    );
    assert!(e.contains("2021"), "{e}");
    assert!(e.contains("clients refuse it"), "{e}");
}

#[test]
fn the_server_refuses_a_key_of_another_certificate() {
    let s = Scratch::new("key-mismatch");
    let (a, b) = (s.0.join("a"), s.0.join("b"));
    dev_certs(&a);
    dev_certs(&b);
    let cert = a.join("server.pem");
    let key = b.join("server-key.pem");
    let out = server_with(&s.0, &cert, &key);
    assert!(!out.status.success());
    let (errors, stderr) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    let e = &errors[0];
    assert!(
        e.contains(&format!(
            "--tls-key {} does not belong to --tls-cert {}",
            key.display(),
            cert.display()
        )),
        "{e}"
    );
}
