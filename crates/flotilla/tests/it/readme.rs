//! The README's "real federation" block, run exactly as written, and `examples/federation.sh`
//! stopping everything it started on Ctrl-C.
//!
//! Each run gets a fresh work directory (`FLOTILLA_DIR`) and free ports; afterwards no process
//! whose command line mentions that directory may be alive.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, workspace_root};

/// The line in README.md that the tested federation block follows.
const MARKER: &str = "<!-- test: federation -->";

/// The fenced ```sh block right after [`MARKER`] (blank lines in between are allowed).
fn readme_block(readme: &str) -> Result<String, String> {
    marked_block(readme, MARKER)
}

/// The fenced ```sh block right after the line `marker` (blank lines in between are allowed).
fn marked_block(readme: &str, marker: &str) -> Result<String, String> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != marker);
    if lines.next().is_none() {
        return Err(format!(
            "README.md has no `{marker}` line: the block is not marked for this test"
        ));
    }
    let mut lines = lines.skip_while(|l| l.trim().is_empty());
    if lines.next().map(str::trim) != Some("```sh") {
        return Err(format!(
            "the line after `{marker}` in README.md must open a ```sh block"
        ));
    }
    let mut block = String::new();
    for line in lines {
        if line.trim() == "```" {
            return Ok(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    Err(format!(
        "the ```sh block after `{marker}` in README.md is not closed"
    ))
}

/// Removes the variables `cargo test` sets for this test (`CARGO`, `CARGO_MANIFEST_DIR`, …) from
/// `cmd`'s environment: a `cargo build` run with them sees other compile-time environment values and
/// rebuilds part of the release tree, which the user's next build then rebuilds again.
fn without_cargo_test_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = matches!(
            key.as_str(),
            "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_BUILD_JOBS"
        );
        if (key == "CARGO" || key.starts_with("CARGO_")) && !keep {
            cmd.env_remove(&key);
        }
    }
}

/// A fresh, empty directory for one run.
fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-readme-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A shell run in its own process group, killed as a whole when dropped (a failed test leaves
/// nothing behind).
struct Script {
    child: Child,
}

impl Script {
    /// `bash ARGS` in the workspace root with `FLOTILLA_DIR=dir/fl`, free ports and the
    /// `extra_env`; stdout and stderr go to `dir/out.log` and `dir/err.log`.
    fn start(dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> Script {
        // Through `env --default-signal=INT`: a test runner started in the background (`cmd &` in a
        // script, nohup) ignores SIGINT, an ignored signal stays ignored across exec, and bash
        // cannot trap a signal ignored on entry — the script must see Ctrl-C as a terminal sends it.
        let mut cmd = Command::new("env");
        cmd.args(["--default-signal=INT", "bash"])
            .args(args)
            .current_dir(workspace_root())
            .process_group(0)
            .stdin(Stdio::null());
        without_cargo_test_env(&mut cmd);
        // The run must not depend on the caller's settings.
        for var in [
            "FLOTILLA",
            "FLOTILLA_CLIENTS",
            "FLOTILLA_JOB",
            "FLOTILLA_ADMIN_TOKEN",
            "FLOTILLA_ADMIN_URL",
            "FLOTILLA_CA_CERT",
            "FLOTILLA_OPERATE",
            "FLOTILLA_HOLD",
            "FLOTILLA_GOVERN",
            "FLOTILLA_TOKEN",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("FLOTILLA_DIR", dir.join("fl"))
            .env("FLOTILLA_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env(
                "FLOTILLA_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "FLOTILLA_METRICS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env(
                "FLOTILLA_PROMETHEUS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .envs(extra_env.iter().copied())
            .stdout(std::fs::File::create(dir.join("out.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("err.log")).unwrap());
        Script {
            child: cmd.spawn().expect("bash runs"),
        }
    }

    /// Waits up to `timeout` for the shell to exit; `None` if it is still running.
    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // The whole group: the shell and every process it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// Live processes other than this one (zombies have no command line left) for which `keep(proc
/// entry, command line)` holds, as `pid: command line`.
fn processes(keep: impl Fn(&Path, &str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end while it is being read: its files vanish, which is fine.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if pid != std::process::id() && !raw.is_empty() && keep(&entry.path(), &cmdline) {
            found.push(format!("{pid}: {}", cmdline.trim_end()));
        }
    }
    found
}

/// Processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    processes(|_, cmdline| cmdline.contains(needle))
}

/// Processes whose working directory is `dir` (the how-to guide's commands use relative paths).
fn processes_in(dir: &Path) -> Vec<String> {
    processes(|entry, _| std::fs::read_link(entry.join("cwd")).ok().as_deref() == Some(dir))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs README.md's ```sh block after `marker` as written (`bash -euo pipefail -c`) in a fresh work
/// directory `name`, and fails the test, with both logs, unless it exits 0 within 10 minutes.
/// Returns the script (its process group is killed when dropped), the work directory, stdout and
/// stderr.
fn run_readme_block(marker: &str, name: &str) -> (Script, PathBuf, String, String) {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let block = marked_block(&readme, marker).unwrap_or_else(|e| panic!("{e}"));
    let dir = work_dir(name);
    let mut script = Script::start(&dir, &["-euo", "pipefail", "-c", &block], &[]);
    let status = script.wait_for(Duration::from_secs(600));
    let (out, err) = (read(&dir.join("out.log")), read(&dir.join("err.log")));
    let status = status.unwrap_or_else(|| {
        panic!("the README block ran for over 10 minutes; stdout:\n{out}\nstderr:\n{err}")
    });
    assert!(
        status.success(),
        "the README block failed ({status}); stdout:\n{out}\nstderr:\n{err}"
    );
    (script, dir, out, err)
}

#[test]
fn readme_federation_block_runs_as_written_and_leaves_no_process() {
    let (script, dir, out, _) = run_readme_block(MARKER, "block");
    assert!(
        out.lines()
            .any(|l| l.starts_with("federation finished: job ")
                && l.contains(" completed; trained model in ")),
        "the output does not show the job completed:\n{out}"
    );
    let left = processes_mentioning(&dir);
    assert!(
        left.is_empty(),
        "processes left behind by the README block: {left:#?}"
    );
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

/// README's "Operate it" block: the federation with the metrics listener and a real Prometheus
/// (Debian's `prometheus`, which `.ci/run` installs) scraping it with the shipped alert rules; the
/// script itself checks that Prometheus saw every committed round.
#[test]
fn readme_operate_block_runs_as_written() {
    let has_prometheus = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_prometheus && std::env::var_os("FLOTILLA_REQUIRE_PROMETHEUS").is_none() {
        eprintln!("skipped: `prometheus` is not installed (apt-get install prometheus)");
        return;
    }
    let (script, dir, out, err) = run_readme_block("<!-- test: operate -->", "operate");
    assert!(
        out.contains("readyz: ") && out.contains("console: https://"),
        "no probe or console line:\n{out}"
    );
    let seen = out
        .lines()
        .find(|l| l.starts_with("prometheus: flotilla_rounds_committed_total"))
        .unwrap_or_else(|| panic!("Prometheus was not asked:\n{out}\n{err}"));
    let (left, right) = seen.split_once("; the job committed ").unwrap();
    let rounds: u64 = right.trim_end_matches(" rounds").parse().unwrap();
    assert!(rounds > 0, "{seen}");
    assert!(left.ends_with(&format!("= {rounds}")), "{seen}");
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

/// README's "Govern it" block: principals, approval by another person, a Cedar policy, a signed
/// audit log verified by an auditor, and the job's evidence pack — the script fails if alice could
/// approve her own job; here the evidence pack is checked to name bob's approval and the policy.
#[test]
fn readme_govern_block_runs_as_written() {
    let (script, dir, out, err) = run_readme_block("<!-- test: govern -->", "govern");
    assert!(
        out.contains("is pending_approval") || out.contains(": pending_approval"),
        "the job did not wait for approval:\n{out}\n{err}"
    );
    assert!(out.contains("alice may not approve it"), "{out}");
    assert!(
        out.contains("ok: "),
        "the audit log did not verify:\n{out}\n{err}"
    );
    let pack = read(&dir.join("fl/evidence/evidence.json"));
    let pack: serde_json::Value = serde_json::from_str(&pack).expect("evidence.json");
    let decisions = pack["approvals"]["decisions"]
        .as_array()
        .expect("decisions");
    assert_eq!(decisions.len(), 1, "{}", pack["approvals"]);
    assert_eq!(decisions[0]["decision"], "approved");
    assert_eq!(decisions[0]["by"], "principal:bob");
    assert_eq!(
        pack["policies"]["policies"].as_array().map(Vec::len),
        Some(1)
    );
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's "Ship it" block: the model lifecycle on the federation of step 2 — register,
/// federated evaluation by cohort, gate, production, a worse candidate refused, export, a client
/// pulling the production model.
#[test]
fn readme_ship_block_runs_as_written() {
    let (script, dir, out, err) = run_readme_block("<!-- test: ship -->", "ship");
    assert!(out.contains("digits@1"), "not registered:\n{out}\n{err}");
    assert!(
        out.contains("region=eu") && out.contains("region=us"),
        "no cohorts:\n{out}"
    );
    assert!(
        out.contains("digits@2 not promoted") && out.contains("max_regression"),
        "the gate did not refuse digits@2 naming the rule:\n{out}\n{err}"
    );
    assert!(out.contains("pulled digits@1"), "no pull:\n{out}\n{err}");
    let exported = std::fs::read(dir.join("fl/digits-v1.safetensors")).expect("export");
    let pulled = std::fs::read(dir.join("fl/pulled.safetensors")).expect("pull");
    let tensors = |b: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(b).expect("safetensors");
        let mut t: Vec<(String, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.data().to_vec()))
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        tensors(&exported),
        tensors(&pulled),
        "export and pull differ"
    );
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn federation_script_stops_everything_on_ctrl_c() {
    let dir = work_dir("sigint");
    let fl = dir.join("fl");
    let mut script = Script::start(
        &dir,
        &["examples/federation.sh"],
        &[("FLOTILLA", bin()), ("FLOTILLA_CLIENTS", "2")],
    );
    // Interrupt once everything is started: the server is ready and both clients were launched.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(fl.join("server.ready").exists()
        && read(&dir.join("out.log")).contains("started 2 clients"))
    {
        if let Some(status) = script.child.try_wait().unwrap() {
            panic!(
                "the script exited early ({status}): {}{}",
                read(&dir.join("out.log")),
                read(&dir.join("err.log"))
            );
        }
        assert!(
            Instant::now() < deadline,
            "the federation did not start; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !processes_mentioning(&fl).is_empty(),
        "the server and clients run"
    );
    script.signal("-INT");
    let status = script.wait_for(Duration::from_secs(15));
    let out = read(&dir.join("out.log"));
    let status =
        status.unwrap_or_else(|| panic!("the script did not exit within 15 s of SIGINT:\n{out}"));
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after Ctrl-C; stdout:\n{out}"
    );
    assert!(out.contains("stopping 3 processes"), "{out}");
    let left = processes_mentioning(&fl);
    assert!(
        left.is_empty(),
        "processes left behind after SIGINT: {left:#?}"
    );
    // The server was stopped cleanly (SIGTERM, not SIGKILL): it removed its ready file.
    assert!(
        !fl.join("server.ready").exists(),
        "the server did not shut down cleanly:\n{}",
        read(&fl.join("server.log"))
    );
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_block_is_found_only_after_the_marker() {
    let readme =
        format!("# x\n\n```sh\nfalse\n```\n{MARKER}\n\n```sh\necho one\necho two\n```\nmore\n");
    assert_eq!(readme_block(&readme).unwrap(), "echo one\necho two\n");
    assert!(
        readme_block("```sh\necho\n```\n")
            .unwrap_err()
            .contains("no `<!-- test: federation -->` line")
    );
    assert!(
        readme_block(&format!("{MARKER}\ntext\n```sh\n```\n"))
            .unwrap_err()
            .contains("must open a ```sh block")
    );
    assert!(
        readme_block(&format!("{MARKER}\n```sh\necho\n"))
            .unwrap_err()
            .contains("not closed")
    );
}

/// Every ```sh block of a Markdown file, in order, as one script.
fn all_sh_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        match (inside, line.trim()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, _) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

#[test]
fn readme_simulation_block_runs_as_written() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let block = marked_block(&readme, "<!-- test: simulate -->").unwrap_or_else(|e| panic!("{e}"));
    let dir = work_dir("simulate");
    let mut script = Script::start(&dir, &["-euo", "pipefail", "-c", &block], &[]);
    let status = script
        .wait_for(Duration::from_secs(600))
        .expect("the simulation block ran for over 10 minutes");
    let (out, err) = (read(&dir.join("out.log")), read(&dir.join("err.log")));
    assert!(
        status.success(),
        "the README simulation block failed ({status}); stdout:\n{out}\nstderr:\n{err}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&read(&workspace_root().join("results/digits.json")))
            .expect("results/digits.json is JSON");
    let acc = results["final_accuracy"].as_f64().expect("final_accuracy");
    assert!(
        acc > 0.8,
        "the README promises a converging federation; final accuracy {acc}"
    );
    assert!(
        workspace_root().join("results/digits.svg").exists(),
        "the convergence plot is written"
    );
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/how-to/run-a-federation.md, every command block in order, as written: on the ports it names
/// (7070, 7443), in a fresh directory that holds only links to the built `target/` and `examples/`.
#[test]
fn how_to_run_a_federation_by_hand_runs_as_written() {
    for port in [7070, 7443] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: the how-to guide's commands use it; stop what listens there"
        );
    }
    let guide =
        std::fs::read_to_string(workspace_root().join("docs/how-to/run-a-federation.md")).unwrap();
    let script = all_sh_blocks(&guide);
    assert!(
        script.contains("job download"),
        "the guide ends with the model downloaded:\n{script}"
    );
    // The guide assumes a release build, as it says.
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release"])
        .current_dir(workspace_root());
    without_cargo_test_env(&mut build);
    let built = build.status().unwrap();
    assert!(built.success(), "cargo build --release");
    let dir = work_dir("how-to");
    let root = workspace_root().canonicalize().unwrap();
    for link in ["target", "examples"] {
        std::os::unix::fs::symlink(root.join(link), dir.join(link)).unwrap();
    }
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .process_group(0)
        .stdin(Stdio::null());
    for var in [
        "FLOTILLA_ADMIN_TOKEN",
        "FLOTILLA_ADMIN_URL",
        "FLOTILLA_CA_CERT",
        "FLOTILLA_ADMIN_WAIT",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdout(std::fs::File::create(dir.join("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("err.log")).unwrap());
    let mut script = Script {
        child: cmd.spawn().unwrap(),
    };
    let status = script.wait_for(Duration::from_secs(600));
    let (out, err) = (read(&dir.join("out.log")), read(&dir.join("err.log")));
    let status = status.unwrap_or_else(|| {
        panic!("the guide ran for over 10 minutes; stdout:\n{out}\nstderr:\n{err}")
    });
    let server_log = read(&dir.join("fl/server.log"));
    assert!(
        status.success(),
        "the guide failed ({status}); stdout:\n{out}\nstderr:\n{err}\nserver log:\n{server_log}"
    );
    let model =
        std::fs::read(dir.join("fl/model.safetensors")).expect("the guide downloads the model");
    assert!(
        model.len() > 64 * 10 * 4,
        "a logistic-regression model of digits is at least 64×10 f32s"
    );
    assert!(
        out.contains("completed"),
        "job status says completed:\n{out}"
    );
    // `kill $(jobs -p)` stops the server and the clients; they exit cleanly within moments.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_in(&dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = processes_in(&dir);
    assert!(
        left.is_empty(),
        "processes left behind by the guide: {left:#?}"
    );
    drop(script);
    let _ = std::fs::remove_dir_all(&dir);
}
