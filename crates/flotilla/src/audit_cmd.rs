//! `flotilla audit …`: verify the coordinator's tamper-evident audit log, export it, and make the
//! Ed25519 key the server signs its checkpoints with (`keygen`, no coordinator needed).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use flotilla_coordinator::api::{AuditEntryView, AuditPage, AuditVerification};

use crate::admin_cmd::{Admin, AdminArgs};
use crate::admin_view::{self, Clock, Table};

/// `flotilla audit …`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain: every hash, the order, the head and the signed checkpoints. Exits
    /// non-zero naming the first entry that was altered, removed or reordered.
    Verify {
        #[command(flatten)]
        admin: AdminArgs,
        /// Accept only checkpoints signed by this Ed25519 public key (hex, as `audit keygen`
        /// prints it, or a file holding it)
        #[arg(long, value_name = "HEX|FILE")]
        public_key: Option<String>,
        /// Print the coordinator's answer as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print audit entries: a table by default, JSON lines or a JSON array for machines.
    Export {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only entries at or after this time: a date (2026-12-01, UTC) or RFC 3339
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries after this sequence number
        #[arg(long, value_name = "SEQ")]
        since_seq: Option<u64>,
        /// table, jsonl or json
        #[arg(long, value_enum, default_value = "table")]
        format: ExportFormat,
        /// Same as --format json
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Write to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) for `flotilla server
    /// --audit-signing-key`; prints its public key (hex) as the last line.
    Keygen {
        /// Where to write the key; an existing file is not overwritten
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `audit export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// One JSON array.
    Json,
}

/// Entries fetched per request.
const PAGE: u32 = 1000;

pub fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            admin,
            public_key,
            json,
        } => verify(&admin, public_key.as_deref(), json),
        AuditCommand::Export {
            admin,
            since,
            since_seq,
            format,
            json,
            out,
        } => {
            let format = if json { ExportFormat::Json } else { format };
            export(&admin, since.as_deref(), since_seq, format, out.as_deref())
        }
        AuditCommand::Keygen { out } => keygen(&out),
    }
}

/// `--public-key`: hex as given, or the first word of the file it names.
fn public_key_arg(arg: &str) -> Result<String> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading --public-key {arg}"))?
    } else {
        arg.to_owned()
    };
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "--public-key must be 64 hex digits (an Ed25519 public key, as `flotilla audit keygen` prints it) or a file holding them"
        );
    }
    Ok(hex)
}

fn verify(admin: &AdminArgs, public_key: Option<&str>, json: bool) -> Result<()> {
    let mut path = "/v1/audit/verify".to_owned();
    if let Some(k) = public_key {
        path = format!("{path}?public_key={}", public_key_arg(k)?);
    }
    let v = Admin::new(admin)?.call(reqwest::Method::GET, &path, None)?;
    let r: AuditVerification = serde_json::from_value(v.clone())
        .context("the coordinator's audit verification answer is not understood (try --json)")?;
    if json {
        println!("{v}");
    } else if r.ok {
        let checkpoint = match &r.last_checkpoint {
            Some(c) => format!(
                "last checkpoint {} signed by {}",
                c.seq,
                short(&c.public_key)
            ),
            None => "no signed checkpoint".to_owned(),
        };
        println!(
            "ok: {} entries, head {} {}, {checkpoint}",
            r.entries,
            r.head_seq,
            short(&r.head_hash)
        );
    }
    match r.problem {
        None => Ok(()),
        Some(p) => Err(anyhow!("{}", admin_view::clean(&p.message))),
    }
}

/// The first 16 hex digits of a hash or key, enough to compare by eye.
fn short(h: &str) -> String {
    h.chars().take(16).collect()
}

/// `--since`: a date (midnight UTC) or RFC 3339, as Unix milliseconds.
fn since_ms(s: &str) -> Result<i64> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        anyhow!("--since {s}: {e}; give a date (2026-12-01) or RFC 3339 (2026-12-01T08:00:00Z)")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow!("--since {s} is before 1970"))?
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn export(
    admin: &AdminArgs,
    since: Option<&str>,
    since_seq: Option<u64>,
    format: ExportFormat,
    out: Option<&Path>,
) -> Result<()> {
    let since = since.map(since_ms).transpose()?;
    let a = Admin::new(admin)?;
    let mut entries: Vec<AuditEntryView> = Vec::new();
    let mut after = since_seq.unwrap_or(0);
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating --out {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    loop {
        let mut path = format!("/v1/audit?since_seq={after}&limit={PAGE}");
        if let Some(ms) = since {
            path = format!("{path}&since_ms={ms}");
        }
        let v = a.call(reqwest::Method::GET, &path, None)?;
        let page: AuditPage =
            serde_json::from_value(v).context("the coordinator's audit page is not understood")?;
        if format == ExportFormat::Jsonl {
            // Streamed: an export of a long log does not sit in memory.
            for e in &page.entries {
                writeln!(sink, "{}", serde_json::to_string(e)?)?;
            }
        } else {
            entries.extend(page.entries);
        }
        match page.next_since_seq {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    match format {
        ExportFormat::Jsonl => {}
        ExportFormat::Json => writeln!(sink, "{}", serde_json::to_string_pretty(&entries)?)?,
        ExportFormat::Table => write!(sink, "{}", table(&entries, &Clock::local()))?,
    }
    sink.flush().context("writing the export")?;
    if let Some(p) = out {
        eprintln!("wrote the audit entries to {}", p.display());
    }
    Ok(())
}

/// Entries as aligned columns; details as compact JSON.
fn table(entries: &[AuditEntryView], clock: &Clock) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_owned();
    }
    let mut t = Table::new(&[
        ("SEQ", true),
        ("TIME", false),
        ("ACTOR", false),
        ("TENANT", false),
        ("ACTION", false),
        ("RESOURCE", false),
        ("OUTCOME", false),
        ("DETAILS", false),
    ]);
    for e in entries {
        let details = e.details.to_string();
        let details: String = if details.chars().count() > 80 {
            details.chars().take(79).chain(['…']).collect()
        } else {
            details
        };
        t.row(vec![
            e.seq.to_string(),
            clock.absolute(e.at_ms),
            admin_view::clean(&e.actor),
            admin_view::clean(e.tenant.as_deref().unwrap_or("-")),
            admin_view::clean(&e.action),
            admin_view::clean(&e.resource),
            admin_view::clean(&e.outcome),
            admin_view::clean(&details),
        ]);
    }
    t.render()
}

fn keygen(out: &Path) -> Result<()> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generating an Ed25519 key")?;
    let pem = key.serialize_pem();
    let public = hex::encode(key.public_key_raw());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(out).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten; remove it first)",
            out.display()
        )
    })?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote an Ed25519 audit signing key to {} (keep it secret; give it to `flotilla server --audit-signing-key`). Its public key, for `flotilla audit verify --public-key`:",
        out.display()
    );
    println!("{public}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_rfc3339() {
        assert_eq!(since_ms("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(since_ms("1970-01-01T00:00:01Z").unwrap(), 1000);
        let e = since_ms("yesterday").unwrap_err().to_string();
        assert!(
            e.contains("--since yesterday") && e.contains("2026-12-01"),
            "{e}"
        );
    }

    #[test]
    fn public_keys_are_64_hex_digits() {
        assert_eq!(public_key_arg(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(public_key_arg("abc").is_err());
    }

    #[test]
    fn keygen_writes_a_key_the_server_reads_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.pem");
        keygen(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let signer = flotilla_coordinator::AuditSigner::from_pkcs8_pem(&text).unwrap();
        assert_eq!(signer.public_key_hex().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = keygen(&path).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
