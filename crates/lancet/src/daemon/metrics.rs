//! `/metrics`: the agent's counters in the Prometheus (OpenMetrics text)
//! format, encoded with `prometheus-client`. The numbers are kept as plain
//! integers on the event loop (no atomics, no allocation per event) and
//! copied into a snapshot when metrics are asked for; the snapshot is a
//! `prometheus-client` collector. No series has a per-container label: the
//! labels are event types, probes, actions, backends, priorities, modes and
//! reasons, all from small fixed sets. Every metric is listed in the README.

use super::Daemon;
use crate::agent::Pipeline;
use crate::counters::EVENT_TYPES;
use lancet_engine::policy::Action;
use lancet_engine::profile::Mode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Falco's priorities, the values of `lancet_alerts_total{priority}`.
const PRIORITIES: [&str; 8] = ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug"];

/// Verdicts and alerts counted by the daemon.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// (action, backend) → verdicts.
    verdicts: Vec<((&'static str, &'static str), u64)>,
    /// Alerts written, by [`PRIORITIES`] (and one slot for anything else).
    alerts: [u64; PRIORITIES.len() + 1],
    /// The backend of the enforced verdict being alerted, set by whoever
    /// knows it (the kernel record's handler) just before the alert.
    pub(super) backend: Option<&'static str>,
}

impl Tally {
    /// One verdict: the action taken (or that protect mode would take) and
    /// the backend that enforced it (`none` when nothing was enforced).
    pub(super) fn verdict(&mut self, action: Action, enforced: bool) {
        let hint = self.backend.take();
        let backend = match (enforced, action) {
            (false, _) => "none",
            (true, _) if hint.is_some() => hint.unwrap_or("none"),
            (true, Action::KillProcess) => "process",
            (true, Action::Isolate) => "cgroup-bpf",
            (true, Action::Freeze) => "freezer",
            (true, _) => "kernel",
        };
        let key = (action.as_str(), backend);
        match self.verdicts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => self.verdicts.push((key, 1)),
        }
    }

    pub(super) fn alert(&mut self, priority: &str) {
        let i = PRIORITIES.iter().position(|p| p.eq_ignore_ascii_case(priority)).unwrap_or(PRIORITIES.len());
        self.alerts[i] += 1;
    }
}

/// Everything `/metrics` shows, copied from the loop's state.
#[derive(Debug, Default)]
struct Snapshot {
    events: Vec<(&'static str, u64)>,
    lost: Vec<(&'static str, u64)>,
    decode_errors: u64,
    unknown_attribution: u64,
    file_overflows: u64,
    denial_reports_lost: u64,
    verdicts: Vec<((&'static str, &'static str), u64)>,
    /// (bound in ns, cumulative count), count, sum in ns.
    decisions: (Vec<(u64, u64)>, u64, u64),
    alerts: Vec<(&'static str, u64)>,
    workloads: [(&'static str, i64); 3],
    containers: i64,
    flows: i64,
    flow_rows_max: i64,
    flow_bytes_max: i64,
    flows_summarised: [(&'static str, u64); 2],
    flows_dropped: u64,
    flow_scans: u64,
    rss_bytes: i64,
    cpu_seconds: f64,
    /// Per alert output: (target, sent, retried, dropped).
    outputs: Vec<(String, u64, u64, u64)>,
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn labelled_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(&[(label, *l)])?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut enc;
        labelled_counter(e, "lancet_events", "Events the agent read, by type (Falco evt.type)", "type", &self.events)?;
        labelled_counter(
            e,
            "lancet_events_lost",
            "Records the kernel dropped because the ring buffer was full, by probe",
            "probe",
            &self.lost,
        )?;
        counter(e, "lancet_decode_errors", "Ring-buffer records that could not be decoded", self.decode_errors)?;
        counter(e, "lancet_unattributed_events", "Events whose cgroup no container runtime claimed", self.unknown_attribution)?;
        counter(e, "lancet_fanotify_overflows", "fanotify queue overflows (file changes and sensitive opens)", self.file_overflows)?;
        counter(
            e,
            "lancet_denial_reports_lost",
            "Refusals that held but whose report did not fit the agent's queue (summarised in one alert a second)",
            self.denial_reports_lost,
        )?;
        {
            let mut m = e.encode_descriptor(
                "lancet_verdicts",
                "Verdicts raised, by the action taken (or that protect mode would take) and the backend that enforced it (none: not enforced)",
                None,
                MetricType::Counter,
            )?;
            for ((action, backend), v) in &self.verdicts {
                ConstCounter::new(*v).encode(m.encode_family(&[("action", *action), ("backend", *backend)])?)?;
            }
        }
        {
            let (buckets, count, sum) = &self.decisions;
            // The encoder sums the buckets itself: hand it each bucket's own
            // count (the histogram's are cumulative).
            let mut below = 0;
            let mut b: Vec<(f64, u64)> = Vec::with_capacity(buckets.len() + 1);
            for (ns, cum) in buckets {
                b.push((*ns as f64 / 1e9, cum.saturating_sub(below)));
                below = *cum;
            }
            b.push((f64::INFINITY, count.saturating_sub(below)));
            let m = e.encode_descriptor(
                "lancet_permission_decision_seconds",
                "Time the fanotify permission guard took to decide an exec or open (read to answer); bounds are 2^k-1 ns, exact",
                None,
                MetricType::Histogram,
            )?;
            let mut m = m;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(*sum as f64 / 1e9, *count, &b, None)?;
        }
        labelled_counter(
            e,
            "lancet_alerts",
            "Alerts written (after deduplication and rate limits), by priority",
            "priority",
            &self.alerts,
        )?;
        {
            let mut m = e.encode_descriptor("lancet_workloads", "Workloads followed, by mode", None, MetricType::Gauge)?;
            for (mode, n) in &self.workloads {
                ConstGauge::new(*n).encode(m.encode_family(&[("mode", *mode)])?)?;
            }
        }
        gauge(e, "lancet_containers", "Live containers the agent follows", self.containers)?;
        gauge(e, "lancet_flows_tracked", "Flow rows held in memory for the current hour (summaries included)", self.flows)?;
        gauge(e, "lancet_flow_rows_max", "Flow rows the table can hold (rows plus summary rows): its bound", self.flow_rows_max)?;
        gauge(e, "lancet_flow_table_bytes_max", "Upper bound of the flow table's memory, in bytes", self.flow_bytes_max)?;
        labelled_counter(
            e,
            "lancet_flows_summarised",
            "New flows counted in a summary row instead of a row of their own: their source scanned, or the table was full",
            "reason",
            &self.flows_summarised,
        )?;
        counter(e, "lancet_flows_dropped", "New flows that had neither a row nor a summary row (only counted here)", self.flows_dropped)?;
        for (name, help, pick) in [
            ("lancet_output_sent", "Alerts an output (HTTP, syslog) delivered", 0usize),
            ("lancet_output_retried", "Attempts an output made again after a failure", 1),
            ("lancet_output_dropped", "Alerts an output gave up on or had no room for", 2),
        ] {
            let values: Vec<(&str, u64)> = self.outputs.iter().map(|(t, s, r, d)| (t.as_str(), [*s, *r, *d][pick])).collect();
            labelled_counter(e, name, help, "target", &values)?;
        }
        counter(
            e,
            "lancet_flow_scans",
            "Scans detected (a container opened, or received, too many new flows in a minute)",
            self.flow_scans,
        )?;
        gauge(e, "lancet_resident_memory_bytes", "The agent's resident set size", self.rss_bytes)?;
        {
            let c = ConstCounter::new(self.cpu_seconds);
            c.encode(e.encode_descriptor("lancet_cpu_seconds", "CPU time the agent used (user and system)", None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// Resident set size now, from /proc/self/status.
fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

impl Daemon {
    /// The text of `/metrics`.
    pub(super) fn metrics(&self, pipeline: &Pipeline) -> String {
        let c = &pipeline.counters;
        let mut workloads = [("learn", 0i64), ("monitor", 0), ("protect", 0)];
        for w in self.workloads.map.values() {
            let i = match w.profile.mode() {
                Mode::Learn => 0,
                Mode::Monitor => 1,
                Mode::Protect => 2,
            };
            workloads[i].1 += 1;
        }
        let fc = self.flows.table.counters;
        let limits = self.flows.table.limits();
        let decisions = match self.guarding.protector.as_ref().and_then(|p| p.decision_histogram()) {
            Some(h) => (h.buckets, h.count, h.sum_ns),
            // Not running: the same buckets, empty.
            None => ((10..=27).map(|k| ((1u64 << k) - 1, 0)).collect(), 0, 0),
        };
        let snapshot = Snapshot {
            events: EVENT_TYPES.iter().copied().zip(c.events.iter().copied()).collect(),
            lost: c.lost.clone(),
            decode_errors: c.decode_errors,
            unknown_attribution: c.unknown_attribution,
            file_overflows: c.file_overflows,
            denial_reports_lost: crate::protect::denial_reports_lost(),
            verdicts: self.alerts.tally.verdicts.clone(),
            decisions,
            alerts: PRIORITIES.iter().copied().zip(self.alerts.tally.alerts.iter().copied()).collect(),
            workloads,
            containers: self.workloads.live_count() as i64,
            flows: self.flows.table.len() as i64,
            flow_rows_max: (limits.max_rows + limits.summary_rows) as i64,
            flow_bytes_max: lancet_engine::flows::FlowTable::memory_bound(&limits) as i64,
            flows_summarised: [("scan", fc.summarised_scan), ("full", fc.summarised_full)],
            flows_dropped: fc.dropped,
            flow_scans: fc.scans,
            rss_bytes: rss_bytes(),
            cpu_seconds: crate::agent::cpu_seconds(),
            outputs: self
                .alerts
                .outputs
                .counts()
                .map(|(t, c)| {
                    use std::sync::atomic::Ordering::Relaxed;
                    (t.to_string(), c.sent.load(Relaxed), c.retried.load(Relaxed), c.dropped.load(Relaxed))
                })
                .collect(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_counted_by_action_and_backend() {
        let mut t = Tally::default();
        t.verdict(Action::Alert, false);
        t.verdict(Action::Alert, false);
        t.backend = Some("fanotify");
        t.verdict(Action::Block, true);
        t.verdict(Action::KillProcess, true);
        assert_eq!(t.verdicts, vec![(("alert", "none"), 2), (("block", "fanotify"), 1), (("kill-process", "process"), 1)]);
        assert!(t.backend.is_none(), "a hint is used once");
        t.alert("Warning");
        t.alert("nonsense");
        assert_eq!((t.alerts[4], t.alerts[8]), (1, 1));
    }

    #[test]
    fn the_snapshot_encodes_every_metric() {
        let s = Snapshot {
            events: vec![("execve", 3), ("connect", 5)],
            lost: vec![("exec", 0)],
            verdicts: vec![(("block", "fanotify"), 2)],
            decisions: (vec![(1023, 1), (2047, 3)], 4, 5000),
            alerts: vec![("Warning", 7)],
            workloads: [("learn", 1), ("monitor", 0), ("protect", 2)],
            cpu_seconds: 1.5,
            ..Snapshot::default()
        };
        let mut r = Registry::default();
        r.register_collector(Box::new(s));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for want in [
            "lancet_events_total{type=\"connect\"} 5",
            "lancet_verdicts_total{action=\"block\",backend=\"fanotify\"} 2",
            "lancet_permission_decision_seconds_bucket{le=\"0.000001023\"} 1",
            "lancet_permission_decision_seconds_bucket{le=\"0.000002047\"} 3",
            "lancet_permission_decision_seconds_bucket{le=\"+Inf\"} 4",
            "lancet_permission_decision_seconds_count 4",
            "lancet_alerts_total{priority=\"Warning\"} 7",
            "lancet_workloads{mode=\"protect\"} 2",
            "lancet_cpu_seconds_total 1.5",
            "lancet_flows_tracked 0",
            "# EOF",
        ] {
            assert!(out.contains(want), "{want:?} missing from:\n{out}");
        }
    }
}
