//! A job TOML with a typo is refused by the admin API with a 400 whose one-line message has the
//! typo's own line and column and the nearest known key.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_typo_gets_its_line_and_a_suggestion() {
    let (_dir, data, certs) = tmp();
    let h = start(&data, &certs, None).await;
    // job_toml starts with a newline: `clients_per_round` is on line 5, the typo on line 6.
    let typo = job_toml(1, 2).replace(
        "clients_per_round = 2\n",
        "clients_per_round = 2\nclients_per_rnd = 2\n",
    );
    let (code, body) = h.admin("POST", "/v1/jobs", &typo).await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.starts_with("toml: line 6, column 1: unknown key `clients_per_rnd` at the top level; did you mean `clients_per_round`?"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    // A key in the wrong table is pointed at the right one (when only one table takes it:
    // `learning_rate` is also a key of `[privacy.adaptive]`).
    let misplaced = job_toml(1, 2).replace("[model]\n", "[model]\nlocal_epochs = 1\n");
    let (code, body) = h.admin("POST", "/v1/jobs", &misplaced).await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.starts_with("toml: line 12, column 1: unknown key `local_epochs` in `[model]`"),
        "{msg}"
    );
    assert!(
        msg.contains("did you mean `[train] local_epochs`?"),
        "{msg}"
    );

    // A value of the wrong type keeps its position and names its key.
    let (code, body) = h
        .admin(
            "POST",
            "/v1/jobs",
            &job_toml(1, 2).replace("rounds = 1", "rounds = \"one\""),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.starts_with("toml: line 4, column 10: `rounds`: invalid type: string \"one\""),
        "{msg}"
    );

    // `[compression]` with SCAFFOLD cannot be a delta of the model alone: refused by name rather
    // than run uncompressed.
    let compressed = format!(
        "{}[strategy]\nname = \"scaffold\"\n[compression]\nkind = \"quantize\"\nbits = 8\n",
        job_toml(1, 2)
    );
    let (code, body) = h.admin("POST", "/v1/jobs", &compressed).await;
    assert_eq!(code, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("compression.kind: "), "{msg}");
    assert!(msg.contains("SCAFFOLD"), "{msg}");

    // Nothing was created.
    let (code, body) = h.admin("GET", "/v1/jobs", "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body.get("jobs").unwrap_or(&body).as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    h.stop().await;
}
