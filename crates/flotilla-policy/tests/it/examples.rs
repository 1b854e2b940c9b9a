//! Every file in `examples/policies/` validates, and each says what its comments claim.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_policy::{Caller, ClientAttrs, JobAttrs, PolicySet, validate};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

fn example(name: &str) -> PolicySet {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    validate(&text)
        .unwrap_or_else(|e| panic!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message))
}

fn scientist() -> Caller {
    Caller {
        name: "alice".into(),
        roles: vec!["scientist".into()],
        tenants: vec!["hospital".into()],
    }
}

fn job(tenant: &str) -> JobAttrs {
    JobAttrs {
        tenant: tenant.into(),
        name: "xray".into(),
        rounds: 50,
        clients_per_round: 20,
        min_clients: 20,
        model_kind: "cnn".into(),
        strategy: "fedavg".into(),
        ..Default::default()
    }
}

fn denied_by(set: &PolicySet, job: &JobAttrs) -> Option<String> {
    set.admit_job(&scientist(), job).err().map(|d| d.policy)
}

#[test]
fn every_example_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).expect("examples/policies") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "cedar") {
            let set = example(path.file_name().unwrap().to_str().unwrap());
            assert!(!set.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4, "only {n} examples");
}

#[test]
fn hospital_requires_secagg_and_epsilon_at_most_8() {
    let set = example("hospital.cedar");
    let plain = job("hospital");
    assert_eq!(
        denied_by(&set, &plain).as_deref(),
        Some("hospital-requires-secagg")
    );
    let secagg = JobAttrs {
        secagg: true,
        ..plain.clone()
    };
    assert_eq!(
        denied_by(&set, &secagg).as_deref(),
        Some("hospital-epsilon-at-most-8")
    );
    let loose = JobAttrs {
        dp: true,
        max_epsilon: Some(10.0),
        ..secagg.clone()
    };
    assert_eq!(
        denied_by(&set, &loose).as_deref(),
        Some("hospital-epsilon-at-most-8")
    );
    let ok = JobAttrs {
        max_epsilon: Some(8.0),
        ..loose
    };
    assert_eq!(denied_by(&set, &ok), None);
    assert_eq!(denied_by(&set, &job("retail")), None);
}

#[test]
fn job_limits_bound_rounds_models_and_small_cohorts() {
    let set = example("job-limits.cedar");
    assert_eq!(denied_by(&set, &job("any")), None);
    let long = JobAttrs {
        rounds: 501,
        ..job("any")
    };
    assert_eq!(
        denied_by(&set, &long).as_deref(),
        Some("at-most-500-rounds")
    );
    let custom = JobAttrs {
        model_kind: "custom".into(),
        ..job("any")
    };
    assert_eq!(
        denied_by(&set, &custom).as_deref(),
        Some("reviewed-models-only")
    );
    let small = JobAttrs {
        clients_per_round: 5,
        ..job("any")
    };
    assert_eq!(
        denied_by(&set, &small).as_deref(),
        Some("small-cohorts-need-secagg")
    );
    let small_secagg = JobAttrs {
        secagg: true,
        ..small
    };
    assert_eq!(denied_by(&set, &small_secagg), None);
}

fn device(tenant: &str, attrs: &[(&str, &str)], samples: u64) -> ClientAttrs {
    ClientAttrs {
        id: 1,
        tenant: tenant.into(),
        samples,
        attributes: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[test]
fn devices_must_charge_on_unmetered_networks() {
    let set = example("devices.cedar");
    let verdict =
        |c: &ClientAttrs, tenant: &str| set.participate(c, 1, &job(tenant)).err().map(|d| d.policy);
    let laptop = [
        ("platform", "linux"),
        ("charging", "true"),
        ("unmetered", "true"),
    ];
    assert_eq!(verdict(&device("retail", &laptop, 100), "retail"), None);
    let on_battery = [
        ("platform", "linux"),
        ("charging", "false"),
        ("unmetered", "true"),
    ];
    assert_eq!(
        verdict(&device("retail", &on_battery, 100), "retail").as_deref(),
        Some("charging-on-unmetered")
    );
    let busy_phone = [
        ("platform", "android"),
        ("charging", "true"),
        ("unmetered", "true"),
    ];
    assert_eq!(
        verdict(&device("retail", &busy_phone, 100), "retail").as_deref(),
        Some("phones-idle")
    );
    let ward = [
        ("charging", "true"),
        ("unmetered", "true"),
        ("region", "eu"),
        ("labels", "ward,icu"),
    ];
    assert_eq!(verdict(&device("hospital", &ward, 100), "hospital"), None);
    assert_eq!(
        verdict(&device("hospital", &laptop, 100), "hospital").as_deref(),
        Some("hospital-eu-wards")
    );
    let beta = [
        ("charging", "true"),
        ("unmetered", "true"),
        ("channel", "beta"),
    ];
    assert_eq!(
        verdict(&device("retail", &beta, 100), "retail").as_deref(),
        Some("no-beta-builds")
    );
    assert_eq!(
        verdict(&device("retail", &laptop, 5), "retail").as_deref(),
        Some("enough-samples")
    );
}

#[test]
fn admin_guardrails_sit_on_top_of_the_roles() {
    let set = example("admin.cedar");
    let operator = Caller {
        name: "bob".into(),
        roles: vec!["operator".into()],
        tenants: vec!["hospital".into()],
    };
    let admin = Caller {
        name: "admin".into(),
        roles: vec!["admin".into()],
        tenants: vec![],
    };
    let verdict = |c: &Caller, action: &str, tenant: Option<&str>| {
        set.admin(c, action, tenant).err().map(|d| d.policy)
    };
    assert_eq!(
        verdict(&operator, "client_revoke", Some("hospital")).as_deref(),
        Some("hospital-revocations-by-admins")
    );
    assert_eq!(verdict(&admin, "client_revoke", Some("hospital")), None);
    assert_eq!(
        verdict(&admin, "job_submit", Some("retail")).as_deref(),
        Some("retail-freeze")
    );
    assert_eq!(verdict(&admin, "job_submit", Some("hospital")), None);
    let ci = Caller {
        name: "ci-nightly".into(),
        roles: vec!["admin".into()],
        tenants: vec![],
    };
    assert_eq!(
        verdict(&ci, "policy_apply", None).as_deref(),
        Some("no-policy-changes-by-ci")
    );
    assert_eq!(verdict(&admin, "policy_apply", None), None);
}
