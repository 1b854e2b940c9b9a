//! Text that someone else wrote — a client's name, a job name, an error message quoting either —
//! must not reach a log file or a terminal raw: a newline would forge a log line (`…\nERROR
//! flotilla_coordinator: …`), an ESC sequence would drive the operator's terminal, a bidi override
//! would make a line read differently from what it says.
//!
//! [`escape_control`] escapes those characters; [`fields`] is the field formatter of the `flotilla`
//! binary's tracing subscriber, which runs every field *and* the message through it, whatever
//! `%`/`?` formatting a call site used (defence in depth behind `?field` at the call sites and the
//! name rules of `flotilla_core::names`). The subscriber's own colours are added by the event
//! formatter around the fields, so they still work on a terminal.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Whether `c` must not reach a log line or a terminal raw: C0 and C1 controls (newline, CR, ESC,
/// tab, …), DEL, the Unicode line and paragraph separators, and the bidi controls (embeddings,
/// overrides, isolates and marks).
pub(crate) fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every [`is_unsafe`] character escaped (`\n`, `\r`, `\t`, else `\u{1b}`), borrowed when
/// there is nothing to escape.
pub(crate) fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes one field: the message as its (escaped) text, any other field as `name=value` with the
/// value's `Debug` form escaped; field names in italics when the writer is a terminal, as
/// tracing-subscriber's default field formatter does.
fn write_field(
    w: &mut Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    let text = format!("{value:?}");
    let text = escape_control(&text);
    if field.name() == "message" {
        return w.write_str(&text);
    }
    // `r#type` and the like are recorded with the raw-identifier prefix.
    let name = field.name().trim_start_matches("r#");
    if w.has_ansi_escapes() {
        write!(w, "\x1b[3m{name}\x1b[0m={text}")
    } else {
        write!(w, "{name}={text}")
    }
}

/// The field formatter of the `flotilla` subscriber (see the module documentation): fields
/// separated by a space, each through [`write_field`], except the `otel.*` hints spans carry for
/// the OpenTelemetry exporter (`otel.name`, `otel.kind`), which would only repeat the span on every
/// log line.
pub(crate) fn fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    EscapedFields
}

struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut v = Visitor {
            w: writer,
            seen: false,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

/// Writes the fields of one event or span record.
struct Visitor<'w> {
    w: Writer<'w>,
    seen: bool,
    result: fmt::Result,
}

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        if std::mem::replace(&mut self.seen, true) {
            self.result = self.w.write_char(' ');
        }
        if self.result.is_ok() {
            self.result = write_field(&mut self.w, field, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_newlines_escapes_and_bidi_only() {
        assert!(matches!(
            escape_control("plain name-1 é ü"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape_control("a\nERROR forged"), "a\\nERROR forged");
        assert_eq!(escape_control("\x1b[31mred\r"), "\\u{1b}[31mred\\r");
        assert_eq!(
            escape_control("x\u{202E}y\u{2066}\u{85}\u{7f}"),
            "x\\u{202e}y\\u{2066}\\u{85}\\u{7f}"
        );
        assert_eq!(escape_control("tab\there\0"), "tab\\there\\u{0}");
    }

    /// The subscriber writes one line per event, whatever the call site did.
    #[test]
    fn the_subscriber_escapes_display_fields_and_messages() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        let evil = "x\nERROR flotilla_coordinator: forged\x1b[31m\u{202E}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(name = %evil, other = ?evil, plain = evil, n = 3, "enrolled {evil}");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202E}'),
            "{text:?}"
        );
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("enrolled x\\nERROR flotilla_coordinator: forged\\u{1b}[31m\\u{202e}"),
            "{text}"
        );
        assert!(text.contains(" n=3"), "{text}");
        // Span fields too, with the exporter's `otel.*` hints left out, and those recorded later.
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields())
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                rpc = "CheckIn",
                job = tracing::field::Empty,
                otel.name = "flotilla.v1.Coordinator/CheckIn",
                otel.kind = "server"
            );
            span.record("job", evil);
            span.in_scope(|| tracing::info!("inside"));
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let last = text.lines().last().unwrap();
        assert!(
            last.contains(r#"rpc{rpc="CheckIn" job="x\nERROR flotilla_coordinator: forged\u{1b}[31m\u{202e}"}: "#),
            "{last}"
        );
        assert!(
            !last.contains("otel") && last.ends_with(" inside"),
            "{last}"
        );
    }
}
