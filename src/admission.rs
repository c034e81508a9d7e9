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

/// A count of connected clients with an optional cap: one for the whole process
/// (`max_clients`) and one per listener (`max_client_connections`), shared by every worker
/// and kept across reloads.
#[derive(Debug, Default)]
pub struct ClientCount(AtomicUsize);

impl ClientCount {
    /// Counts a client in unless `max` are connected already; the seat counts it out when
    /// dropped.
    pub fn try_seat(self: &Arc<Self>, max: Option<usize>) -> Option<Seat> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if max.is_some_and(|max| n >= max) {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Seat(self.clone()))
    }

    /// Clients connected now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One client counted in a [`ClientCount`] while it is held.
#[derive(Debug)]
pub struct Seat(Arc<ClientCount>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an admitted client holds while connected: its seats in the listener's and the
/// process's counts.
#[derive(Debug)]
pub struct Admitted {
    _listener: Seat,
    _process: Seat,
}

/// Decides whether a client from `ip` may connect to a listener with these settings: its
/// access list, its cap (`listener`, `max_client_connections`), then the process's
/// (`process`, `max_clients`).
pub fn admit(
    ip: IpAddr,
    access: &AccessList,
    listener: (&Arc<ClientCount>, Option<usize>),
    process: (&Arc<ClientCount>, usize),
) -> Result<Admitted, Refusal> {
    if !access.permits(ip) {
        return Err(Refusal::Denied);
    }
    let listener = listener
        .0
        .try_seat(listener.1)
        .ok_or(Refusal::ListenerFull)?;
    let process = process
        .0
        .try_seat(Some(process.1))
        .ok_or(Refusal::ProcessFull)?;
    Ok(Admitted {
        _listener: listener,
        _process: process,
    })
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

    /// Events counted but not logged since the last line.
    #[cfg(test)]
    fn suppressed(&self) -> u64 {
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
    fn seats_count_in_and_out_and_caps_refuse() {
        let listener = Arc::new(ClientCount::default());
        let process = Arc::new(ClientCount::default());
        let open = list(&[], &[]);
        let lo = ip("127.0.0.1");
        let a = admit(lo, &open, (&listener, Some(2)), (&process, 3)).unwrap();
        let b = admit(lo, &open, (&listener, Some(2)), (&process, 3)).unwrap();
        let full = admit(lo, &open, (&listener, Some(2)), (&process, 3));
        assert_eq!(full.unwrap_err(), Refusal::ListenerFull);
        assert_eq!((listener.get(), process.get()), (2, 2));
        let other = Arc::new(ClientCount::default());
        let c = admit(lo, &open, (&other, None), (&process, 3)).unwrap();
        // The process cap refuses, and the listener seat taken on the way is given back.
        let refused = admit(lo, &open, (&other, None), (&process, 3));
        assert_eq!(refused.unwrap_err(), Refusal::ProcessFull);
        assert_eq!((other.get(), process.get()), (1, 3));
        drop((a, c));
        assert_eq!((listener.get(), other.get(), process.get()), (1, 0, 1));
        let denied = admit(
            lo,
            &list(&[], &["127.0.0.0/8"]),
            (&listener, None),
            (&process, 3),
        );
        assert_eq!(denied.unwrap_err(), Refusal::Denied);
        drop(b);
        assert_eq!((listener.get(), process.get()), (0, 0));
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
