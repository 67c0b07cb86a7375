//! Alert deduplication and rate limiting.
//!
//! The same rule firing for the same workload on the same subject (an
//! executable, a destination, a path) inside a window is one alert with a
//! count. A rule that fires for a workload faster than its budget is muted,
//! and the next alert it raises says how many were muted: one noisy
//! container cannot drown the others, and a flood of one rule (an attacker
//! burning the budget first) cannot mute another rule. The caller decides
//! what is never muted (enforced actions, drift, high severity). Memory is
//! bounded: at most `capacity` keys are remembered.

use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct AlertLimits {
    /// Repeats of one (rule, workload, subject) inside this window are folded.
    pub dedupe_window: Duration,
    /// Alerts one rule may raise for one workload in a burst…
    pub burst: u32,
    /// …refilled at this rate per second.
    pub per_second: f64,
    /// Keys remembered at most (dedupe entries and workload buckets each).
    pub capacity: usize,
}

impl Default for AlertLimits {
    fn default() -> Self {
        AlertLimits { dedupe_window: Duration::from_secs(60), burst: 20, per_second: 2.0, capacity: 10_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub rule: String,
    pub workload: String,
    pub subject: String,
}

/// What to do with one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// First of its kind in the window: emit it. `muted`: alerts of this
    /// rule and workload muted since the last one emitted.
    New { muted: u64 },
    /// A repeat inside the window: do not emit; `count` so far (including
    /// the first).
    Repeat { count: u64 },
    /// The workload is over its budget: do not emit.
    RateLimited,
}

#[derive(Debug)]
struct Seen {
    first_ns: u64,
    last_ns: u64,
    count: u64,
    /// Opaque id the caller attached to the emitted alert (e.g. its store
    /// row), so repeats can update it.
    id: Option<u64>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
    /// Alerts muted since the bucket last let one through.
    muted: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertCounters {
    pub emitted: u64,
    pub repeats: u64,
    pub rate_limited: u64,
}

#[derive(Debug)]
pub struct Deduper {
    limits: AlertLimits,
    seen: HashMap<AlertKey, Seen>,
    /// By (workload, rule).
    buckets: HashMap<(String, String), Bucket>,
    counters: AlertCounters,
}

/// A window that closed with repeats: the caller may update the alert it
/// emitted (its count) and report the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folded {
    pub key: AlertKey,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub id: Option<u64>,
}

impl Deduper {
    pub fn new(limits: AlertLimits) -> Self {
        Deduper { limits, seen: HashMap::new(), buckets: HashMap::new(), counters: AlertCounters::default() }
    }

    pub fn counters(&self) -> AlertCounters {
        self.counters
    }

    /// Decides about one alert at time `now_ns`.
    pub fn admit(&mut self, key: &AlertKey, now_ns: u64) -> Admit {
        self.admit_with(key, now_ns, true)
    }

    /// [`Deduper::admit`], with the rate limit only when `rate_limit`: what
    /// the caller never mutes (enforced, drift, high severity) is always
    /// reported (still deduplicated), so a flood cannot hide it.
    pub fn admit_with(&mut self, key: &AlertKey, now_ns: u64, rate_limit: bool) -> Admit {
        let window = self.limits.dedupe_window.as_nanos() as u64;
        if let Some(s) = self.seen.get_mut(key) {
            if now_ns.saturating_sub(s.first_ns) < window {
                s.count += 1;
                s.last_ns = now_ns;
                self.counters.repeats += 1;
                return Admit::Repeat { count: s.count };
            }
        }
        let muted = match rate_limit {
            true => match self.take_token(key, now_ns) {
                Some(muted) => muted,
                None => {
                    self.counters.rate_limited += 1;
                    return Admit::RateLimited;
                }
            },
            false => 0,
        };
        if self.seen.len() >= self.limits.capacity && !self.seen.contains_key(key) {
            self.evict_oldest();
        }
        self.seen.insert(key.clone(), Seen { first_ns: now_ns, last_ns: now_ns, count: 1, id: None });
        self.counters.emitted += 1;
        Admit::New { muted }
    }

    /// Remembers the id of the alert emitted for `key`.
    pub fn set_id(&mut self, key: &AlertKey, id: u64) {
        if let Some(s) = self.seen.get_mut(key) {
            s.id = Some(id);
        }
    }

    /// Count and id of the alert currently open for `key`.
    pub fn current(&self, key: &AlertKey) -> Option<(u64, Option<u64>)> {
        self.seen.get(key).map(|s| (s.count, s.id))
    }

    /// Closes windows that ended before `now_ns`; returns those that saw
    /// repeats.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Folded> {
        let window = self.limits.dedupe_window.as_nanos() as u64;
        let mut out = Vec::new();
        self.seen.retain(|k, s| {
            let open = now_ns.saturating_sub(s.first_ns) < window;
            if !open && s.count > 1 {
                out.push(Folded { key: k.clone(), count: s.count, first_ns: s.first_ns, last_ns: s.last_ns, id: s.id });
            }
            open
        });
        out
    }

    /// Takes a token from the (workload, rule) bucket: Some(alerts muted
    /// before this one) when there was one, None when muted.
    fn take_token(&mut self, key: &AlertKey, now_ns: u64) -> Option<u64> {
        let (burst, rate) = (self.limits.burst as f64, self.limits.per_second);
        let bk = (key.workload.clone(), key.rule.clone());
        if !self.buckets.contains_key(&bk) && self.buckets.len() >= self.limits.capacity {
            // Full buckets are the least informative to keep.
            if let Some(k) = self.buckets.iter().max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens)).map(|(k, _)| k.clone()) {
                self.buckets.remove(&k);
            }
        }
        let b = self.buckets.entry(bk).or_insert(Bucket { tokens: burst, last_ns: now_ns, muted: 0 });
        let elapsed = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last_ns = now_ns;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.muted))
        } else {
            b.muted += 1;
            None
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self.seen.iter().min_by_key(|(_, s)| s.first_ns).map(|(k, _)| k.clone()) {
            self.seen.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(rule: &str, w: &str, subject: &str) -> AlertKey {
        AlertKey { rule: rule.into(), workload: w.into(), subject: subject.into() }
    }

    #[test]
    fn repeats_in_a_window_fold_into_one_alert_with_a_count() {
        let mut d = Deduper::new(AlertLimits { dedupe_window: Duration::from_secs(10), ..Default::default() });
        let k = key("shell", "web", "/bin/sh");
        assert_eq!(d.admit(&k, 0), Admit::New { muted: 0 });
        d.set_id(&k, 7);
        assert_eq!(d.admit(&k, S), Admit::Repeat { count: 2 });
        assert_eq!(d.admit(&k, 2 * S), Admit::Repeat { count: 3 });
        assert_eq!(d.admit(&key("shell", "web", "/bin/bash"), 2 * S), Admit::New { muted: 0 }, "another subject is another alert");
        assert!(d.expire(5 * S).is_empty(), "window still open");
        let folded = d.expire(11 * S);
        assert_eq!(folded.len(), 1);
        assert_eq!((folded[0].count, folded[0].id), (3, Some(7)));
        assert_eq!(d.admit(&k, 12 * S), Admit::New { muted: 0 }, "a new window starts after expiry");
    }

    #[test]
    fn a_noisy_workload_is_rate_limited_without_muting_others() {
        let mut d = Deduper::new(AlertLimits { burst: 3, per_second: 1.0, ..Default::default() });
        for i in 0..3 {
            assert_eq!(d.admit(&key("r", "noisy", &i.to_string()), 0), Admit::New { muted: 0 });
        }
        assert_eq!(d.admit(&key("r", "noisy", "x"), 0), Admit::RateLimited);
        assert_eq!(d.admit(&key("r", "quiet", "x"), 0), Admit::New { muted: 0 });
        assert_eq!(d.admit(&key("r", "noisy", "y"), S), Admit::New { muted: 1 }, "one token back after a second; one was muted");
        assert_eq!(d.counters(), AlertCounters { emitted: 5, repeats: 0, rate_limited: 1 });
    }

    #[test]
    fn flooding_one_rule_does_not_mute_another() {
        let mut d = Deduper::new(AlertLimits { burst: 20, per_second: 2.0, ..Default::default() });
        for i in 0..1000 {
            d.admit(&key("Shell in container", "web", &i.to_string()), 0);
        }
        assert_eq!(d.admit(&key("Shell in container", "web", "again"), 0), Admit::RateLimited);
        assert_eq!(d.admit(&key("Credential file read", "web", "/etc/shadow"), 0), Admit::New { muted: 0 });
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Deduper::new(AlertLimits { capacity: 100, burst: 1_000_000, ..Default::default() });
        for i in 0..10_000u64 {
            d.admit(&key("r", &format!("w{}", i % 500), &i.to_string()), i);
        }
        assert!(d.seen.len() <= 100);
        assert!(d.buckets.len() <= 100);
    }

    #[test]
    fn unlimited_admission_still_deduplicates() {
        let mut d = Deduper::new(AlertLimits { burst: 1, per_second: 0.0, ..AlertLimits::default() });
        let k = |s: &str| AlertKey { rule: "r".into(), workload: "w".into(), subject: s.into() };
        assert_eq!(d.admit(&k("a"), 1), Admit::New { muted: 0 });
        assert_eq!(d.admit(&k("b"), 2), Admit::RateLimited);
        assert_eq!(d.admit_with(&k("c"), 3, false), Admit::New { muted: 0 });
        assert!(matches!(d.admit_with(&k("c"), 4, false), Admit::Repeat { .. }));
    }
}
