//! Reading TOML configuration (simulator scenarios, job specs) with one-line errors that point at
//! the offending key and suggest the nearest known one.
//!
//! Both the simulator and the coordinator parse TOML with serde and `deny_unknown_fields`; this
//! module lives in `flotilla-core` because it is the lowest crate both depend on, and it needs
//! only `toml` and `strsim` (no I/O: the caller reads the file and names it in the message).
//!
//! [`from_str`] deserializes like `toml::from_str`, and on failure turns the parser's error into a
//! [`TomlError`]: the line and column of the key (or value) at fault, and a message such as
//! ``unknown key `clients_per_rnd` at the top level; did you mean `clients_per_round`? (known keys:
//! …)``. A key that belongs in another table is pointed there (``did you mean `[train]
//! learning_rate`?``): the known keys of every table are learned by deserializing tiny probe
//! documents into the same type, so there is no second list of keys to keep in sync.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A 1-based position in a TOML document; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The position of byte `offset` of `text` (clamped to the text, and to a character boundary).
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// A TOML document that could not be read into the expected type. Displays as one line:
/// `line 9, column 1: <message>`, or the message alone when the parser gives no position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location.map(|l| format!("line {}, column {}: ", l.line, l.column)).unwrap_or_default())]
pub struct TomlError {
    /// Where the problem is, when known.
    pub location: Option<Location>,
    /// What is wrong (one line, naming the key) and, where it can tell, what to write instead.
    pub message: String,
}

impl TomlError {
    /// The error as a compiler-style line naming the file: `FILE:LINE:COLUMN: message`.
    pub fn in_file(&self, path: &str) -> String {
        match self.location {
            Some(l) => format!("{path}:{}:{}: {}", l.line, l.column, self.message),
            None => format!("{path}: {}", self.message),
        }
    }

    /// Splits a message displayed by [`TomlError`] (`line L, column C: rest`), possibly after a
    /// prefix such as an HTTP status, back into its position and the rest. Lets a client that
    /// only has the text (the admin API answers with a message) name its own file.
    pub fn split_displayed(text: &str) -> Option<(Location, &str)> {
        text.match_indices("line ").find_map(|(at, _)| {
            // Only at the start or after a `prefix: `, not inside some other sentence.
            if !(at == 0 || text[..at].ends_with(": ")) {
                return None;
            }
            let (line, rest) = text[at + "line ".len()..].split_once(", column ")?;
            let (column, rest) = rest.split_once(": ")?;
            Some((
                Location {
                    line: line.parse().ok()?,
                    column: column.parse().ok()?,
                },
                rest,
            ))
        })
    }
}

/// Deserializes `text` into `T`; on failure, says where and why in one line (see the module doc).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| explain::<T>(text, &e))
}

/// Where `dotted` (`partition.alpha`, `rounds`) is written in `text`: the position of its key.
/// For errors found after parsing (a value out of range) that name the field but not the line.
pub fn locate(text: &str, dotted: &str) -> Option<Location> {
    let doc = DeTable::parse(text).ok()?;
    let path: Vec<&str> = dotted.split('.').collect();
    let (last, tables) = path.split_last()?;
    let mut table = doc.get_ref();
    for seg in tables {
        table = match table.get(*seg)?.get_ref() {
            DeValue::Table(t) => t,
            _ => return None,
        };
    }
    let (key, _) = table.get_key_value(*last)?;
    Some(Location::of_offset(text, key.span().start))
}

/// Turns the parser's error into ours.
fn explain<T: DeserializeOwned>(text: &str, e: &toml::de::Error) -> TomlError {
    let raw = e.message().trim();
    let span = e.span();
    let location = span.clone().map(|s| Location::of_offset(text, s.start));
    // Without a parsed document (a syntax error) there is no key to name: the parser's own
    // message and position are the best there is.
    let Ok(doc) = DeTable::parse(text) else {
        return TomlError {
            location,
            message: one_line(raw),
        };
    };
    let doc = doc.get_ref();
    if let Some((key, known)) = parse_unknown_field(raw) {
        return unknown_key::<T>(text, doc, span, &key, &known);
    }
    if let Some(key) = raw
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        // The span is the table's header (or nothing, for the top level), not a place to edit.
        let table = span
            .as_ref()
            .and_then(|s| table_with_header_in(doc, s))
            .unwrap_or_default();
        let location = if table.is_empty() { None } else { location };
        return TomlError {
            location,
            message: format!("missing key `{}` {}", show_key(key), where_(&table)),
        };
    }
    // Type errors and the like point at a value: name the key it belongs to.
    let message = match span.as_ref().and_then(|s| key_owning(doc, s)) {
        Some(path) => format!("`{}`: {}", dotted(&path), one_line(raw)),
        None => one_line(raw),
    };
    TomlError { location, message }
}

fn unknown_key<T: DeserializeOwned>(
    text: &str,
    doc: &DeTable<'_>,
    span: Option<Range<usize>>,
    key: &str,
    known: &[String],
) -> TomlError {
    // toml 1.x gives the key's own span, but a type whose Deserialize reads a whole table first
    // (`flatten`, hand-written impls) reports the table's: look the key up in the document and
    // prefer the occurrence the span points at or covers.
    let mut found = Vec::new();
    occurrences(doc, key, &mut Vec::new(), &mut found);
    let best = span.as_ref().and_then(|s| {
        found.iter().find(|(_, k)| k == s).or_else(|| {
            found
                .iter()
                .find(|(_, k)| s.start <= k.start && k.end <= s.end)
        })
    });
    let (table, at) = match best.or(found.first()) {
        Some((table, k)) => (table.clone(), Some(k.start)),
        None => (Vec::new(), span.map(|s| s.start)),
    };
    let location = at.map(|o| Location::of_offset(text, o));
    let mut message = format!("unknown key `{}` {}", show_key(key), where_(&table));
    if let Some(near) = closest(key, known) {
        message.push_str(&format!("; did you mean `{near}`?"));
    } else if let Some(other) = elsewhere::<T>(key, &table) {
        message.push_str(&format!("; did you mean {}?", qualified(&other, key)));
    }
    if known.is_empty() {
        message.push_str(" (this table takes no keys)");
    } else {
        message.push_str(&format!(" (known keys: {})", known.join(", ")));
    }
    TomlError { location, message }
}

/// `(key, expected keys)` of serde's `unknown field` message: "unknown field `k`, expected `a` or
/// `b`", "…, expected one of `a`, `b`, `c`", "…, there are no fields".
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    if let Some(key) = rest.strip_suffix("`, there are no fields") {
        return Some((key.to_owned(), Vec::new()));
    }
    let (key, expected) = rest.rsplit_once("`, expected ")?;
    let known = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key.to_owned(), known))
}

/// Every place `key` is written, with the path of the table it is in and the key's span.
fn occurrences(
    table: &DeTable<'_>,
    key: &str,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Range<usize>)>,
) {
    for (k, v) in table {
        if k.get_ref() == key {
            out.push((path.clone(), k.span()));
        }
        path.push(k.get_ref().to_string());
        for sub in subtables(v) {
            occurrences(sub, key, path, out);
        }
        path.pop();
    }
}

/// The tables a value holds: itself, or the elements of an array of tables.
fn subtables<'a, 'i>(v: &'a Spanned<DeValue<'i>>) -> Vec<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) => vec![t],
        DeValue::Array(a) => a
            .into_iter()
            .filter_map(|e| e.get_ref().as_table())
            .collect(),
        _ => Vec::new(),
    }
}

/// The path of the table whose header (its key's span) lies within `span`.
fn table_with_header_in(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    for (k, v) in table {
        for sub in subtables(v) {
            if span.start <= k.span().start && k.span().end <= span.end {
                return Some(vec![k.get_ref().to_string()]);
            }
            if let Some(mut inner) = table_with_header_in(sub, span) {
                inner.insert(0, k.get_ref().to_string());
                return Some(inner);
            }
        }
    }
    None
}

/// The path of the innermost key whose value contains `span`.
fn key_owning(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    for (k, v) in table {
        let inside =
            |r: Range<usize>| r.start <= span.start && span.end <= r.end && r.start < r.end;
        let deeper = subtables(v)
            .into_iter()
            .find_map(|sub| key_owning(sub, span));
        if let Some(mut inner) = deeper {
            inner.insert(0, k.get_ref().to_string());
            return Some(inner);
        }
        if inside(v.span()) || inside(k.span()) {
            return Some(vec![k.get_ref().to_string()]);
        }
    }
    None
}

/// The nearest known key, when it is near enough to be the one meant. Case and `-`/`_` are
/// ignored; beyond that a typo may be 1 edit (transpositions count once) in a key of 3–5
/// characters, 2 from 6 on — about a normalised similarity of 0.7 — and shorter keys must match
/// exactly, since every 1–2 letter key is one edit from every other. A key of 4+ characters that
/// is part of exactly one known key (`epochs` → `local_epochs`) counts too.
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace('-', "_");
    let k = norm(key);
    let allowed = match k.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    let by_distance = known
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&k, &norm(c)), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d);
    if let Some((_, c)) = by_distance {
        return Some(c);
    }
    if k.chars().count() < 4 {
        return None;
    }
    let mut containing = known.iter().filter(|c| {
        let c = norm(c);
        c.contains(&k) || (c.chars().count() >= 4 && k.contains(&c))
    });
    match (containing.next(), containing.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// The path of another table that takes `key` exactly, when exactly one does.
fn elsewhere<T: DeserializeOwned>(key: &str, here: &[String]) -> Option<Vec<String>> {
    let mut hits = schema::<T>()
        .into_iter()
        .filter(|(path, keys)| path != here && keys.iter().any(|k| k == key));
    match (hits.next(), hits.next()) {
        (Some((path, _)), None) => Some(path),
        _ => None,
    }
}

/// The key a probe document adds; no configuration type has a field of this name.
const PROBE: &str = "__flotilla_probe__";

/// Table paths of `T` and their keys, learned by deserializing `[path]\nPROBE = 0` and reading
/// the "expected one of" list of the unknown-field error (serde reports unknown keys as it meets
/// them, before missing ones). Tables nest at most three deep in our formats.
fn schema<T: DeserializeOwned>() -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    let mut queue = vec![Vec::<String>::new()];
    while let Some(path) = queue.pop() {
        let Some(keys) = probe::<T>(&path) else {
            continue;
        };
        if path.len() < 3 {
            for k in &keys {
                let mut sub = path.clone();
                sub.push(k.clone());
                queue.push(sub);
            }
        }
        out.push((path, keys));
        if out.len() >= 64 {
            break;
        }
    }
    out.sort();
    out
}

fn probe<T: DeserializeOwned>(path: &[String]) -> Option<Vec<String>> {
    let header = path
        .iter()
        .map(|s| show_key(s))
        .collect::<Vec<_>>()
        .join(".");
    let docs = if path.is_empty() {
        vec![format!("{PROBE} = 0\n")]
    } else {
        vec![
            format!("[{header}]\n{PROBE} = 0\n"),
            format!("[[{header}]]\n{PROBE} = 0\n"),
        ]
    };
    docs.iter().find_map(|doc| match toml::from_str::<T>(doc) {
        Err(e) => parse_unknown_field(e.message().trim())
            .filter(|(k, _)| k == PROBE)
            .map(|(_, known)| known),
        Ok(_) => None,
    })
}

/// "at the top level" or "in `[train]`".
fn where_(table: &[String]) -> String {
    if table.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in `[{}]`", dotted(table))
    }
}

/// `key` as written in `table`: `` `[train] learning_rate` ``, or `` `rounds` at the top level
/// (before any `[table]`) ``.
fn qualified(table: &[String], key: &str) -> String {
    if table.is_empty() {
        format!("`{key}` at the top level (before any `[table]`)")
    } else {
        format!("`[{}] {key}`", dotted(table))
    }
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|s| show_key(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// A key as TOML would write it: bare when it can be, else quoted with escapes, so a key from
/// the file can never break the one-line message.
fn show_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The parser's message on one line (it sometimes spans several).
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}
