//! Who may open a client connection: each listener's network access lists and connection
//! cap, and the process-wide `max_clients`, checked at accept before a client costs anything.
//! Refusals are counted and logged at a bounded rate (a flood of refused connections must
//! not become a flood of log lines).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// A listener's client networks: a peer is refused when a `deny` network holds it, or when
/// `allow` is not empty and no `allow` network holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl AccessList {
    /// Parses CIDR networks (`10.0.0.0/8`, `::1/128`) or single addresses (`127.0.0.1`).
    pub fn parse(allow: &[String], deny: &[String]) -> Result<AccessList, String> {
        let nets = |list: &[String]| -> Result<Vec<IpNet>, String> {
            list.iter().map(|s| parse_net(s)).collect()
        };
        Ok(AccessList {
            allow: nets(allow)?,
            deny: nets(deny)?,
        })
    }

    /// Whether a client from `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether every client is permitted (no lists configured).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is not a network (CIDR like 10.0.0.0/8) or an address"))
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's address is not permitted on this listener.
    Denied,
    /// The listener's `max_client_connections` is reached.
    ListenerFull,
    /// The process-wide `max_clients` is reached.
    ProcessFull,
}

/// Clients connected through one listener, shared by every worker and kept across reloads.
#[derive(Debug, Default)]
pub struct ListenerClients(AtomicUsize);

impl ListenerClients {
    /// Counts a client in unless `max` are connected already.
    pub fn try_add(&self, max: Option<usize>) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if max.is_some_and(|max| n >= max) {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts a client out.
    pub fn remove(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Clients connected now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts a listener's client out when its connection ends.
#[derive(Debug)]
pub struct ListenerSeat(pub Arc<ListenerClients>);

impl Drop for ListenerSeat {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// At most one log line per period for one kind of event, saying how many were not logged.
#[derive(Debug)]
pub struct RateLimitedLog {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// A log that speaks at most once per `period`.
    pub const fn new(period: Duration) -> Self {
        RateLimitedLog {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `what` as a warning unless a line was logged less than a period ago; then it is
    /// only counted, and the count is told with the next line.
    pub fn warn(&self, what: std::fmt::Arguments<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        if suppressed > 0 {
            tracing::warn!("{what} ({suppressed} more not logged)");
        } else {
            tracing::warn!("{what}");
        }
    }

    /// Events counted but not logged since the last line (for tests).
    pub fn suppressed(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Refused connections are logged at most every 10 s per reason.
pub static DENIED_LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(10));
/// See [`DENIED_LOG`].
pub static FULL_LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(10));

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> AccessList {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AccessList::parse(&v(allow), &v(deny)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let open = list(&[], &[]);
        assert!(open.is_open() && open.permits(ip("192.0.2.1")));
        let l = list(&["10.0.0.0/8", "127.0.0.1", "::1"], &["10.9.0.0/16"]);
        assert!(l.permits(ip("10.1.2.3")));
        assert!(!l.permits(ip("10.9.2.3")), "deny inside allow");
        assert!(l.permits(ip("127.0.0.1")));
        assert!(!l.permits(ip("127.0.0.2")), "a bare address is a /32");
        assert!(l.permits(ip("::1")));
        assert!(
            l.permits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped clients match IPv4 nets"
        );
        assert!(!l.permits(ip("192.0.2.1")));
        let deny_only = list(&[], &["192.0.2.0/24"]);
        assert!(!deny_only.permits(ip("192.0.2.7")));
        assert!(deny_only.permits(ip("198.51.100.1")));
    }

    #[test]
    fn bad_networks_are_named() {
        let e = AccessList::parse(&["10.0.0.0/33".into()], &[]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
        assert!(AccessList::parse(&[], &["localhost".into()]).is_err());
    }

    #[test]
    fn listener_cap_counts_in_and_out() {
        let c = Arc::new(ListenerClients::default());
        assert!(c.try_add(Some(2)) && c.try_add(Some(2)));
        assert!(!c.try_add(Some(2)));
        assert_eq!(c.get(), 2);
        drop(ListenerSeat(c.clone()));
        assert_eq!(c.get(), 1);
        assert!(c.try_add(None) && c.try_add(None));
    }

    #[test]
    fn the_log_is_rate_limited() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        log.warn(format_args!("first"));
        for _ in 0..5 {
            log.warn(format_args!("again"));
        }
        assert_eq!(log.suppressed(), 5);
        let fast = RateLimitedLog::new(Duration::ZERO);
        fast.warn(format_args!("a"));
        fast.warn(format_args!("b"));
        assert_eq!(fast.suppressed(), 0);
    }
}
