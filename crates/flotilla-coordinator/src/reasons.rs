//! Why a job is not making progress, in words: waiting for clients, retrying a round, the failures
//! clients reported, who cancelled it. The bookkeeping behind `reason` and `current` in the admin
//! API and behind the server's log lines about it. Everything here is bounded: client-sent reasons
//! are short, few distinct ones are kept per attempt, and few attempts are kept per job.

use std::collections::VecDeque;

use flotilla_core::round::AbandonCause;
use flotilla_proto::v1;

/// Longest reason a client may send with a task failure, bytes.
pub(crate) const MAX_CLIENT_REASON_BYTES: usize = 256;
/// Distinct reasons kept per round attempt; further ones are only counted.
pub(crate) const MAX_DISTINCT_REASONS: usize = 8;
/// Round attempts whose failures are kept per job (the most recent ones).
pub(crate) const MAX_ATTEMPTS_KEPT: usize = 4;
/// Distinct reasons named in a summary; the rest are counted.
const SUMMARY_REASONS: usize = 3;
/// Longest `by` of a cancellation, characters.
pub(crate) const MAX_CANCEL_BY_CHARS: usize = 64;
/// Longest `reason` of a cancellation, characters.
pub(crate) const MAX_CANCEL_REASON_CHARS: usize = 256;
/// A job waiting for clients is logged once it has waited this long (a round usually waits a
/// moment for its clients to check in again; that is not worth a line).
const WAIT_LOG_GRACE_MS: u64 = 5_000;
/// Afterwards, a changed count of available clients is logged at most this often.
const WAIT_LOG_INTERVAL_MS: u64 = 30_000;

/// Why a client gave up its task (`v1::FailureKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    TrainingFailed,
    DataIncompatible,
    DownloadFailed,
    Other,
}

impl FailureKind {
    /// The kind of a wire value; unknown values are refused, `UNSPECIFIED` is `Other`.
    pub(crate) fn from_wire(v: i32) -> Result<Self, String> {
        match v1::FailureKind::try_from(v) {
            Ok(v1::FailureKind::TrainingFailed) => Ok(Self::TrainingFailed),
            Ok(v1::FailureKind::DataIncompatible) => Ok(Self::DataIncompatible),
            Ok(v1::FailureKind::DownloadFailed) => Ok(Self::DownloadFailed),
            Ok(v1::FailureKind::Other | v1::FailureKind::Unspecified) => Ok(Self::Other),
            Err(_) => Err(format!("unknown failure kind {v}")),
        }
    }

    /// Machine-readable name, for logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::TrainingFailed => "training_failed",
            Self::DataIncompatible => "data_incompatible",
            Self::DownloadFailed => "download_failed",
            Self::Other => "other",
        }
    }

    /// What is shown when the client sent no words.
    fn default_text(self) -> &'static str {
        match self {
            Self::TrainingFailed => "training failed",
            Self::DataIncompatible => "the client's data does not fit the model",
            Self::DownloadFailed => "the model download failed",
            Self::Other => "the client gave up the task",
        }
    }
}

/// Characters that could change how a log line or a terminal shows what follows: control
/// characters and Unicode bidirectional overrides.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A client-sent failure reason as the coordinator keeps it: refused if longer than
/// [`MAX_CLIENT_REASON_BYTES`]; unsafe characters escaped (`\u{1b}`), runs of whitespace collapsed,
/// trimmed, cut to [`MAX_CLIENT_REASON_BYTES`] at a character boundary; the kind's default text
/// if nothing is left.
pub(crate) fn clean_client_reason(raw: &str, kind: FailureKind) -> Result<String, String> {
    if raw.len() > MAX_CLIENT_REASON_BYTES {
        return Err(format!(
            "reason is {} bytes; at most {MAX_CLIENT_REASON_BYTES} are accepted",
            raw.len()
        ));
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    let text = out.trim();
    if text.is_empty() {
        return Ok(kind.default_text().to_owned());
    }
    let mut end = text.len().min(MAX_CLIENT_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(text[..end].to_owned())
}

/// One distinct reason and how many clients gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReasonCount {
    kind: FailureKind,
    text: String,
    clients: u64,
}

/// The failures clients reported in one round attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AttemptFailures {
    round: u64,
    attempt: u32,
    /// At most [`MAX_DISTINCT_REASONS`], in order of first report.
    reasons: Vec<ReasonCount>,
    /// Reports whose reason was not among the kept ones once the list was full.
    others: u64,
}

/// Client-reported failures of a job's most recent round attempts (at most [`MAX_ATTEMPTS_KEPT`]
/// attempts × [`MAX_DISTINCT_REASONS`] reasons × [`MAX_CLIENT_REASON_BYTES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FailureBook {
    attempts: VecDeque<AttemptFailures>,
}

impl FailureBook {
    /// Counts one client's failure of `(round, attempt)`.
    pub(crate) fn record(&mut self, round: u64, attempt: u32, kind: FailureKind, text: &str) {
        let pos = self
            .attempts
            .iter()
            .position(|a| (a.round, a.attempt) == (round, attempt));
        let entry = match pos {
            Some(i) => &mut self.attempts[i],
            None => {
                if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
                    self.attempts.pop_front();
                }
                self.attempts.push_back(AttemptFailures {
                    round,
                    attempt,
                    reasons: Vec::new(),
                    others: 0,
                });
                self.attempts.back_mut().expect("just pushed")
            }
        };
        if let Some(r) = entry
            .reasons
            .iter_mut()
            .find(|r| r.kind == kind && r.text == text)
        {
            r.clients += 1;
        } else if entry.reasons.len() < MAX_DISTINCT_REASONS {
            entry.reasons.push(ReasonCount {
                kind,
                text: text.to_owned(),
                clients: 1,
            });
        } else {
            entry.others += 1;
        }
    }

    fn find(&self, round: u64, attempt: Option<u32>) -> Option<&AttemptFailures> {
        self.attempts
            .iter()
            .rev()
            .find(|a| a.round == round && attempt.is_none_or(|n| n == a.attempt))
    }

    /// "clients reported errors: A (3 clients); B (1 client)" for `(round, attempt)`, or for the
    /// latest attempt of `round` with failures when `attempt` is `None`.
    pub(crate) fn summary(&self, round: u64, attempt: Option<u32>) -> Option<String> {
        let a = self.find(round, attempt)?;
        let mut reasons: Vec<&ReasonCount> = a.reasons.iter().collect();
        // Most frequent first; ties in order of first report (the sort is stable).
        reasons.sort_by_key(|r| std::cmp::Reverse(r.clients));
        let clients = |n: u64| {
            if n == 1 {
                "1 client".to_owned()
            } else {
                format!("{n} clients")
            }
        };
        let mut parts: Vec<String> = reasons
            .iter()
            .take(SUMMARY_REASONS)
            .map(|r| format!("{} ({})", r.text, clients(r.clients)))
            .collect();
        let rest: u64 = reasons
            .iter()
            .skip(SUMMARY_REASONS)
            .map(|r| r.clients)
            .sum::<u64>()
            + a.others;
        if rest > 0 {
            parts.push(format!("other errors ({})", clients(rest)));
        }
        (!parts.is_empty()).then(|| format!("clients reported errors: {}", parts.join("; ")))
    }
}

/// "waiting for 20 available clients, 9 checked in".
pub(crate) fn waiting_text(needed: usize, available: usize) -> String {
    format!("waiting for {needed} available clients, {available} checked in")
}

/// What an abandoned attempt is called in `reason` and the log:
/// "round 3 attempt 2: 4 of 10 reports by the deadline (needed 8)".
pub(crate) struct Abandoned<'a> {
    pub round: u64,
    pub attempt: u32,
    pub reports: usize,
    pub needed: usize,
    /// Reports a full round takes (`clients_per_round`).
    pub wanted: usize,
    pub cause: AbandonCause,
    /// The machine's own words, for causes other than too few reports.
    pub machine_reason: &'a str,
    /// Whether the stage was closed by its deadline (rather than early, because every other
    /// selected client dropped out or reported a failure).
    pub at_deadline: bool,
}

impl Abandoned<'_> {
    pub(crate) fn text(&self) -> String {
        let Abandoned {
            round,
            attempt,
            reports,
            needed,
            wanted,
            ..
        } = *self;
        match self.cause {
            AbandonCause::TooFewReports if self.at_deadline => {
                format!(
                    "round {round} attempt {attempt}: {reports} of {wanted} reports by the deadline (needed {needed})"
                )
            }
            AbandonCause::TooFewReports => format!(
                "round {round} attempt {attempt}: {reports} of {wanted} reports (needed {needed}); the other selected clients dropped out or gave up"
            ),
            _ => format!("round {round} attempt {attempt}: {}", self.machine_reason),
        }
    }
}

/// The last abandoned attempt, shown while its round is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retry {
    pub round: u64,
    pub text: String,
}

/// When the job's wait for clients was last logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WaitLog {
    since_ms: Option<u64>,
    /// (available clients, when) of the last line.
    logged: Option<(usize, u64)>,
}

/// Abandoned attempts a running job remembers for its status (the most recent ones).
pub(crate) const MAX_ABANDONED_NOTES: usize = 32;

/// One abandoned attempt, as its status lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AbandonedNote {
    pub round: u64,
    pub attempt: u32,
    /// [`Abandoned::text`], with the failures clients reported.
    pub text: String,
    pub at_ms: u64,
}

/// Everything a running job remembers to explain itself (inside its lock).
#[derive(Debug, Clone, Default)]
pub(crate) struct JobNotes {
    pub failures: FailureBook,
    pub retry: Option<Retry>,
    /// The last [`MAX_ABANDONED_NOTES`] abandoned attempts, oldest first.
    pub abandoned: std::collections::VecDeque<AbandonedNote>,
    wait: WaitLog,
}

impl JobNotes {
    /// Remembers an abandoned attempt, forgetting the oldest beyond [`MAX_ABANDONED_NOTES`].
    pub(crate) fn note_abandoned(&mut self, note: AbandonedNote) {
        if self.abandoned.len() >= MAX_ABANDONED_NOTES {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(note);
    }

    /// Logs a wait for clients: once it has lasted [`WAIT_LOG_GRACE_MS`], then when the number of
    /// available clients changed, at most every [`WAIT_LOG_INTERVAL_MS`]; and its end, if it was
    /// logged. Call after every event.
    pub(crate) fn observe_wait(
        &mut self,
        job: u64,
        now_ms: u64,
        waiting: bool,
        available: usize,
        needed: usize,
    ) {
        if !waiting {
            if self.wait.logged.is_some() {
                tracing::info!(
                    job,
                    available,
                    needed,
                    "enough clients available; selecting the round's cohort"
                );
            }
            self.wait = WaitLog::default();
            return;
        }
        let since = *self.wait.since_ms.get_or_insert(now_ms);
        let due = match self.wait.logged {
            None => now_ms.saturating_sub(since) >= WAIT_LOG_GRACE_MS,
            Some((last, at)) => {
                last != available && now_ms.saturating_sub(at) >= WAIT_LOG_INTERVAL_MS
            }
        };
        if due {
            tracing::info!(
                job,
                available,
                needed,
                "{}",
                waiting_text(needed, available)
            );
            self.wait.logged = Some((available, now_ms));
        }
    }
}

/// "cancelled by alice: wrong dataset" from a cancel request's optional `by` and `reason`; an
/// error (for a 400) if either is too long or holds control characters.
pub(crate) fn cancel_text(by: Option<&str>, reason: Option<&str>) -> Result<String, String> {
    let check = |field: &str, v: Option<&str>, max: usize| -> Result<Option<String>, String> {
        let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let n = v.chars().count();
        if n > max {
            return Err(format!("{field}: at most {max} characters, got {n}"));
        }
        if v.chars().any(is_unsafe) {
            return Err(format!("{field}: must not contain control characters"));
        }
        Ok(Some(v.to_owned()))
    };
    let by = check("by", by, MAX_CANCEL_BY_CHARS)?;
    let reason = check("reason", reason, MAX_CANCEL_REASON_CHARS)?;
    let who = by.as_deref().unwrap_or("an admin");
    Ok(match reason {
        Some(r) => format!("cancelled by {who}: {r}"),
        None => format!("cancelled by {who}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_reasons_are_bounded_and_escaped() {
        let k = FailureKind::TrainingFailed;
        assert_eq!(
            clean_client_reason("input has 63 features, model expects 64", k).unwrap(),
            "input has 63 features, model expects 64"
        );
        assert_eq!(
            clean_client_reason("  a\n\n b\x1b[2J\u{202E}c ", k).unwrap(),
            "a b\\u{1b}[2J\\u{202e}c"
        );
        assert_eq!(clean_client_reason(" \n ", k).unwrap(), "training failed");
        assert!(clean_client_reason(&"x".repeat(257), k).is_err());
        // Escaping can only grow a reason up to the bound, never past it.
        let escaped = clean_client_reason(&"\x01".repeat(256), k).unwrap();
        assert!(escaped.len() <= MAX_CLIENT_REASON_BYTES && escaped.starts_with("\\u{1}"));
        assert!(FailureKind::from_wire(99).is_err());
        assert_eq!(FailureKind::from_wire(0).unwrap(), FailureKind::Other);
    }

    #[test]
    fn failure_book_keeps_few_reasons_and_attempts() {
        let mut b = FailureBook::default();
        for _ in 0..3 {
            b.record(
                1,
                1,
                FailureKind::DataIncompatible,
                "input has 63 features, model expects 64",
            );
        }
        b.record(1, 1, FailureKind::TrainingFailed, "loss is NaN");
        assert_eq!(
            b.summary(1, Some(1)).unwrap(),
            "clients reported errors: input has 63 features, model expects 64 (3 clients); loss is NaN (1 client)"
        );
        // Distinct reasons beyond the bound are counted, not kept.
        for i in 0..20 {
            b.record(1, 2, FailureKind::Other, &format!("reason {i}"));
        }
        let a = b.find(1, Some(2)).unwrap();
        assert_eq!(
            (a.reasons.len(), a.others),
            (MAX_DISTINCT_REASONS, 20 - MAX_DISTINCT_REASONS as u64)
        );
        assert!(
            b.summary(1, None)
                .unwrap()
                .ends_with("; other errors (17 clients)"),
            "{:?}",
            b.summary(1, None)
        );
        // Only the latest attempts are kept.
        for attempt in 3..10 {
            b.record(1, attempt, FailureKind::Other, "x");
        }
        assert_eq!(b.attempts.len(), MAX_ATTEMPTS_KEPT);
        assert_eq!(b.summary(1, Some(1)), None);
        assert_eq!(b.summary(2, None), None);
        assert_eq!(
            b.summary(1, None).unwrap(),
            "clients reported errors: x (1 client)"
        );
    }

    #[test]
    fn cancel_texts() {
        assert_eq!(
            cancel_text(Some("alice"), Some("wrong dataset")).unwrap(),
            "cancelled by alice: wrong dataset"
        );
        assert_eq!(cancel_text(None, None).unwrap(), "cancelled by an admin");
        assert_eq!(
            cancel_text(Some(" "), Some("oops")).unwrap(),
            "cancelled by an admin: oops"
        );
        assert!(
            cancel_text(Some(&"a".repeat(65)), None)
                .unwrap_err()
                .starts_with("by: at most 64")
        );
        assert!(cancel_text(None, Some(&"é".repeat(256))).is_ok());
        assert!(cancel_text(None, Some(&"é".repeat(257))).is_err());
        assert!(cancel_text(Some("eve\x1b[31m"), None).is_err());
    }

    #[test]
    fn abandoned_attempts_in_words() {
        let a = Abandoned {
            round: 3,
            attempt: 2,
            reports: 4,
            needed: 8,
            wanted: 10,
            cause: AbandonCause::TooFewReports,
            machine_reason: "fewer than 8 of 10 clients reported at stage 0 (train)",
            at_deadline: true,
        };
        assert_eq!(
            a.text(),
            "round 3 attempt 2: 4 of 10 reports by the deadline (needed 8)"
        );
        let early = Abandoned {
            at_deadline: false,
            ..a
        };
        assert!(early.text().contains("dropped out or gave up"));
        let q = Abandoned {
            cause: AbandonCause::AllQuarantined,
            machine_reason: "every report was quarantined",
            ..early
        };
        assert_eq!(q.text(), "round 3 attempt 2: every report was quarantined");
    }
}
