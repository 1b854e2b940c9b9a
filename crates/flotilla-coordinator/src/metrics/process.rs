//! The standard `process_*` metrics (read from `/proc` by `procfs` on each scrape) and
//! `flotilla_memory_limit_bytes` (the cgroup v2 memory limit, when there is one).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the process metrics of this process on each scrape (nothing where `/proc` is absent).
#[derive(Debug)]
pub(crate) struct ProcessCollector;

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = stat.rss * procfs::page_size();
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size, bytes",
                rss as f64,
            )?;
            gauge(
                &mut e,
                "process_virtual_memory_bytes",
                "Virtual memory size, bytes",
                stat.vsize as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                gauge(
                    &mut e,
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, seconds",
                    start,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            gauge(
                &mut e,
                "process_open_fds",
                "Open file descriptors",
                n as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                &mut e,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        if let Some(limit) = memory_limit() {
            gauge(
                &mut e,
                "flotilla_memory_limit_bytes",
                "The cgroup's memory limit, bytes",
                limit as f64,
            )?;
        }
        Ok(())
    }
}

/// The cgroup v2 memory limit of this process (`memory.max` of its cgroup): `None` when
/// unlimited (`max`) or unreadable.
fn memory_limit() -> Option<u64> {
    let cgroups = procfs::process::Process::myself().ok()?.cgroups().ok()?;
    // cgroup v2: the single hierarchy 0, whose path is relative to the cgroup2 mount.
    let cg = cgroups.into_iter().find(|c| c.hierarchy == 0)?;
    let path = format!("/sys/fs/cgroup{}/memory.max", cg.pathname);
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
