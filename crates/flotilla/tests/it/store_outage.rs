//! Storage faults with real processes: a `flotilla server` whose PostgreSQL stops for 100 s, whose
//! blob directory fills up, and which is killed again and again within one round. The coordinator
//! fails fast while the store is down, resumes halted jobs by itself once it is back (no restart),
//! leaves no orphan model blobs, and never issues a (round, attempt) twice.

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A digits job for `clients` clients per round that moves quickly from round to round.
fn job_spec(rounds: u64, clients: usize, min_clients: usize) -> String {
    let base = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml")).unwrap();
    base.replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {clients}"),
        )
        .replace("min_clients = 10", &format!("min_clients = {min_clients}"))
        .replace("deadline_seconds = 60", "deadline_seconds = 30")
        .replace("min_report_fraction = 0.8", "min_report_fraction = 1.0")
        .replace("[model]", "selection_window_ms = 300\n\n[model]")
}

fn rounds_completed(s: &Value) -> u64 {
    s["rounds_completed"].as_u64().unwrap_or(0)
}

/// Lines of the server's log files (all incarnations) that contain `needle`.
fn log_lines(f: &Federation, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..f.server.0.len() {
        let text =
            std::fs::read_to_string(f.dir.join(format!("server-{i}.log"))).unwrap_or_default();
        out.extend(
            text.lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned),
        );
    }
    out
}

/// Model blob files of a job (`job-<id>/v<version>-<sha>.bin`) and anything else left in its
/// directory (staging files of interrupted writes included).
fn blob_files(blobs: &Path, job: &str) -> Vec<String> {
    match std::fs::read_dir(blobs.join(format!("job-{job}"))) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The committed rounds' blob keys are exactly the files in the job's blob directory.
fn assert_no_orphan_blobs(f: &Federation, blobs: &Path, job: &str, s: &Value) {
    let history = s["history"].as_array().expect("history");
    let mut files = blob_files(blobs, job);
    files.sort();
    assert_eq!(
        files.len(),
        history.len(),
        "one blob per committed round, no orphans: {files:?}; logs in {}",
        f.dir.display()
    );
    let rounds: Vec<u64> = history
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "each round exactly once: {s}"
    );
    let mut versions: Vec<u64> = files
        .iter()
        .filter_map(|n| n.strip_prefix('v')?.split_once('-')?.0.parse().ok())
        .collect();
    versions.sort();
    assert_eq!(
        versions, rounds,
        "the blobs are the committed versions: {files:?}"
    );
}

/// `flotilla job list` while the store is down: a quick, clear failure.
fn assert_fails_fast(f: &Federation, args: &[&str]) {
    let t = Instant::now();
    let out = f.admin_cli(args);
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded during the outage: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        took < Duration::from_secs(5),
        "{args:?} took {took:?} during the outage: {stderr}"
    );
    assert!(
        stderr.contains("503") && stderr.contains("store unavailable"),
        "{args:?}: {stderr}"
    );
    eprintln!("{args:?} during the outage: {took:?}: {}", stderr.trim());
}

// ----- a private PostgreSQL cluster ---------------------------------------------------------------

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of its own (the machine's shared one serves other tests): initdb'd into a
/// temporary directory, on a free port. Stopped and removed when dropped.
struct PrivatePg {
    dir: PathBuf,
    port: u16,
}

impl PrivatePg {
    /// `None` (with the reason) if PostgreSQL's binaries are not installed or initdb fails.
    fn start() -> Result<Self, String> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            return Err(format!("{PG_BIN}/initdb is missing"));
        }
        let dir = std::env::temp_dir().join(format!("flotilla-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        let pg = PrivatePg {
            dir,
            port: free_port(),
        };
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(pg.dir.join("data")))?;
        pg.ctl_start()?;
        Ok(pg)
    }

    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"));
        c.args(args);
        c
    }

    fn ctl_start(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let out = self
            .ctl(&["-w", "-o", &opts, "-l", log.to_str().unwrap(), "start"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn stop(&self) {
        let out = self.ctl(&["-w", "-m", "fast", "stop"]).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.ctl(&["-w", "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn postgres_outage_fails_fast_and_the_job_resumes_without_a_restart() {
    let pg = match PrivatePg::start() {
        Ok(pg) => pg,
        Err(why) => {
            eprintln!("skipping: could not start a private PostgreSQL cluster: {why}");
            return;
        }
    };
    let mut f = Federation::with_server(
        "pg-outage",
        Some(pg.url()),
        &[],
        &[("RUST_LOG", "warn,flotilla_coordinator::heal=info")],
    );
    // Four clients for rounds of three: the one whose upload met the outage may back off for a
    // while; the job resumes with the others.
    f.start_clients(4);
    let job = f.submit(&job_spec(40, 3, 3));
    let before = f.wait_for(&job, "round 2 committed", Duration::from_secs(180), |s| {
        rounds_completed(s) >= 2
    });
    assert_eq!(
        before["state"], "running",
        "the job must outlast the outage: {before}"
    );

    pg.stop();
    let stopped = Instant::now();
    // Fails fast, all through the outage.
    for at in [5u64, 50, 95] {
        while stopped.elapsed() < Duration::from_secs(at) {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_fails_fast(&f, &["job", "list"]);
        assert_fails_fast(&f, &["job", "status", &job]);
    }
    while stopped.elapsed() < Duration::from_secs(100) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The next commit failed: halted once, logged once (not once per retry).
    let halts = log_lines(&f, "job halted");
    assert_eq!(halts.len(), 1, "one ERROR at the halt: {halts:#?}");
    assert!(
        halts[0].contains("ERROR") && halts[0].contains("could not persist round"),
        "{}",
        halts[0]
    );

    pg.ctl_start().expect("restart PostgreSQL");
    let back = Instant::now();
    let durable = rounds_completed(&f.wait_for(
        &job,
        "the store answering",
        Duration::from_secs(10),
        |s| !s.is_null(),
    ));
    let s = f.wait_for(
        &job,
        "a round committed after the outage",
        Duration::from_secs(60),
        |s| rounds_completed(s) > durable,
    );
    let resumed = back.elapsed();
    eprintln!(
        "PostgreSQL back; round {} committed {resumed:?} later",
        rounds_completed(&s)
    );
    assert!(
        resumed < Duration::from_secs(10),
        "the job resumed {resumed:?} after PostgreSQL came back: {s}"
    );
    let heals = log_lines(&f, "job resumed from its last committed round");
    assert_eq!(heals.len(), 1, "one INFO at the heal: {heals:#?}");
    assert!(heals[0].contains("INFO"), "{}", heals[0]);

    let s = f.wait_for(&job, "completion", Duration::from_secs(300), completed);
    assert_no_orphan_blobs(&f, &f.dir.join("server/models"), &job, &s);
    assert_eq!(log_lines(&f, "job halted").len(), 1, "no further halt");
}

// ----- a full blob disk -------------------------------------------------------------------------

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(dir))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system of `path` up to all but `keep` bytes.
fn fill(path: &Path, keep: u64) -> std::fs::File {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xA5u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.flush();
    let len = std::fs::metadata(path).unwrap().len();
    file.set_len(len.saturating_sub(keep)).unwrap();
    file
}

#[test]
fn a_full_blob_disk_halts_the_job_until_space_is_freed() {
    let dir = std::env::temp_dir().join(format!("flotilla-e2e-{}-blobs-tmpfs", std::process::id()));
    let tmpfs = match Tmpfs::mount(dir.clone(), "2m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "skipping: could not mount a tmpfs at {}: {why}",
                dir.display()
            );
            return;
        }
    };
    let blobs = tmpfs.0.join("models");
    let mut f = Federation::with_server(
        "blob-full",
        None,
        &["--blob-url", blobs.to_str().unwrap()],
        &[("RUST_LOG", "warn,flotilla_coordinator::heal=info")],
    );
    f.start_clients(3);
    let job = f.submit(&job_spec(8, 3, 3));
    f.wait_for(&job, "round 1 committed", Duration::from_secs(180), |s| {
        rounds_completed(s) >= 1
    });
    // Room for about two more models (2.6 kB each, a 4 KiB page on tmpfs).
    let filler = tmpfs.0.join("filler");
    drop(fill(&filler, 8192));
    let s = f.wait_for(&job, "the job halted", Duration::from_secs(120), |s| {
        !s["current"]["halted"].is_null()
    });
    let cause = s["current"]["halted"].as_str().unwrap().to_owned();
    assert!(
        cause.contains("could not persist round") && cause.contains("No space left"),
        "{s}"
    );
    assert_eq!(s["state"], "running", "{s}");
    let halted_at = rounds_completed(&s);
    assert!(halted_at < 8, "{s}");
    // Shown to people: `job status` and `job list`.
    let status =
        String::from_utf8_lossy(&f.admin_cli(&["job", "status", &job]).stdout).into_owned();
    assert!(
        status.contains("running: halted: could not persist round")
            && status.contains("retrying every 2 s"),
        "{status}"
    );
    let list = String::from_utf8_lossy(&f.admin_cli(&["job", "list"]).stdout).into_owned();
    assert!(list.contains("running (halted)"), "{list}");
    // It stays halted while the disk is full, retried quietly.
    std::thread::sleep(Duration::from_secs(7));
    let s = f.status(&job);
    assert_eq!(rounds_completed(&s), halted_at, "{s}");
    assert!(!s["current"]["halted"].is_null(), "{s}");
    let halts = log_lines(&f, "job halted");
    assert_eq!(
        halts.len(),
        1,
        "one ERROR at the halt, none per retry: {halts:#?}"
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let s = f.wait_for(
        &job,
        "a round committed after space was freed",
        Duration::from_secs(60),
        |s| rounds_completed(s) > halted_at,
    );
    eprintln!(
        "space freed; round {} committed {:?} later",
        rounds_completed(&s),
        freed.elapsed()
    );
    assert!(
        freed.elapsed() < Duration::from_secs(10),
        "resumed {:?} after space was freed: {s}",
        freed.elapsed()
    );
    assert_eq!(
        log_lines(&f, "job resumed from its last committed round").len(),
        1
    );
    let s = f.wait_for(&job, "completion", Duration::from_secs(300), completed);
    assert_no_orphan_blobs(&f, &blobs, &job, &s);
    drop(f);
    drop(tmpfs);
}

// ----- attempts across incarnations -------------------------------------------------------------

#[test]
fn no_round_attempt_is_issued_by_two_incarnations() {
    let mut f = Federation::new("attempts", None);
    let token = f.last_line(&["enroll-token", "create", "--uses", "3", "--expires", "1h"]);
    let job = f.submit(&job_spec(2, 3, 3));
    let mut issued: Vec<(u64, u64)> = Vec::new();
    for incarnation in 0..4 {
        if incarnation > 0 {
            f.start_server();
        }
        // Clients that take their task and then train for minutes: the round cannot commit before
        // the coordinator is killed.
        for i in 0..3 {
            f.spawn_client_with(
                &format!("client-{i}"),
                &token,
                &format!("{i}/3"),
                &["--train-delay-ms", "600000"],
                "warn",
            );
        }
        f.wait_for(&job, "a cohort selected", Duration::from_secs(60), |s| {
            s["current"]["phase"] == "training"
        });
        // The selected clients come back for their tasks within a second (retry_after_ms = 500).
        std::thread::sleep(Duration::from_secs(2));
        let s = f.status(&job);
        assert_eq!(s["current"]["phase"], "training", "{s}");
        let pair = (
            s["current"]["round"].as_u64().unwrap(),
            s["current"]["attempt"].as_u64().unwrap(),
        );
        assert_eq!(rounds_completed(&s), 0, "{s}");
        eprintln!(
            "incarnation {incarnation} hands out round {} attempt {}",
            pair.0, pair.1
        );
        issued.push(pair);
        f.kill_server();
        for c in &mut f.clients.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        f.clients.0.clear();
    }
    let distinct: HashSet<_> = issued.iter().collect();
    assert_eq!(
        distinct.len(),
        issued.len(),
        "a (round, attempt) was issued twice: {issued:?}"
    );
    // The fifth incarnation commits the round with clients that train at once, at an attempt
    // above every one a dead incarnation issued.
    f.start_server();
    for i in 0..3 {
        f.spawn_client(&format!("client-{i}"), &token, &format!("{i}/3"));
    }
    let s = f.wait_for(&job, "completion", Duration::from_secs(180), completed);
    let committed = s["history"][0]["attempt"].as_u64().unwrap();
    assert!(
        issued.iter().all(|&(_, a)| a < committed),
        "round 1 committed at attempt {committed}, issued before: {issued:?}"
    );
}
