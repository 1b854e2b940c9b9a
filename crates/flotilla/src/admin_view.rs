//! Human renderings of the admin API's answers: aligned tables, local times with "3 min ago",
//! rounded numbers with units. Pure functions from typed answers to text, so they are tested on
//! fixed JSON; `admin_cmd` decides between these and `--json`.

use chrono::{DateTime, Local, TimeZone, Utc};
use serde::Deserialize;

// ----- typed answers --------------------------------------------------------------------------

// The job answers are the coordinator's own types, so the two cannot drift apart.
pub use flotilla_coordinator::api::{JobStatus, JobSummary};

/// One client as `GET /v1/clients` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientEntry {
    pub client_id: u64,
    #[serde(default)]
    pub name: Option<String>,
    pub tenant: String,
    pub revoked: bool,
    pub created_at_ms: i64,
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
    #[serde(default)]
    pub credential_expires_at_ms: Option<i64>,
}

// ----- times and numbers -------------------------------------------------------------------------

/// The clock a rendering is made against: "now" and whether to show UTC (tests) or local time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_ms: i64,
    pub utc: bool,
}

impl Clock {
    /// The real clock, local time.
    pub fn local() -> Self {
        Clock {
            now_ms: Utc::now().timestamp_millis(),
            utc: false,
        }
    }

    /// `2026-12-06 14:03:12`, in local time (or UTC, then suffixed `UTC`).
    pub fn absolute(&self, ms: i64) -> String {
        let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) else {
            return format!("{ms} ms");
        };
        if self.utc {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        } else {
            Local
                .from_utc_datetime(&t.naive_utc())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        }
    }

    /// `3 min ago`, `in 42 s`, `just now`.
    pub fn relative(&self, ms: i64) -> String {
        let d = ms - self.now_ms;
        if d.abs() < 1000 {
            return "just now".into();
        }
        let span = duration_words(d.unsigned_abs());
        if d < 0 {
            format!("{span} ago")
        } else {
            format!("in {span}")
        }
    }

    /// `2026-12-06 14:03:12 (3 min ago)`.
    pub fn both(&self, ms: i64) -> String {
        format!("{} ({})", self.absolute(ms), self.relative(ms))
    }
}

/// A coarse duration for people: `42 s`, `3 min`, `2 h 5 min`, `4 d`.
pub fn duration_words(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => format!("{} d", s / 86_400),
    }
}

/// A precise duration for round times: `850 ms`, `2.1 s`, `1 min 03 s`.
pub fn duration_short(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// `512 B`, `203.7 KiB`, `1.2 GiB`.
pub fn bytes_human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `52,138`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number to about four significant digits, without a wall of decimals: `0.3123`, `12.35`,
/// `1.2e-5`.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// Text from the coordinator (names, reasons: other people's input) made safe for a terminal:
/// control characters and bidi controls are escaped, so a name cannot move the cursor, forge lines
/// or reorder what the operator reads.
pub fn clean(s: &str) -> String {
    crate::log_escape::escape_control(s).into_owned()
}

// ----- tables ----------------------------------------------------------------------------------

/// A plain aligned table: a header row, then rows; numeric columns right-aligned.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns as `(header, right-aligned)`.
    pub fn new(cols: &[(&'static str, bool)]) -> Self {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(w.len()) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = self.line(&w, self.headers.iter().copied());
        for r in &self.rows {
            out.push_str(&self.line(&w, r.iter().map(String::as_str)));
        }
        out
    }

    fn line<'a>(&self, w: &[usize], cells: impl Iterator<Item = &'a str>) -> String {
        let mut out = String::new();
        for (i, c) in cells.enumerate().take(w.len()) {
            let pad = " ".repeat(w[i] - c.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if self.right[i] {
                out.push_str(&pad);
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_owned() + "\n"
    }
}

// ----- renderings -------------------------------------------------------------------------------

/// `job list`.
pub fn job_list(jobs: &[JobSummary], clock: &Clock) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let mut t = Table::new(&[
        ("ID", true),
        ("NAME", false),
        ("TENANT", false),
        ("STATE", false),
        ("ROUNDS", true),
        ("CREATED", false),
        ("UPDATED", false),
    ]);
    for j in jobs {
        t.row(vec![
            j.job_id.to_string(),
            clean(&j.name),
            clean(&j.tenant),
            match &j.halted {
                Some(_) if j.state == "running" => "running (halted)".to_owned(),
                _ => j.state.clone(),
            },
            format!("{}/{}", j.rounds_completed, j.rounds_total),
            clock.absolute(j.created_at_ms),
            clock.relative(j.updated_at_ms),
        ]);
    }
    t.render()
}

/// `client list`.
pub fn client_list(clients: &[ClientEntry], clock: &Clock) -> String {
    if clients.is_empty() {
        return "no clients enrolled\n".into();
    }
    let mut t = Table::new(&[
        ("ID", true),
        ("NAME", false),
        ("TENANT", false),
        ("ENROLLED", false),
        ("LAST SEEN", false),
        ("CREDENTIAL EXPIRES", false),
        ("REVOKED", false),
    ]);
    for c in clients {
        let expires = match c.credential_expires_at_ms {
            None => "never".to_owned(),
            Some(ms) if ms <= clock.now_ms => format!("expired {}", clock.relative(ms)),
            Some(ms) => clock.relative(ms),
        };
        t.row(vec![
            c.client_id.to_string(),
            c.name.as_deref().map(clean).unwrap_or_else(|| "-".into()),
            clean(&c.tenant),
            clock.absolute(c.created_at_ms),
            c.last_seen_ms
                .map(|ms| clock.relative(ms))
                .unwrap_or_else(|| "never".into()),
            expires,
            if c.revoked { "yes" } else { "no" }.to_owned(),
        ]);
    }
    t.render()
}

/// How many committed rounds `job status` shows.
pub const STATUS_ROUNDS: usize = 10;

/// `job status`.
pub fn job_status(s: &JobStatus, clock: &Clock) -> String {
    let j = &s.job;
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    kv(
        "job",
        format!(
            "{} ({}), tenant {}",
            clean(&j.name),
            j.job_id,
            clean(&j.tenant)
        ),
    );
    let reason = s
        .job
        .reason
        .as_deref()
        .or(s.stopped_reason.as_deref())
        .or(s.current.as_ref().and_then(|c| c.halted.as_deref()));
    kv(
        "state",
        match reason {
            Some(r) => format!("{}: {}", j.state, clean(r)),
            None => j.state.clone(),
        },
    );
    let pct = if j.rounds_total > 0 {
        100.0 * j.rounds_completed as f64 / j.rounds_total as f64
    } else {
        0.0
    };
    kv(
        "progress",
        format!(
            "{}/{} rounds committed ({pct:.0} %)",
            j.rounds_completed, j.rounds_total
        ),
    );
    if let Some(c) = &s.current
        && j.state == "running"
    {
        let mut cur = format!(
            "round {}/{}, attempt {}",
            c.round, j.rounds_total, c.attempt
        );
        cur.push_str(&format!(", {}", clean(&c.phase)));
        kv("current", cur);
        kv(
            "clients",
            format!(
                "{} available, {} needed",
                c.available_clients, c.needed_clients
            ),
        );
        if let Some(d) = c.deadline_ms {
            kv("deadline", clock.both(i64::try_from(d).unwrap_or(i64::MAX)));
        }
    }
    kv("started", clock.both(j.created_at_ms));
    kv("updated", clock.both(j.updated_at_ms));
    if let Some(eps) = s.epsilon_spent {
        let delta = s
            .delta
            .map(|d| format!(" at δ {}", num(d)))
            .unwrap_or_default();
        let budget = s
            .privacy
            .as_ref()
            .and_then(|p| p.max_epsilon)
            .map(|m| format!(" of a budget of {}", num(m)))
            .unwrap_or_default();
        kv("privacy", format!("ε {} spent{delta}{budget}", num(eps)));
    }
    if s.history.is_empty() {
        out.push_str("\nno round committed yet\n");
        return out;
    }
    out.push('\n');
    out.push_str(&rounds_table(s, clock));
    // Federated evaluation (clients' own held-out data): the latest, with the version it is of,
    // which is the one before its round's.
    if let Some((r, f)) = s
        .history
        .iter()
        .rev()
        .find_map(|r| r.metrics.federated_eval.as_ref().map(|f| (r, f)))
    {
        let acc = f
            .accuracy
            .map(|a| format!("accuracy {:.1} %, ", 100.0 * a))
            .unwrap_or_default();
        let loss = f.loss.map(num).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "\nfederated  eval of version {} by {} client{} (round {}): {acc}loss {loss}, {} samples\n",
            f.model_version,
            f.clients,
            if f.clients == 1 { "" } else { "s" },
            r.round,
            thousands(f.samples),
        ));
    }
    let last = s.history.last().map(|r| r.round).unwrap_or(0);
    out.push_str(&format!(
        "\nmodel      round {last} is downloadable: flotilla job download {} --out {}-round{last}.safetensors\n",
        j.job_id,
        file_stem(&j.name)
    ));
    out
}

/// The last [`STATUS_ROUNDS`] committed rounds.
fn rounds_table(s: &JobStatus, clock: &Clock) -> String {
    let h = &s.history;
    let skip = h.len().saturating_sub(STATUS_ROUNDS);
    // Federated evaluation columns only for jobs whose clients report one: the model the round
    // started from, on the clients' own held-out data.
    let fed = h[skip..].iter().any(|r| r.metrics.federated_eval.is_some());
    let mut cols = vec![
        ("ROUND", true),
        ("ATTEMPT", true),
        ("CLIENTS", true),
        ("ACCURACY", true),
        ("EVAL LOSS", true),
    ];
    if fed {
        cols.extend([("FED ACCURACY", true), ("FED LOSS", true)]);
    }
    cols.extend([
        ("TRAIN LOSS", true),
        ("DURATION", true),
        ("COMMITTED", false),
    ]);
    let mut t = Table::new(&cols);
    for (i, r) in h.iter().enumerate().skip(skip) {
        let prev = if i == 0 {
            s.job.created_at_ms
        } else {
            h[i - 1].committed_at_ms
        };
        let dash = || "-".to_owned();
        let eval = r.metrics.eval.as_ref();
        let pct = |a: f64| format!("{:.1} %", 100.0 * a);
        let mut cells = vec![
            r.round.to_string(),
            r.attempt.to_string(),
            r.participants.len().to_string(),
            eval.and_then(|e| e.eval_accuracy)
                .map(pct)
                .unwrap_or_else(dash),
            eval.and_then(|e| e.eval_loss).map(num).unwrap_or_else(dash),
        ];
        if fed {
            let f = r.metrics.federated_eval.as_ref();
            cells.push(f.and_then(|f| f.accuracy).map(pct).unwrap_or_else(dash));
            cells.push(f.and_then(|f| f.loss).map(num).unwrap_or_else(dash));
        }
        cells.extend([
            r.metrics.train_loss.map(num).unwrap_or_else(dash),
            duration_short(u64::try_from(r.committed_at_ms - prev).unwrap_or(0)),
            clock.absolute(r.committed_at_ms),
        ]);
        t.row(cells);
    }
    let mut out = t.render();
    if skip > 0 {
        out.push_str(&format!(
            "(the last {STATUS_ROUNDS} of {} committed rounds; --json has them all)\n",
            h.len()
        ));
    }
    out
}

/// A job name as a file name: letters, digits, `-` and `_`; anything else becomes `-`.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.trim_matches('-').is_empty() {
        "model".into()
    } else {
        s
    }
}

#[cfg(test)]
#[path = "admin_view_tests.rs"]
mod tests;
