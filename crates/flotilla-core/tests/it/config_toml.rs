//! One-line TOML errors: the unknown key's own line and column, the nearest known key, a key
//! that belongs in another table, and other errors keeping their position.

use flotilla_core::config_toml::{Location, TomlError, from_str, locate};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Scenario {
    name: Option<String>,
    rounds: i64,
    clients: i64,
    clients_per_round: i64,
    train: Option<Train>,
    privacy: Option<Privacy>,
    stages: Option<Vec<Stage>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Train {
    local_epochs: Option<i64>,
    learning_rate: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Privacy {
    noise_multiplier: Option<f64>,
    adaptive: Option<Adaptive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Adaptive {
    target_quantile: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Stage {
    kind: String,
    deadline_ms: Option<i64>,
}

const GOOD: &str = "\
# a scenario
name = \"digits\"
rounds = 5
clients = 100
clients_per_round = 10

[train]
local_epochs = 1
learning_rate = 0.1
";

fn err(text: &str) -> TomlError {
    let e = from_str::<Scenario>(text).unwrap_err();
    assert_eq!(e.to_string().lines().count(), 1, "one line: {e}");
    e
}

fn at(line: usize, column: usize) -> Option<Location> {
    Some(Location { line, column })
}

#[test]
fn the_good_document_parses() {
    let s = from_str::<Scenario>(GOOD).unwrap();
    assert_eq!(s.clients_per_round, 10);
}

#[test]
fn a_top_level_typo_points_at_its_own_line_and_suggests_the_key() {
    // The typo is on line 6, right after the correct `clients_per_round` line.
    let text = GOOD.replace(
        "clients_per_round = 10\n",
        "clients_per_round = 10\nclients_per_rnd = 3\n",
    );
    let e = err(&text);
    assert_eq!(e.location, at(6, 1), "{e}");
    assert!(
        e.message.starts_with(
            "unknown key `clients_per_rnd` at the top level; did you mean `clients_per_round`?"
        ),
        "{e}"
    );
    assert!(
        e.message.contains(
            "(known keys: name, rounds, clients, clients_per_round, train, privacy, stages)"
        ),
        "{e}"
    );
    assert_eq!(e.in_file("s.toml").split(": ").next(), Some("s.toml:6:1"));
    assert!(
        e.to_string().starts_with("line 6, column 1: unknown key"),
        "{e}"
    );
}

#[test]
fn a_typo_in_a_table_names_the_table() {
    let e = err(&GOOD.replace(
        "learning_rate = 0.1",
        "learning_rate = 0.1\n  learning_rat = 0.2",
    ));
    assert_eq!(e.location, at(10, 3), "{e}");
    assert!(
        e.message
            .starts_with("unknown key `learning_rat` in `[train]`; did you mean `learning_rate`?"),
        "{e}"
    );
    assert!(
        e.message
            .contains("(known keys: local_epochs, learning_rate)"),
        "{e}"
    );
    // Nested tables, written as a header or as dotted keys.
    let nested = format!("{GOOD}[privacy.adaptive]\ntarget_quantil = 0.5\n");
    let e = err(&nested);
    assert_eq!(e.location, at(11, 1), "{e}");
    assert!(
        e.message.starts_with(
            "unknown key `target_quantil` in `[privacy.adaptive]`; did you mean `target_quantile`?"
        ),
        "{e}"
    );
    let e = err(&format!(
        "{GOOD}[privacy]\nadaptive.target_quantile = 0.5\nadaptive.x = 1\n"
    ));
    assert_eq!(e.location, at(12, 10), "{e}");
    assert!(
        e.message
            .starts_with("unknown key `x` in `[privacy.adaptive]` (known keys: target_quantile)"),
        "{e}"
    );
}

#[test]
fn a_typo_in_an_array_of_tables_points_at_the_right_entry() {
    let text = format!(
        "{GOOD}[[stages]]\nkind = \"a\"\ndeadline_ms = 1\n[[stages]]\nkind = \"b\"\ndeadlin_ms = 2\n"
    );
    let e = err(&text);
    assert_eq!(e.location, at(15, 1), "{e}");
    assert!(
        e.message
            .starts_with("unknown key `deadlin_ms` in `[stages]`; did you mean `deadline_ms`?"),
        "{e}"
    );
}

#[test]
fn a_key_in_the_wrong_table_is_pointed_to_the_right_one() {
    let e = err(&GOOD.replace("rounds = 5", "rounds = 5\nlearning_rate = 0.1"));
    assert_eq!(e.location, at(4, 1), "{e}");
    assert!(
        e.message.starts_with(
            "unknown key `learning_rate` at the top level; did you mean `[train] learning_rate`?"
        ),
        "{e}"
    );
    let e = err(&GOOD.replace("local_epochs = 1", "local_epochs = 1\nrounds = 3"));
    assert!(
        e.message
            .contains("did you mean `rounds` at the top level (before any `[table]`)?"),
        "{e}"
    );
    let e = err(&GOOD.replace(
        "local_epochs = 1",
        "local_epochs = 1\nnoise_multiplier = 1.1",
    ));
    assert!(
        e.message
            .contains("did you mean `[privacy] noise_multiplier`?"),
        "{e}"
    );
}

#[test]
fn no_suggestion_when_nothing_is_close() {
    for bogus in ["bogus", "x", "momentum", "lr"] {
        let e = err(&GOOD.replace(
            "local_epochs = 1",
            &format!("local_epochs = 1\n{bogus} = 0.9"),
        ));
        assert_eq!(e.location, at(9, 1), "{e}");
        assert!(!e.message.contains("did you mean"), "{e}");
        assert!(
            e.message
                .contains("known keys: local_epochs, learning_rate"),
            "{e}"
        );
    }
    // Case and dashes are forgiven; a fragment of exactly one key is recognised.
    let e = err(&GOOD.replace("local_epochs = 1", "Learning-Rate = 1"));
    assert!(e.message.contains("did you mean `learning_rate`?"), "{e}");
    let e = err(&GOOD.replace("local_epochs = 1", "epochs = 1"));
    assert!(e.message.contains("did you mean `local_epochs`?"), "{e}");
}

#[test]
fn a_hostile_key_stays_on_one_line() {
    let e = err(&GOOD.replace("rounds = 5", "rounds = 5\n\"a\\nb`\" = 1"));
    assert_eq!(e.location, at(4, 1), "{e}");
    assert!(
        e.message
            .starts_with("unknown key `\"a\\nb`\"` at the top level"),
        "{e}"
    );
}

#[test]
fn a_type_error_names_the_key_and_keeps_its_position() {
    let e = err(&GOOD.replace("learning_rate = 0.1", "learning_rate = \"fast\""));
    assert_eq!(e.location, at(9, 17), "{e}");
    assert_eq!(
        e.message,
        "`train.learning_rate`: invalid type: string \"fast\", expected f64"
    );
    let e = err(&GOOD.replace("rounds = 5", "rounds = [5]"));
    assert_eq!(e.location, at(3, 10), "{e}");
    assert!(
        e.message.starts_with("`rounds`: invalid type: sequence"),
        "{e}"
    );
}

#[test]
fn a_syntax_error_keeps_its_position() {
    let e = err(&GOOD.replace("rounds = 5", "rounds = \"5"));
    assert_eq!(e.location, at(3, 12), "{e}");
    assert_eq!(e.message, "invalid basic string, expected `\"`");
    let e = err(&GOOD.replace("clients = 100", "clients = 100\nclients = 3"));
    assert_eq!(e.location, at(5, 1), "{e}");
    assert!(e.message.contains("duplicate key"), "{e}");
}

#[test]
fn a_missing_key_names_its_table() {
    let e = err(&GOOD.replace("rounds = 5\n", ""));
    assert_eq!(
        (e.location, e.message.as_str()),
        (None, "missing key `rounds` at the top level")
    );
    let e = err(&GOOD.replace("learning_rate = 0.1\n", ""));
    assert_eq!(e.location, at(7, 1), "{e}");
    assert_eq!(e.message, "missing key `learning_rate` in `[train]`");
}

#[test]
fn positions_round_trip_through_the_displayed_text() {
    let e = err(&GOOD.replace("rounds = 5", "rounds = 5\nround = 1"));
    let shown = format!("400 Bad Request: toml: {e}");
    let (loc, rest) = TomlError::split_displayed(&shown).unwrap();
    assert_eq!((Some(loc), rest), (e.location, e.message.as_str()));
    assert_eq!(
        TomlError::split_displayed("toml: missing key `rounds` at the top level"),
        None
    );
    assert_eq!(
        TomlError::split_displayed("calling http://x: the line 3, column 4: no"),
        None
    );
}

#[test]
fn locate_finds_a_dotted_field() {
    assert_eq!(locate(GOOD, "train.learning_rate"), at(9, 1));
    assert_eq!(locate(GOOD, "clients"), at(4, 1));
    assert_eq!(locate(GOOD, "train.momentum"), None);
    assert_eq!(
        Location::of_offset("é = 1\nab", 8),
        Location { line: 2, column: 2 }
    );
}
