//! Cases of validation and decisions (the examples in `examples/policies/` are validated by the
//! integration test `tests/it/examples.rs`).

use std::collections::BTreeMap;

use super::*;

fn hospital_job() -> JobAttrs {
    JobAttrs {
        tenant: "hospital".into(),
        name: "xray".into(),
        rounds: 10,
        clients_per_round: 4,
        min_clients: 4,
        model_kind: "cnn".into(),
        strategy: "fedavg".into(),
        ..Default::default()
    }
}

fn alice() -> Caller {
    Caller {
        name: "alice".into(),
        roles: vec!["scientist".into()],
        tenants: vec!["hospital".into()],
    }
}

fn client(attrs: &[(&str, &str)]) -> ClientAttrs {
    ClientAttrs {
        id: 7,
        tenant: "hospital".into(),
        samples: 100,
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

const HOSPITAL: &str = r#"
// Hospitals train only with secure aggregation and a DP budget of at most ε = 8.
@id("hospital-secagg")
forbid (principal, action == Flotilla::Action::"admit_job", resource)
when { resource.tenant == "hospital" && !resource.secagg };

@id("hospital-epsilon")
forbid (principal, action == Flotilla::Action::"admit_job", resource)
when { resource.tenant == "hospital" }
unless { resource.dp && resource has max_epsilon
         && resource.max_epsilon.lessThanOrEqual(decimal("8.0")) };
"#;

#[test]
fn the_schema_parses_and_names_every_admin_action() {
    let text = schema_text();
    schema::schema();
    for a in ADMIN_ACTIONS {
        assert!(text.contains(&format!("action \"{a}\"")), "{a}");
    }
}

#[test]
fn an_empty_file_allows_everything() {
    let set = validate("// nothing yet\n").unwrap();
    assert!(set.is_empty());
    assert!(set.admit_job(&alice(), &hospital_job()).is_ok());
    assert!(set.participate(&client(&[]), 1, &hospital_job()).is_ok());
    assert!(set.admin(&alice(), "job_cancel", Some("hospital")).is_ok());
}

#[test]
fn admission_is_refused_naming_the_first_matching_policy() {
    let set = validate(HOSPITAL).unwrap();
    assert_eq!(set.ids(), ["hospital-secagg", "hospital-epsilon"]);
    let job = hospital_job();
    let d = set.admit_job(&alice(), &job).unwrap_err();
    assert_eq!(d.policy, "hospital-secagg");
    assert_eq!(d.to_string(), "policy hospital-secagg");
    let secagg = JobAttrs {
        secagg: true,
        ..job.clone()
    };
    assert_eq!(
        set.admit_job(&alice(), &secagg).unwrap_err().policy,
        "hospital-epsilon"
    );
    let ok = JobAttrs {
        dp: true,
        max_epsilon: Some(8.0),
        ..secagg.clone()
    };
    assert!(set.admit_job(&alice(), &ok).is_ok());
    // Rounded up: 8.00001 is not ≤ 8.
    let over = JobAttrs {
        max_epsilon: Some(8.000_01),
        ..ok.clone()
    };
    assert_eq!(
        set.admit_job(&alice(), &over).unwrap_err().policy,
        "hospital-epsilon"
    );
    // Another tenant is not concerned.
    let other = JobAttrs {
        tenant: "retail".into(),
        ..job
    };
    assert!(set.admit_job(&alice(), &other).is_ok());
}

#[test]
fn eligibility_reads_typed_attributes_tags_and_samples() {
    let set = validate(
        r#"
@id("charging-unmetered")
forbid (principal, action == Flotilla::Action::"participate", resource)
unless { principal.charging && principal.unmetered };

@id("eu-only")
forbid (principal, action == Flotilla::Action::"participate", resource)
when { resource.tenant == "hospital" && principal.region != "eu" };

@id("ward-label")
forbid (principal, action == Flotilla::Action::"participate", resource)
unless { principal.labels.contains("ward") || (principal.hasTag("site") && principal.getTag("site") == "lab") };

@id("enough-data")
forbid (principal, action == Flotilla::Action::"participate", resource)
when { principal.samples < 50 };
"#,
    )
    .unwrap();
    let job = hospital_job();
    let good = [
        ("charging", "true"),
        ("unmetered", "1"),
        ("region", "eu"),
        ("labels", "icu, ward"),
    ];
    assert!(set.participate(&client(&good), 3, &job).is_ok());
    let not_charging = [
        ("charging", "no"),
        ("unmetered", "true"),
        ("region", "eu"),
        ("labels", "ward"),
    ];
    assert_eq!(
        set.participate(&client(&not_charging), 3, &job)
            .unwrap_err()
            .policy,
        "charging-unmetered"
    );
    // Absent attributes read as false / "" / no labels.
    assert_eq!(
        set.participate(&client(&[]), 3, &job).unwrap_err().policy,
        "charging-unmetered"
    );
    let us = [
        ("charging", "true"),
        ("unmetered", "true"),
        ("region", "us"),
    ];
    assert_eq!(
        set.participate(&client(&us), 3, &job).unwrap_err().policy,
        "eu-only"
    );
    let tagged = [
        ("charging", "true"),
        ("unmetered", "true"),
        ("region", "eu"),
        ("site", "lab"),
    ];
    assert!(set.participate(&client(&tagged), 3, &job).is_ok());
    let mut small = client(&good);
    small.samples = 10;
    assert_eq!(
        set.participate(&small, 3, &job).unwrap_err().policy,
        "enough-data"
    );
    // Not governed: admission is never evaluated.
    assert!(!set.governs(ADMIT_JOB));
    assert!(set.admit_job(&alice(), &job).is_ok());
}

#[test]
fn admin_actions_see_the_principal_roles_and_tenant() {
    let set = validate(
        r#"
@id("hospital-revoke-by-admins")
forbid (principal, action == Flotilla::Action::"client_revoke", resource == Flotilla::Tenant::"hospital")
unless { principal.roles.contains("admin") };

@id("no-global-retention")
forbid (principal, action == Flotilla::Action::"retention_run", resource is Flotilla::Installation);
"#,
    )
    .unwrap();
    let op = Caller {
        name: "bob".into(),
        roles: vec!["operator".into()],
        tenants: vec!["hospital".into()],
    };
    assert_eq!(
        set.admin(&op, "client_revoke", Some("hospital"))
            .unwrap_err()
            .policy,
        "hospital-revoke-by-admins"
    );
    assert!(set.admin(&op, "client_revoke", Some("retail")).is_ok());
    let admin = Caller {
        name: "admin".into(),
        roles: vec!["admin".into()],
        tenants: vec![],
    };
    assert!(set.admin(&admin, "client_revoke", Some("hospital")).is_ok());
    assert_eq!(
        set.admin(&admin, "retention_run", None).unwrap_err().policy,
        "no-global-retention"
    );
    assert!(set.admin(&admin, "retention_run", Some("hospital")).is_ok());
    assert!(!set.governs("job_submit"));
}

#[test]
fn a_policy_for_any_action_governs_all_of_them() {
    let set = validate(
        r#"@id("freeze") forbid (principal, action, resource in Flotilla::Tenant::"frozen");"#,
    )
    .unwrap();
    assert!(set.governs("job_submit") && set.governs(PARTICIPATE));
    let job = JobAttrs {
        tenant: "frozen".into(),
        ..hospital_job()
    };
    assert_eq!(set.admit_job(&alice(), &job).unwrap_err().policy, "freeze");
    assert_eq!(
        set.admin(&alice(), "job_submit", Some("frozen"))
            .unwrap_err()
            .policy,
        "freeze"
    );
    assert!(set.admin(&alice(), "job_submit", Some("other")).is_ok());
}

#[test]
fn a_policy_that_errors_at_run_time_denies() {
    // Decimal overflow is a run-time error the validator cannot see: the guardrail fails closed.
    let set = validate(
        r#"@id("overflow")
forbid (principal, action == Flotilla::Action::"participate", resource)
when { principal.samples * 9223372036854775807 < 0 };"#,
    )
    .unwrap();
    let d = set
        .participate(&client(&[]), 1, &hospital_job())
        .unwrap_err();
    assert_eq!(d.policy, "overflow");
    assert!(d.error.is_some());
    assert!(
        d.to_string()
            .starts_with("policy overflow (could not be evaluated"),
        "{d}"
    );
}

/// `(text, line, column, a piece of the message)` for files that must be refused.
const BAD: &[(&str, usize, usize, &str)] = &[
    // Syntax: the missing `;` is found at the next policy.
    (
        "@id(\"a\")\nforbid (principal, action, resource)\n@id(\"b\")\nforbid (principal, action, resource);",
        3,
        1,
        "unexpected token",
    ),
    (
        "@id(\"a\")\nforbid (principal, action, resource) when { 1 + };",
        2,
        49,
        "unexpected token `}`",
    ),
    (
        "\n\n  permit (principal, action, resource);",
        3,
        3,
        "no @id",
    ),
    (
        "@id(\"p\")\npermit (principal, action, resource);",
        1,
        1,
        "is a permit",
    ),
    (
        "@id(\"x\") forbid (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);",
        2,
        1,
        "used twice",
    ),
    (
        "@id(\"\") forbid (principal, action, resource);",
        1,
        1,
        "@id(\"\")",
    ),
    (
        "@id(\"flotilla.roles\") forbid (principal, action, resource);",
        1,
        1,
        "reserved",
    ),
    (
        "@id(\"t\") forbid (principal == ?principal, action, resource);",
        1,
        1,
        "templates",
    ),
    // Validation against the schema: an unknown attribute, located at the expression.
    (
        "@id(\"a\")\nforbid (principal, action == Flotilla::Action::\"admit_job\", resource)\nwhen { resource.colour == \"red\" };",
        3,
        8,
        "colour",
    ),
    // Unknown action.
    (
        "@id(\"a\")\nforbid (principal, action == Flotilla::Action::\"fly\", resource);",
        2,
        30,
        "fly",
    ),
    // An optional attribute without `has`.
    (
        "@id(\"a\")\nforbid (principal, action == Flotilla::Action::\"admit_job\", resource)\nwhen { resource.max_epsilon.greaterThan(decimal(\"8.0\")) };",
        3,
        8,
        "max_epsilon",
    ),
    // A type error: a string compared with a number.
    (
        "@id(\"a\")\nforbid (principal, action == Flotilla::Action::\"admit_job\", resource)\nwhen { resource.rounds > \"500\" };",
        3,
        26,
        "expected Long but saw String",
    ),
];

#[test]
fn malformed_files_are_refused_with_line_and_column() {
    let mut wrong = Vec::new();
    for (text, line, column, piece) in BAD {
        let e = validate(text).expect_err(text);
        if (e.line, e.column) != (*line, *column) || !e.message.contains(piece) {
            wrong.push(format!(
                "{text}\n  want {line}:{column} with {piece:?}, got {e}"
            ));
        }
        assert!(!e.message.contains('\n'), "{e}");
        assert_eq!(
            e.to_string(),
            format!("line {}, column {}: {}", e.line, e.column, e.message)
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn oversized_files_are_refused() {
    let big = "// x\n".repeat(MAX_POLICY_BYTES / 5 + 1);
    let e = validate(&big).unwrap_err();
    assert!(e.message.contains("at most"), "{e}");
}

#[test]
fn announced_attributes_are_bounded() {
    let ok: BTreeMap<String, String> = [("platform".into(), "android".into())].into();
    assert!(check_attributes(ok.iter()).is_ok());
    let many: BTreeMap<String, String> = (0..=MAX_ATTRIBUTES)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    assert!(
        check_attributes(many.iter())
            .unwrap_err()
            .contains("at most 64")
    );
    let long_key: BTreeMap<String, String> = [("k".repeat(65), String::new())].into();
    assert!(check_attributes(long_key.iter()).is_err());
    let long_value: BTreeMap<String, String> = [("k".into(), "v".repeat(257))].into();
    assert!(
        check_attributes(long_value.iter())
            .unwrap_err()
            .contains("257 bytes")
    );
    let control: BTreeMap<String, String> = [("a\nb".into(), String::new())].into();
    assert!(check_attributes(control.iter()).is_err());
}

#[test]
fn epsilon_becomes_a_decimal_rounded_up() {
    assert_eq!(entities::decimal_text(8.0), "8.0000");
    assert_eq!(entities::decimal_text(0.123_41), "0.1235");
    assert_eq!(
        entities::decimal_text(f64::INFINITY),
        "900000000000000.0000"
    );
}
