//! Issue 12, items 4 and 5, against real processes: every count, size, duration and DP parameter of
//! a job spec and of a scenario has a ceiling, refused with the key named (`flotilla job submit`,
//! `flotilla sim`); a client name with a newline or an escape sequence is refused at enrollment,
//! and the coordinator's log file holds no forged line and no ESC byte.

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Federation, bin, workspace_root};
use flotilla_proto::v1;
use flotilla_proto::v1::coordinator_client::CoordinatorClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A job spec that is accepted; each case edits one key of it.
const JOB: &str = r#"name = "ceilings"
seed = 1
rounds = 3
clients_per_round = 3

[round]
min_clients = 3
over_selection = 1.0
deadline_seconds = 60
min_report_fraction = 0.8
max_attempts = 3
checkin_ttl_seconds = 300
selection_window_ms = 100
retry_after_ms = 500

[model]
kind = "logreg"
dataset = "digits"

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1

[eligibility]
min_samples = 1
"#;

const PRIVACY: &str =
    "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 100\n";
const MLP: &str = "[model]\nkind = \"mlp\"\ninput_shape = [64]\nnum_classes = 10\nhidden = 8\n";

/// `(key the message must name, text to replace, replacement)`; an empty `from` appends `to`.
const JOB_CASES: &[(&str, &str, &str)] = &[
    ("rounds", "rounds = 3", "rounds = 9223372036854775807"),
    (
        "clients_per_round",
        "clients_per_round = 3",
        "clients_per_round = 9223372036854775807",
    ),
    (
        "round.min_clients",
        "min_clients = 3",
        "min_clients = 2000000",
    ),
    (
        "round.over_selection",
        "over_selection = 1.0",
        "over_selection = 11.0",
    ),
    (
        "round.max_attempts",
        "max_attempts = 3",
        "max_attempts = 1000000",
    ),
    (
        "round.deadline_seconds",
        "deadline_seconds = 60",
        "deadline_seconds = 1e12",
    ),
    (
        "round.checkin_ttl_seconds",
        "checkin_ttl_seconds = 300",
        "checkin_ttl_seconds = 100000000",
    ),
    (
        "round.selection_window_ms",
        "selection_window_ms = 100",
        "selection_window_ms = 10000000000",
    ),
    (
        "round.retry_after_ms",
        "retry_after_ms = 500",
        "retry_after_ms = 100000000",
    ),
    (
        "train.local_epochs",
        "local_epochs = 1",
        "local_epochs = 100000",
    ),
    (
        "train.batch_size",
        "batch_size = 32",
        "batch_size = 100000000",
    ),
    (
        "train.learning_rate",
        "learning_rate = 0.1",
        "learning_rate = 1e300",
    ),
    (
        "train.max_grad_norm",
        "learning_rate = 0.1",
        "learning_rate = 0.1\nmax_grad_norm = 1e300",
    ),
    (
        "eligibility.min_samples",
        "min_samples = 1",
        "min_samples = 1000000000000",
    ),
    (
        "model.num_classes",
        "[model]\nkind = \"logreg\"\ndataset = \"digits\"\n",
        "[model]\nkind = \"logreg\"\ninput_shape = [64]\nnum_classes = 100000000\n",
    ),
    (
        "model.input_shape",
        "[model]\nkind = \"logreg\"\ndataset = \"digits\"\n",
        "[model]\nkind = \"logreg\"\ninput_shape = [4294967296, 4294967296, 4294967296]\nnum_classes = 10\n",
    ),
    (
        "model.hidden",
        "[model]\nkind = \"logreg\"\ndataset = \"digits\"\n",
        "[model]\nkind = \"mlp\"\ninput_shape = [64]\nnum_classes = 10\nhidden = 10000000\n",
    ),
    // Every width within its own ceiling, the model over 2^28 parameters.
    (
        "model.hidden",
        "[model]\nkind = \"logreg\"\ndataset = \"digits\"\n",
        "[model]\nkind = \"mlp\"\ninput_shape = [16777216]\nnum_classes = 10\nhidden = 65536\n",
    ),
    (
        "privacy.noise_multiplier",
        "",
        "[privacy]\nnoise_multiplier = 1e300\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 100\n",
    ),
    (
        "privacy.delta",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-300\npopulation = 100\n",
    ),
    (
        "privacy.delta",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 0.5\npopulation = 100\n",
    ),
    (
        "privacy.clip_norm",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1e300\ndelta = 1e-5\npopulation = 100\n",
    ),
    (
        "privacy.max_epsilon",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 100\nmax_epsilon = 1e300\n",
    ),
    (
        "privacy.population",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-5\npopulation = 9223372036854775807\n",
    ),
    (
        "strategy.server_lr",
        "",
        "[strategy]\nname = \"fedavgm\"\nserver_lr = 1e300\n",
    ),
    (
        "strategy.mu",
        "",
        "[strategy]\nname = \"fedprox\"\nmu = 1e300\n",
    ),
    (
        "strategy.clip_norm",
        "",
        "[strategy]\nname = \"fedavg\"\nclip_norm = 1e300\n",
    ),
    (
        "strategy.concurrency",
        "",
        "[strategy]\nname = \"fedbuff\"\nconcurrency = 100000000\n",
    ),
    (
        "strategy.buffer_size",
        "",
        "[strategy]\nname = \"fedbuff\"\nbuffer_size = 100000000\n",
    ),
    (
        "strategy.max_staleness",
        "",
        "[strategy]\nname = \"fedbuff\"\nmax_staleness = 100000000\n",
    ),
    ("secagg.clip_range", "", "[secagg]\nclip_range = 1e300\n"),
    (
        "name",
        "name = \"ceilings\"",
        "name = \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
    ),
    (
        "name",
        "name = \"ceilings\"",
        "name = \"x\\nERROR flotilla_coordinator: forged\"",
    ),
    (
        "tenant",
        "seed = 1",
        "seed = 1\ntenant = \"a b\\u001b[31m\"",
    ),
];

fn edit(base: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        return format!("{base}{to}");
    }
    assert!(base.contains(from), "the base spec has no {from:?}");
    base.replacen(from, to, 1)
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_string()
}

#[test]
fn job_submit_refuses_every_ceiling_naming_the_key() {
    let fed = Federation::new("ceilings-jobs", None);
    let path = fed.dir.join("job.toml");
    // The base spec and its privacy/MLP variants are accepted: each refusal below is the edit's.
    for ok in [
        JOB.to_string(),
        format!("{JOB}{PRIVACY}"),
        edit(
            JOB,
            "[model]\nkind = \"logreg\"\ndataset = \"digits\"\n",
            MLP,
        ),
    ] {
        std::fs::write(&path, &ok).unwrap();
        let out = fed.admin_cli(&["job", "submit", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "the base spec is refused: {}\n{ok}",
            stderr_of(&out)
        );
    }
    let mut refused = 0;
    for (key, from, to) in JOB_CASES {
        std::fs::write(&path, edit(JOB, from, to)).unwrap();
        let out = fed.admin_cli(&["job", "submit", path.to_str().unwrap()]);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{key}: accepted {to:?}");
        assert!(!err.contains("panicked"), "{key}: {err}");
        assert_eq!(err.lines().count(), 1, "{key}: not one line: {err}");
        assert!(
            err.contains(&format!("{key}:")) || err.contains(&format!("`{key}`")),
            "{key}: the message does not name the key: {err}"
        );
        assert!(
            err.contains("must be"),
            "{key}: the message gives no rule: {err}"
        );
        assert!(
            !err.contains('\x1b'),
            "{key}: ESC reached the terminal: {err:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, JOB_CASES.len());
    println!("{refused} over-ceiling job specs refused, each naming its key");
}

/// A scenario that runs; each case edits one key of it.
const SCENARIO: &str = r#"rounds = 2
clients = 10
clients_per_round = 3
eval_every = 1
[partition]
kind = "dirichlet"
alpha = 0.5
min_samples = 2
[model]
kind = "mlp"
dataset = "digits"
hidden = 8
[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[simulation]
train_ticks_max = 100
threads = 1
"#;

const SIM_CASES: &[(&str, &str, &str)] = &[
    ("rounds", "rounds = 2", "rounds = 9223372036854775807"),
    ("clients", "clients = 10", "clients = 2000000"),
    (
        "clients_per_round",
        "clients = 10\nclients_per_round = 3",
        "clients = 1000000\nclients_per_round = 200000",
    ),
    (
        "eval_every",
        "eval_every = 1",
        "eval_every = 9223372036854775807",
    ),
    ("partition.alpha", "alpha = 0.5", "alpha = 1e300"),
    (
        "partition.min_samples",
        "min_samples = 2",
        "min_samples = 100000000000",
    ),
    ("model.hidden", "hidden = 8", "hidden = 10000000"),
    (
        "train.local_epochs",
        "local_epochs = 1",
        "local_epochs = 100000",
    ),
    (
        "train.batch_size",
        "batch_size = 32",
        "batch_size = 100000000",
    ),
    (
        "train.learning_rate",
        "learning_rate = 0.1",
        "learning_rate = 1e300",
    ),
    (
        "simulation.train_ticks_max",
        "train_ticks_max = 100",
        "train_ticks_max = 100000000",
    ),
    ("simulation.threads", "threads = 1", "threads = 1000000"),
    (
        "privacy.noise_multiplier",
        "",
        "[privacy]\nnoise_multiplier = 1e300\nclip_norm = 1.0\ndelta = 1e-5\n",
    ),
    (
        "privacy.delta",
        "",
        "[privacy]\nnoise_multiplier = 1.0\nclip_norm = 1.0\ndelta = 1e-300\n",
    ),
    (
        "strategy.concurrency",
        "",
        "[strategy]\nname = \"fedbuff\"\nconcurrency = 100000000\n",
    ),
];

#[test]
fn sim_refuses_every_over_ceiling_scenario_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("flotilla-ceilings-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scenario.toml");
    std::fs::write(&path, SCENARIO).unwrap();
    let ok = Command::new(bin())
        .args(["sim", path.to_str().unwrap(), "--quiet", "--rounds", "1"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "the base scenario fails: {}",
        stderr_of(&ok)
    );
    for (key, from, to) in SIM_CASES {
        // `--rounds 1` would hide the rounds case.
        std::fs::write(&path, edit(SCENARIO, from, to)).unwrap();
        let args: Vec<&str> = if *key == "rounds" {
            vec!["sim", path.to_str().unwrap(), "--quiet"]
        } else {
            vec!["sim", path.to_str().unwrap(), "--quiet", "--rounds", "1"]
        };
        let out = Command::new(bin())
            .args(&args)
            .current_dir(workspace_root())
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{key}: accepted {to:?}");
        assert!(!err.contains("panicked"), "{key}: {err}");
        assert!(
            err.contains(&format!("{key}:")) || err.contains(&format!("`{key}`")),
            "{key}: the message does not name the key: {err}"
        );
        assert!(
            err.contains("must be"),
            "{key}: the message gives no rule: {err}"
        );
    }
    // The command-line override has the same ceiling.
    std::fs::write(&path, SCENARIO).unwrap();
    let out = Command::new(bin())
        .args([
            "sim",
            path.to_str().unwrap(),
            "--quiet",
            "--rounds",
            "2000000",
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr_of(&out).contains("rounds:"),
        "{}",
        stderr_of(&out)
    );
    println!(
        "{} over-ceiling scenarios refused, each naming its key",
        SIM_CASES.len()
    );
}

/// Restarts the federation's coordinator with `RUST_LOG=info`, its stderr in `server-info.log`.
fn restart_with_info_log(fed: &mut Federation) -> std::path::PathBuf {
    fed.kill_server();
    fed.server.0.clear();
    let log = fed.dir.join("server-info.log");
    let certs = fed.dir.join("certs");
    let child = Command::new(bin())
        .args(["server", "--data-dir"])
        .arg(fed.dir.join("server"))
        .args(["--listen", &format!("127.0.0.1:{}", fed.grpc)])
        .args(["--admin-listen", &format!("127.0.0.1:{}", fed.admin)])
        .arg("--tls-cert")
        .arg(certs.join("server.pem"))
        .arg("--tls-key")
        .arg(certs.join("server-key.pem"))
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    fed.server.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fed.admin_cli(&["job", "list"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not come back; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    log
}

/// Raw `Enroll` over TLS: the status code and message, or the client id.
async fn enroll(
    fed: &Federation,
    token: &str,
    name: &str,
) -> Result<String, (tonic::Code, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read_to_string(fed.ca()).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", fed.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CoordinatorClient::new(channel);
    client
        .enroll(v1::EnrollRequest {
            enrollment_token: token.to_string(),
            client_name: name.to_string(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().client_id)
        .map_err(|s| (s.code(), s.message().to_string()))
}

const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];

#[test]
fn enrollment_names_cannot_forge_log_lines_or_reach_the_terminal() {
    let mut fed = Federation::new("ceilings-names", None);
    let log = restart_with_info_log(&mut fed);
    let token = fed.last_line(&["enroll-token", "create", "--uses", "5", "--expires", "1h"]);
    let forged = "mallory\nERROR flotilla_coordinator::service: forged line";
    let escape = "eve\x1b[31m red \x1b[0m";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for bad in [forged, escape, "bidi\u{202E}txet", &"x".repeat(65)] {
        let (code, message) = rt
            .block_on(enroll(&fed, &token, bad))
            .expect_err("a bad name must be refused");
        assert_eq!(code, tonic::Code::InvalidArgument, "{bad:?}: {message}");
        assert!(
            message.starts_with("client name must be 1 to 64 characters of ASCII letters"),
            "{bad:?}: {message}"
        );
        assert!(
            !message.chars().any(|c| c.is_control()),
            "{bad:?}: the refusal echoes control characters: {message:?}"
        );
    }
    // A good name still enrolls (and is logged), so the log below is a real one.
    let id = rt
        .block_on(enroll(&fed, &token, "honest-client 1"))
        .expect("a good name enrolls");
    assert!(!id.is_empty());
    // An operator's text: a cancel reason with a newline and ESC is refused, a plain one logged.
    let job = fed.submit(JOB);
    let out = fed.admin_cli(&[
        "job",
        "cancel",
        &job,
        "--reason",
        "bye\nERROR flotilla_coordinator: forged\x1b[2J",
    ]);
    assert!(!out.status.success());
    assert!(!stderr_of(&out).contains('\x1b'), "{:?}", stderr_of(&out));
    let out = fed.admin_cli(&[
        "job",
        "cancel",
        &job,
        "--reason",
        "done: see ERROR flotilla_coordinator",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // The SDK and the CLI check the same rule before connecting (nothing listens on port 9).
    let out = Command::new(bin())
        .args([
            "client",
            "--coordinator",
            "https://127.0.0.1:9",
            "--ca-cert",
            &fed.ca(),
            "--token",
            &token,
        ])
        .arg("--state-dir")
        .arg(fed.dir.join("cli-client"))
        .args([
            "--dataset",
            "digits",
            "--partition",
            "0/10",
            "--name",
            forged,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("client name must be 1 to 64 characters"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b')
            && !err
                .lines()
                .any(|l| l.trim_start().starts_with("ERROR flotilla_coordinator")),
        "{err:?}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let bytes = std::fs::read(&log).unwrap();
    assert!(
        !bytes.contains(&0x1b),
        "an ESC byte reached the log file {}",
        log.display()
    );
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("client enrolled"),
        "the enrollment was not logged: {text}"
    );
    assert!(
        text.contains("job cancelled"),
        "the cancel was not logged: {text}"
    );
    let mut lines = 0;
    for line in text.lines() {
        lines += 1;
        let first = line.split_whitespace().next().unwrap_or_default();
        assert!(
            !LEVELS.contains(&first),
            "a line starts with a level (forged): {line:?}"
        );
        assert!(
            first.len() >= 20 && first.as_bytes()[..4].iter().all(u8::is_ascii_digit),
            "a line does not start with the subscriber's timestamp: {line:?}"
        );
        assert!(
            !line.contains("forged line") || line.contains("INFO"),
            "{line:?}"
        );
    }
    assert!(
        !text.contains("mallory"),
        "a refused name was logged: {text}"
    );
    println!("{lines} log lines checked: none forged, no ESC byte");
}
