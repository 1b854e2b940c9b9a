use super::*;

#[test]
fn the_exposition_names_every_family_and_the_json_reads_the_same_counters() {
    let m = Metrics::new(true);
    Metrics::inc(&m.checkins);
    m.upload_accepted();
    m.upload_rejected("wrong_round");
    m.auth_failure("revoked");
    m.reject("revoked");
    m.job_running(7, 0, 30.0, Some(4.0), 1000.0);
    m.round_committed(7, 1, 3, 1001.0);
    m.round_abandoned(7, ABANDON_REASONS[0]);
    let text = m.encode();
    for line in [
        "flotilla_checkins_total 1",
        "flotilla_uploads_total{outcome=\"accepted\",reason=\"none\"} 1",
        "flotilla_uploads_total{outcome=\"rejected\",reason=\"wrong_round\"} 1",
        "flotilla_auth_failures_total{kind=\"revoked\"} 1",
        "flotilla_rejections_total{reason=\"revoked\"} 1",
        "flotilla_rounds_committed_total{job=\"7\"} 1",
        "flotilla_rounds_abandoned_total{job=\"7\",reason=\"too_few_reports\"} 1",
        "flotilla_job_state{job=\"7\",state=\"running\"} 1",
        "flotilla_job_state{job=\"7\",state=\"completed\"} 0",
        "flotilla_job_round{job=\"7\"} 1",
        "flotilla_round_participants{job=\"7\"} 3",
        "flotilla_dp_epsilon_budget{job=\"7\"} 4.0",
        "flotilla_job_round_deadline_seconds{job=\"7\"} 30.0",
        "flotilla_last_commit_timestamp_seconds{job=\"7\"} 1001.0",
        "flotilla_round_duration_seconds_count{job=\"7\"} 1",
        "# TYPE flotilla_build info",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    #[cfg(target_os = "linux")]
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("\n{name} ")),
            "missing {name} in\n{text}"
        );
    }
    let s = m.snapshot();
    assert_eq!(
        (
            s.checkins,
            s.uploads_accepted,
            s.rounds_committed,
            s.auth_failures
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(s.rejections.get("wrong_round"), Some(&1));
    assert_eq!(s.rejections.get("revoked"), Some(&1));
}

#[test]
fn ended_jobs_leave_the_per_job_families_beyond_the_bound() {
    let m = Metrics::new(true);
    for job in 0..(MAX_ENDED_JOBS as u64 + 5) {
        m.job_running(job, 0, 10.0, None, 1.0);
        m.round_committed(job, 1, 1, 2.0);
        m.round_abandoned(job, ABANDON_REASONS[2]);
        m.model_eval(job, Some(0.5), Some(1.0));
        m.job_ended(job, "completed");
    }
    let text = m.encode();
    let jobs_in = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(jobs_in("flotilla_rounds_committed_total{"), MAX_ENDED_JOBS);
    assert_eq!(jobs_in("flotilla_rounds_abandoned_total{"), MAX_ENDED_JOBS);
    assert_eq!(
        jobs_in("flotilla_job_state{"),
        MAX_ENDED_JOBS * JOB_STATES_N
    );
    assert_eq!(jobs_in("flotilla_model_eval_accuracy{"), MAX_ENDED_JOBS);
    assert!(
        !text.contains("job=\"4\""),
        "the oldest ended jobs must be gone"
    );
    assert!(text.contains("flotilla_job_state{job=\"5\",state=\"completed\"} 1"));
    // The JSON counters are process totals: not bounded away.
    assert_eq!(m.snapshot().rounds_committed, MAX_ENDED_JOBS as u64 + 5);
}

const JOB_STATES_N: usize = families::JOB_STATES.len();

#[test]
fn off_telemetry_keeps_the_counters_and_skips_the_timings() {
    let m = Metrics::new(false);
    m.rpc_done("CheckIn", Instant::now());
    m.job_running(1, 0, 10.0, None, 1.0);
    m.round_committed(1, 1, 2, 3.0);
    let text = m.encode();
    assert!(!text.contains("flotilla_rpc_duration_seconds_count"));
    assert!(!text.contains("flotilla_round_duration_seconds_count"));
    assert!(text.contains("flotilla_rounds_committed_total{job=\"1\"} 1"));
    assert_eq!(m.snapshot().rounds_committed, 1);
}
