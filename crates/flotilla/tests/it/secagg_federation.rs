//! Secure aggregation with real processes: a coordinator (`flotilla server`) and 20 client processes
//! (`flotilla client`) over TLS run one SecAgg+ round; 30 % of the clients are killed (SIGKILL, from
//! outside) right after their masked input was accepted: the test reads their log as it is written
//! and kills each the moment it logs the accepted upload (in a secure round the masked input is the
//! only upload). The committed model must equal the uniform mean of every contributor's clipped
//! delta — recomputed here from each client's data share and task seed — within the quantization
//! bound. The job asks for `[compression] kind = "quantize"`, 8 bits: for 20 clients the sums live
//! in a 16-bit ring, so the clients upload 2-byte masked words (`PAYLOAD_KIND_MASKED_U16`; the
//! coordinator refuses the other width); the distributed-DP test below keeps the 32-bit path.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_client::{DatasetTrainer, ModelDescription, TaskInfo, TrainingConfig};
use flotilla_coordinator::spec::JobSpec;
use flotilla_core::round::{Action, ClientId, Event, RoundMachine};
use serde_json::Value;

use crate::common::{Procs, bin, free_port, last_line, scratch_with_certs, workspace_root};

const ADMIN_TOKEN: &str = "e2e-admin-token";
const CLIENTS: usize = 20;

/// A client process that is killed from outside right after its masked input was accepted: a
/// thread copies its log (stderr) to `log` line by line and kills it on the line that says its
/// upload was accepted. Killed on drop in any case.
struct DiesAfterMaskedInput {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
}

impl DiesAfterMaskedInput {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        // INFO for the SDK: "update accepted" is logged at INFO.
        cmd.env("RUST_LOG", "warn,flotilla_client=info")
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Arc::new(Mutex::new(child));
        let killed = Arc::new(AtomicBool::new(false));
        let (c, k) = (child.clone(), killed.clone());
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("update accepted") && !k.load(Ordering::SeqCst) {
                    let _ = c.lock().unwrap().kill();
                    k.store(true, Ordering::SeqCst);
                }
                let _ = writeln!(log, "{line}");
            }
        });
        Self { child, killed }
    }

    /// Whether it was killed after its masked input (and has exited).
    fn killed_after_masked_input(&self) -> bool {
        self.killed.load(Ordering::SeqCst) && self.child.lock().unwrap().wait().is_ok()
    }
}

impl Drop for DiesAfterMaskedInput {
    fn drop(&mut self) {
        let mut c = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn admin(dir: &Path, admin_port: u16, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--admin-url", &format!("https://127.0.0.1:{admin_port}")])
        .args(["--ca-cert", dir.join("certs/ca.pem").to_str().unwrap()])
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

fn job_spec() -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", "rounds = 1")
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {CLIENTS}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {CLIENTS}"))
        .replace("deadline_seconds = 60", "deadline_seconds = 20")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 0.6")
        .replace("retry_after_ms = 500 ", "retry_after_ms = 200 ")
        + "\n[secagg]\nclip_range = 0.25\n[compression]\nkind = \"quantize\"\nbits = 8\n"
}

/// The blob of model `version` whose SHA-256 is `sha`, found in the coordinator's data directory.
fn model_blob(dir: &Path, version: u64, sha: &str) -> Vec<f32> {
    let want = format!("v{version}-{sha}.bin");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n.to_string_lossy() == want) {
                return flotilla_core::params_from_le_bytes(&std::fs::read(&p).unwrap()).unwrap();
            }
        }
    }
    panic!("no blob {want} under {}", dir.display());
}

/// A running coordinator in `dir` with its ports; killed on drop.
struct Coordinator {
    dir: PathBuf,
    admin_port: u16,
    grpc: u16,
    _server: Procs,
}

fn start_coordinator(tag: &str) -> Coordinator {
    let dir = scratch_with_certs("e2e", tag);
    let (grpc, admin_port) = (free_port(), free_port());
    let certs = dir.join("certs");
    let server = Command::new(bin())
        .args(["server", "--data-dir"])
        .arg(dir.join("server"))
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--tls-cert")
        .arg(certs.join("server.pem"))
        .arg("--tls-key")
        .arg(certs.join("server-key.pem"))
        .env("FLOTILLA_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let server = Procs(vec![server]);
    let up = Instant::now() + Duration::from_secs(60);
    while !admin(&dir, admin_port, &["job", "list"]).status.success() {
        assert!(
            Instant::now() < up,
            "coordinator did not come up; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Coordinator {
        dir,
        admin_port,
        grpc,
        _server: server,
    }
}

/// Starts `n` client processes on digits partitions `i/n`; those in `dying` are killed right after
/// their masked input (returned apart, in the order of `dying`).
fn start_clients(
    co: &Coordinator,
    n: usize,
    dying: &[usize],
) -> (Procs, Vec<DiesAfterMaskedInput>) {
    let (dir, admin_port) = (&co.dir, co.admin_port);
    let token = last_line(&admin(
        dir,
        admin_port,
        &[
            "enroll-token",
            "create",
            "--uses",
            &n.to_string(),
            "--expires",
            "1h",
        ],
    ));
    let certs = dir.join("certs");
    let mut clients = Procs(Vec::new());
    let mut dies = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(bin());
        cmd.args([
            "client",
            "--coordinator",
            &format!("https://127.0.0.1:{}", co.grpc),
        ])
        .args([
            "--ca-cert",
            certs.join("ca.pem").to_str().unwrap(),
            "--token",
            &token,
        ])
        .arg("--state-dir")
        .arg(dir.join(format!("client-{i}")))
        .args(["--dataset", "digits", "--partition", &format!("{i}/{n}")])
        .stdout(Stdio::null());
        let log = dir.join(format!("client-{i}.log"));
        if dying.contains(&i) {
            dies.push(DiesAfterMaskedInput::spawn(cmd, log));
        } else {
            cmd.env("RUST_LOG", "warn")
                .stderr(std::fs::File::create(log).unwrap());
            clients.0.push(cmd.spawn().unwrap());
        }
    }
    (clients, dies)
}

/// Submits `spec_text` and waits (at most `secs`) until the job completes or fails; returns its id
/// and `job status --json`.
fn run_job(co: &Coordinator, spec_text: &str, secs: u64) -> (String, Value) {
    let (dir, admin_port) = (&co.dir, co.admin_port);
    std::fs::write(dir.join("job.toml"), spec_text).unwrap();
    let job = last_line(&admin(
        dir,
        admin_port,
        &["job", "submit", dir.join("job.toml").to_str().unwrap()],
    ));
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = admin(dir, admin_port, &["job", "status", &job, "--json"]);
        let s: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if s["state"] == "completed" || s["state"] == "failed" {
            return (job, s);
        }
        assert!(
            Instant::now() < deadline,
            "timed out; last status {s}; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Recomputes round 1 of `job` without secure aggregation: every client `i` of `n` (enrolled id in
/// its credential) trains from the initial model with the task seed the round machine gives it.
/// Returns the initial model, the client ids (by partition), and each client's delta `new − initial`.
fn round_one_deltas(
    dir: &Path,
    job: &str,
    spec: &JobSpec,
    n: usize,
) -> (Vec<f32>, Vec<u64>, Vec<Vec<f32>>) {
    let ml = spec.ml_spec().unwrap();
    let model = flotilla_ml::build(&ml, spec.seed).unwrap();
    let (layout, initial) = (model.layout().clone(), model.parameters());
    let mut machine = RoundMachine::new(
        flotilla_core::round::RoundPolicy {
            stages: vec![flotilla_core::round::StageKind::Train],
            ..spec.policy()
        },
        layout.clone(),
        initial.clone(),
        spec.seed,
    )
    .unwrap();
    let ids: Vec<u64> = (0..n)
        .map(|i| {
            let cred: Value = serde_json::from_slice(
                &std::fs::read(dir.join(format!("client-{i}/credential.json"))).unwrap(),
            )
            .unwrap();
            cred["client_id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let mut acts = Vec::new();
    for &id in &ids {
        acts.extend(machine.handle(
            0,
            Event::CheckIn {
                client: ClientId(id),
            },
        ));
    }
    let (timer, at) = acts
        .iter()
        .find_map(|a| {
            if let Action::SetTimer { timer, at_ms } = a {
                Some((*timer, *at_ms))
            } else {
                None
            }
        })
        .unwrap();
    let seeds: std::collections::BTreeMap<u64, u64> = machine
        .handle(at, Event::TimerFired(timer))
        .into_iter()
        .filter_map(|a| {
            if let Action::Configure { client, task } = a {
                Some((client.0, task.seed))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(seeds.len(), n);
    let mut deltas = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut trainer =
            DatasetTrainer::from_partition("digits".parse().unwrap(), Path::new("unused"), i, n)
                .unwrap();
        let info = TaskInfo {
            job_id: job.to_string(),
            round: 1,
            attempt: 1,
            stage_index: 2,
            model_version: 0,
            layout_fingerprint: layout.fingerprint(),
            layout: layout.clone(),
            model: Some(ModelDescription {
                kind: spec.model.kind.clone(),
                input_shape: spec.model.input_shape.iter().map(|&d| d as u64).collect(),
                num_classes: spec.model.num_classes as u32,
                hidden: spec.model.hidden as u32,
                embed: spec.model.embed as u32,
            }),
            training: TrainingConfig {
                epochs: spec.train.local_epochs,
                batch_size: spec.train.batch_size,
                learning_rate: spec.train.learning_rate,
                seed: seeds[id],
                proximal_mu: 0.0,
                max_grad_norm: 0.0,
            },
            gradient_correction: None,
            deadline: None,
        };
        let out = trainer.train_task(&info, &initial).unwrap();
        deltas.push(
            out.params
                .iter()
                .zip(&initial)
                .map(|(n, g)| n - g)
                .collect(),
        );
    }
    (initial, ids, deltas)
}

#[test]
fn twenty_client_processes_secure_round_with_30_percent_dying_after_masked_input() {
    let co = start_coordinator("secagg");
    // Every third-ish client (6 of 20) dies right after its masked input.
    let dying: Vec<usize> = vec![1, 4, 7, 10, 13, 16];
    let (_clients, dies) = start_clients(&co, CLIENTS, &dying);
    let spec_text = job_spec();
    let (job, status) = run_job(&co, &spec_text, 240);
    let dir = co.dir.clone();
    assert_eq!(
        status["state"],
        "completed",
        "{status}; logs in {}",
        dir.display()
    );
    let round = &status["history"][0];
    assert_eq!(round["metrics"]["attempt"], 1, "{status}");
    // The dying clients were killed after their masked input, which still counts.
    for (d, &i) in dies.iter().zip(&dying) {
        assert!(
            d.killed_after_masked_input(),
            "client {i} should have been killed after its masked input"
        );
    }
    let participants: Vec<u64> = round["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(
        participants.len(),
        CLIENTS,
        "every masked input is in the sum: {status}"
    );

    // Recompute the plain uniform mean of the clipped deltas from what every client trained.
    let spec = JobSpec::from_toml(&spec_text).unwrap();
    let (initial, ids, deltas) = round_one_deltas(&dir, &job, &spec, CLIENTS);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(participants, sorted);
    let r = spec.secagg.as_ref().unwrap().clip_range;
    let mut sum = vec![0.0f64; initial.len()];
    for d in &deltas {
        for (s, x) in sum.iter_mut().zip(d) {
            *s += f64::from(*x).clamp(-r, r);
        }
    }
    let sha = round["metrics"]["model_sha256"].as_str().unwrap();
    let committed = model_blob(&dir.join("server"), 1, sha);
    let params = spec
        .secagg
        .as_ref()
        .unwrap()
        .params(CLIENTS, initial.len())
        .unwrap();
    assert_eq!(
        params.ring_bits(),
        16,
        "8-bit values of 20 clients: a 16-bit ring"
    );
    let bound = params.quantization_error_bound(CLIENTS) / CLIENTS as f64 + 1e-6;
    let mut moved = 0;
    for (k, ((c, g), s)) in committed.iter().zip(&initial).zip(&sum).enumerate() {
        let expected = f64::from(*g) + s / CLIENTS as f64;
        assert!(
            (f64::from(*c) - expected).abs() <= bound,
            "coordinate {k}: committed {c}, plain uniform mean {expected}"
        );
        moved += usize::from(c != g);
    }
    assert!(moved > initial.len() / 2, "the round changed the model");
    drop(co);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Distributed DP over secure aggregation with real client processes: 6 clients, 2 rounds, one
/// client dying after its masked input in every round it takes part in. The job completes, every
/// round is charged (`epsilon_spent` > 0 in `job status --json`, equal to the accountant's value for
/// q = 1), the server adds no noise, and the committed round-1 model differs from the noise-free
/// clipped mean by noise of the expected spread `σC·√(k/n_min)/m` — the clients' shares.
#[test]
fn six_client_processes_distributed_dp_over_secure_aggregation() {
    const N: usize = 6;
    let co = start_coordinator("secagg-dp");
    let dir = co.dir.clone();
    let _clients = start_clients(&co, N, &[]);
    let (sigma, c) = (1.0, 0.5);
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    // m = 6, n_min = ⌈6 × 0.6⌉ = 4: shares of std 0.25; the clip range needs ≥ 0.5 + 10 × 0.25 = 3.0.
    let spec_text = base
        .replace("rounds = 20", "rounds = 2")
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {N}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {N}"))
        .replace("deadline_seconds = 60", "deadline_seconds = 20")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 0.6")
        .replace("retry_after_ms = 500 ", "retry_after_ms = 200 ")
        + &format!(
            "\n[privacy]\nmode = \"distributed\"\nnoise_multiplier = {sigma:?}\nclip_norm = {c:?}\ndelta = 1e-5\npopulation = {N}\n\
             [secagg]\nclip_range = 3.0\n"
        );
    let (job, status) = run_job(&co, &spec_text, 240);
    assert_eq!(
        status["state"],
        "completed",
        "{status}; logs in {}",
        dir.display()
    );
    let want = flotilla_privacy::epsilon(1.0, sigma, 2, 1e-5)
        .unwrap()
        .epsilon;
    let spent = status["epsilon_spent"].as_f64().unwrap_or(f64::NAN);
    assert!(
        spent > 0.0 && (spent - want).abs() <= 1e-9 * want,
        "epsilon_spent {spent} vs {want}: {status}"
    );
    assert_eq!(status["delta"].as_f64(), Some(1e-5), "{status}");
    let history = status["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{status}");
    for r in history {
        assert_eq!(
            r["metrics"]["privacy"]["noise_std"].as_f64(),
            Some(0.0),
            "the server adds no noise: {r}"
        );
        assert!(r["epsilon_spent"].as_f64().is_some_and(|e| e > 0.0), "{r}");
    }
    let round = &history[0];
    let k = round["participants"].as_array().unwrap().len();
    assert!(k >= 4, "{status}");

    // The noise-free round 1: Σ clip_C(Δᵢ) over the participants, over m = 6.
    let spec = JobSpec::from_toml(&spec_text).unwrap();
    let (initial, ids, deltas) = round_one_deltas(&dir, &job, &spec, N);
    let participants: Vec<u64> = round["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let mut sum = vec![0.0f64; initial.len()];
    for (id, d) in ids.iter().zip(deltas) {
        if participants.contains(id) {
            let mut d = d;
            flotilla_core::dp::clip_delta(&mut d, c);
            for (s, x) in sum.iter_mut().zip(&d) {
                *s += f64::from(*x);
            }
        }
    }
    let sha = round["metrics"]["model_sha256"].as_str().unwrap();
    let committed = model_blob(&dir.join("server"), 1, sha);
    let expected_std = sigma * c * (k as f64 / 4.0).sqrt() / N as f64;
    let residual: Vec<f64> = committed
        .iter()
        .zip(&initial)
        .zip(&sum)
        .map(|((m, g), s)| f64::from(*m) - (f64::from(*g) + s / N as f64))
        .collect();
    let n = residual.len() as f64;
    let mean = residual.iter().sum::<f64>() / n;
    let sd = (residual.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // 650 coordinates: the sample std is within ~3% (1σ) of the truth; 15% is a wide but telling margin
    // (no noise, or the server's σC/m instead of the shares, or a √m sizing would all be far off).
    assert!(
        (sd / expected_std - 1.0).abs() < 0.15,
        "residual std {sd} vs expected {expected_std} (k = {k})"
    );
    assert!(
        mean.abs() < 4.0 * expected_std / n.sqrt(),
        "residual mean {mean}"
    );
    drop(co);
    let _ = std::fs::remove_dir_all(&dir);
}
