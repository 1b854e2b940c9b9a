//! A starting coordinator and the commands that talk to it: `flotilla server` says when it is
//! ready (one stdout line, `--ready-file`), and admin commands wait for it (`--wait`) without ever
//! sending a request twice.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{ADMIN_TOKEN, Procs, bin, free_port, scratch_with_certs};

fn scratch(name: &str) -> PathBuf {
    scratch_with_certs("ready", name)
}

/// `flotilla server` on the given ports with TLS (or `--insecure`), stdout piped.
fn server(dir: &Path, grpc: u16, admin: u16, insecure: bool, ready_file: Option<&Path>) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["server", "--data-dir", dir.join("server").to_str().unwrap()])
        .args([
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
    if insecure {
        cmd.arg("--insecure");
    } else {
        cmd.args(["--tls-cert", dir.join("certs/server.pem").to_str().unwrap()])
            .args([
                "--tls-key",
                dir.join("certs/server-key.pem").to_str().unwrap(),
            ]);
    }
    if let Some(path) = ready_file {
        cmd.arg("--ready-file").arg(path);
    }
    cmd.spawn().unwrap()
}

/// `flotilla job list` against the admin API at `url`, with extra arguments and environment.
fn job_list(dir: &Path, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args([
            "job",
            "list",
            "--admin-url",
            url,
            "--ca-cert",
            dir.join("certs/ca.pem").to_str().unwrap(),
        ])
        .args(extra)
        .env_remove("FLOTILLA_ADMIN_WAIT")
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn server_prints_one_ready_line_and_keeps_a_ready_file_while_it_runs() {
    let dir = scratch("line");
    let (grpc, admin) = (free_port(), free_port());
    let ready = dir.join("run/server.ready");
    std::fs::create_dir_all(ready.parent().unwrap()).unwrap();
    let mut child = server(&dir, grpc, admin, false, Some(&ready));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut procs = Procs(vec![child]);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let log = || std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    assert_eq!(
        line.trim_end(),
        format!(
            "coordinator ready: gRPC https://127.0.0.1:{grpc}, admin https://127.0.0.1:{admin}"
        ),
        "server log: {}",
        log()
    );
    // The file is there by the time the line is printed, and both listeners take connections.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(doc["grpc"], format!("https://127.0.0.1:{grpc}"));
    assert_eq!(doc["admin"], format!("https://127.0.0.1:{admin}"));
    assert_eq!(doc["pid"], procs.0[0].id());
    std::net::TcpStream::connect(("127.0.0.1", grpc)).expect("the gRPC listener accepts");
    let out = job_list(
        &dir,
        &format!("https://127.0.0.1:{admin}"),
        &["--wait", "0"],
        &[],
    );
    assert!(
        out.status.success(),
        "the admin API answers at once: {}",
        text(&out.stderr)
    );
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(ready.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["server.ready"]);

    // A clean stop removes the file; nothing more was printed on stdout.
    assert!(
        Command::new("kill")
            .args(["-TERM", &procs.0[0].id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = procs.0[0].wait().unwrap();
    assert!(status.success(), "server exit {status}: {}", log());
    assert!(!ready.exists(), "the ready file outlived the server");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "stdout has exactly one line");
}

#[test]
fn insecure_server_announces_plain_http() {
    let dir = scratch("insecure");
    let (grpc, admin) = (free_port(), free_port());
    let mut child = server(&dir, grpc, admin, true, None);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let _procs = Procs(vec![child]);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        format!("coordinator ready: gRPC http://127.0.0.1:{grpc}, admin http://127.0.0.1:{admin}")
    );
}

#[test]
fn admin_command_waits_for_a_coordinator_that_is_still_starting() {
    let dir = scratch("wait");
    let (grpc, admin) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{admin}");
    let cli = {
        let (dir, url) = (dir.clone(), url.clone());
        std::thread::spawn(move || job_list(&dir, &url, &[], &[("FLOTILLA_ADMIN_WAIT", "60s")]))
    };
    // Let the command find nothing listening first (its connections are refused meanwhile).
    std::thread::sleep(Duration::from_millis(500));
    let _server = Procs(vec![server(&dir, grpc, admin, false, None)]);
    let out = cli.join().unwrap();
    assert!(
        out.status.success(),
        "job list after the server came up: {}",
        text(&out.stderr)
    );
}

#[test]
fn admin_command_gives_up_after_wait_with_one_line() {
    let dir = scratch("give-up");
    let admin = free_port();
    let url = format!("https://127.0.0.1:{admin}");
    for (extra, env, waited) in [
        (&["--wait", "300ms"][..], &[][..], "waited 300ms"),
        (&[][..], &[("FLOTILLA_ADMIN_WAIT", "1s")][..], "waited 1s"),
        (&["--wait", "0"][..], &[][..], "--wait 0"),
    ] {
        let out = job_list(&dir, &url, extra, env);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("no coordinator answers at {url} ({waited}): is `flotilla server` running with --admin-listen 127.0.0.1:{admin}?")),
            "{err}"
        );
    }
    let out = job_list(&dir, &url, &["--wait", "soon"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--wait"),
        "{}",
        text(&out.stderr)
    );
}

/// A request that reached a server is never sent again, even with time left to wait: a server
/// that reads the request and hangs up sees exactly one connection.
#[test]
fn a_request_that_reached_the_server_is_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                // Dropped: the connection closes without an answer.
            }
        });
    }
    let dir = std::env::temp_dir();
    let out = Command::new(bin())
        .args([
            "job",
            "submit",
            "--admin-url",
            &format!("http://127.0.0.1:{port}"),
            "--insecure",
            "--wait",
            "60s",
        ])
        .arg(common::workspace_root().join("examples/job-digits.toml"))
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "{}", text(&out.stderr));
}
