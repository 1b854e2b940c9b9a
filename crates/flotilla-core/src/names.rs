//! The names people and clients give things — a client's `--name` at enrollment, a job's `name` and
//! `tenant` — are limited in length and to a small character set, checked by the coordinator and,
//! before connecting, by the SDK and the CLI (one rule, here).
//!
//! Why: these strings end up in logs, in `flotilla job list` on an operator's terminal and in
//! metrics labels. Without control characters a name can neither forge a log line (a newline
//! followed by `ERROR …`) nor drive the terminal (ANSI escapes, bidi overrides); the log output
//! escapes them as well (defence in depth), but a refused name cannot confuse any other reader.

use thiserror::Error;

/// Longest client name, in characters.
pub const MAX_CLIENT_NAME_CHARS: usize = 64;
/// Longest job name, in characters.
pub const MAX_JOB_NAME_CHARS: usize = 128;
/// Longest tenant, in characters.
pub const MAX_TENANT_CHARS: usize = 64;

/// The characters of a client or job name, as the error messages spell them.
pub const NAME_CHARSET: &str = "ASCII letters, digits, space and . _ - @ : /";
/// The characters of a tenant.
pub const TENANT_CHARSET: &str = "ASCII letters, digits and . _ -";

/// A name that breaks its rule. Displays as one line naming the rule and the first offence; the
/// offending character is shown as its code point (`U+001B`), never raw.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} must be 1 to {max} characters of {charset}; {problem}")]
pub struct NameError {
    /// What was named: `client name`, `name`, `tenant`.
    pub what: &'static str,
    /// The length limit.
    pub max: usize,
    /// The allowed characters.
    pub charset: &'static str,
    /// The first problem found.
    pub problem: String,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '@' | ':' | '/')
}

fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    charset: &'static str,
    ok: fn(char) -> bool,
) -> Result<(), NameError> {
    let fail = |problem: String| {
        Err(NameError {
            what,
            max,
            charset,
            problem,
        })
    };
    if value.trim().is_empty() {
        return fail("it is empty".into());
    }
    if let Some((i, c)) = value.chars().enumerate().find(|&(_, c)| !ok(c)) {
        return fail(format!("character {} is U+{:04X}", i + 1, u32::from(c)));
    }
    let n = value.chars().count();
    if n > max {
        return fail(format!("it has {n}"));
    }
    Ok(())
}

/// A client's name at enrollment: 1 to [`MAX_CLIENT_NAME_CHARS`] characters of [`NAME_CHARSET`]
/// (callers trim surrounding whitespace first; an absent name is not checked).
pub fn check_client_name(name: &str) -> Result<(), NameError> {
    check(
        "client name",
        name,
        MAX_CLIENT_NAME_CHARS,
        NAME_CHARSET,
        is_name_char,
    )
}

/// A job's `name`: 1 to [`MAX_JOB_NAME_CHARS`] characters of [`NAME_CHARSET`].
pub fn check_job_name(name: &str) -> Result<(), NameError> {
    check("name", name, MAX_JOB_NAME_CHARS, NAME_CHARSET, is_name_char)
}

/// A job's `tenant`: 1 to [`MAX_TENANT_CHARS`] characters of [`TENANT_CHARSET`].
pub fn check_tenant(tenant: &str) -> Result<(), NameError> {
    check(
        "tenant",
        tenant,
        MAX_TENANT_CHARS,
        TENANT_CHARSET,
        is_tenant_char,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for ok in [
            "alice",
            "phone-17",
            "edge node 3",
            "a.b_c-d@host:443/x",
            &"x".repeat(64),
        ] {
            check_client_name(ok).unwrap();
        }
        check_job_name("digits run 2").unwrap();
        check_tenant("acme-eu.1").unwrap();
    }

    #[test]
    fn control_characters_and_escapes_are_refused_without_echoing_them() {
        for bad in [
            "a\nERROR flotilla_coordinator: forged",
            "\x1b[31mred",
            "x\ry",
            "tab\there",
            "bidi\u{202E}txt",
            "nul\0",
            "é",
        ] {
            let e = check_client_name(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("client name must be 1 to 64 characters of ASCII letters"),
                "{e}"
            );
            assert!(e.contains("U+"), "{e}");
            assert!(
                !e.chars().any(|c| c.is_control() || c == '\u{202E}'),
                "{e:?}"
            );
        }
        assert_eq!(
            check_client_name("\x1b[31m").unwrap_err().problem,
            "character 1 is U+001B"
        );
    }

    #[test]
    fn length_is_limited() {
        let e = check_client_name(&"x".repeat(65)).unwrap_err();
        assert_eq!(e.problem, "it has 65");
        assert!(check_job_name(&"j".repeat(129)).is_err());
        assert!(check_tenant(&"t".repeat(65)).is_err());
        assert!(check_client_name("   ").is_err());
        assert!(
            check_tenant("a b")
                .unwrap_err()
                .to_string()
                .starts_with("tenant must be")
        );
    }
}
