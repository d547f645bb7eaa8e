//! Metrics for Prometheus: what a master counts as it answers requests, and what it reports of
//! its state, encoded in the OpenMetrics or Prometheus text format by the `prometheus-client`
//! crate. No sockets here: the `/metrics` endpoint that serves them is `master::metrics_http`.
//!
//! Two kinds of metric, kept two ways:
//!
//! - **Request metrics** are counted as requests are answered, by [`Metrics::observe`]:
//!   `dsm_requests_total{command, protocol}`, `dsm_errors_total{command, protocol, kind}` and
//!   the histogram `dsm_request_duration_seconds{command}`. Commands are a small fixed set
//!   ([`CommandKind`]), so the counter and histogram of every command and protocol are made at
//!   start and kept in arrays indexed by the enums: a request costs one atomic add and one
//!   short-held lock (the histogram's), with no label look-up and no allocation. A failed
//!   request adds a look-up in the error family, whose series appear only once they count.
//! - **State metrics** (`dsm_role`, `dsm_epoch`, `dsm_members_up`, `dsm_wal_bytes`, ...) are not
//!   kept here at all. A scrape reads a [`Snapshot`] from the same sources as `STATS` and hands
//!   it to [`Metrics::encode`], so the two never disagree and nothing has to be kept in step
//!   on the hot path.
//!
//! Every metric, with what it means, is listed in the README's "Metrics" section.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::master::Role;
use crate::protocol::{ErrorReply, Reply, Request};
use crate::resp::command::Command;

/// The prefix of every metric's name.
pub const PREFIX: &str = "dsm";

/// The upper bound of the first bucket of `dsm_request_duration_seconds`, in seconds: about a
/// fast read's time on loopback. Faster requests all land in this bucket.
pub const LATENCY_FIRST_BUCKET: f64 = 20e-6;

/// How many buckets `dsm_request_duration_seconds` has, each bound twice the one before: from
/// 20 µs up to 2.6 s, past a write's whole deadline at the default ACK timeout (2 s). A slower
/// request counts only in the implicit `+Inf` bucket.
pub const LATENCY_BUCKETS: u32 = 18;

/// The `Content-Type` of the OpenMetrics text format, as [`Format::OpenMetrics`] encodes it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format (0.0.4), as [`Format::Prometheus`]
/// encodes it.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a request was, as the metrics tell requests apart (the `command` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `READ` (`GET`).
    Read,
    /// `WRITE` (`SET`, `PUT`).
    Write,
    /// `DELETE` (`DEL`).
    Delete,
    /// `PING`.
    Ping,
    /// `STATS`.
    Stats,
    /// An operator's command: `MEMBERS`, `REMOVE`, `COMPACT`.
    Admin,
    /// `AUTH`.
    Auth,
    /// Anything else: `QUIT`, `CLIENT`, and a line that is no request at all.
    Other,
}

impl CommandKind {
    /// Every kind, in declaration order (the metrics index their arrays by it).
    pub const ALL: [CommandKind; 8] = [
        CommandKind::Read,
        CommandKind::Write,
        CommandKind::Delete,
        CommandKind::Ping,
        CommandKind::Stats,
        CommandKind::Admin,
        CommandKind::Auth,
        CommandKind::Other,
    ];

    /// The kind of a parsed request.
    pub fn of(request: &Request) -> CommandKind {
        match request {
            Request::Read { .. } => CommandKind::Read,
            Request::Write { .. } => CommandKind::Write,
            Request::Delete { .. } => CommandKind::Delete,
            Request::Ping => CommandKind::Ping,
            Request::Stats => CommandKind::Stats,
            Request::Members | Request::Remove { .. } | Request::Compact => CommandKind::Admin,
            Request::Auth { .. } => CommandKind::Auth,
            Request::Quit | Request::Hello => CommandKind::Other,
        }
    }

    /// The kind of what [`Request::parse`] made of a line: [`CommandKind::Other`] when it is no
    /// request.
    pub fn of_parsed(request: &Result<Request, String>) -> CommandKind {
        request.as_ref().map_or(CommandKind::Other, CommandKind::of)
    }

    /// The kind of a RESP command: reads (`GET`, `MGET`, `EXISTS`, `DSM.VERSION`), writes
    /// (`SET`, `MSET`), deletes (`DEL`), and so on.
    pub fn of_resp(command: &Command) -> CommandKind {
        match command {
            Command::Get(_) | Command::MGet(_) | Command::Exists(_) | Command::Version(_) => {
                CommandKind::Read
            }
            Command::Set { .. } | Command::MSet(_) => CommandKind::Write,
            Command::Del(_) => CommandKind::Delete,
            Command::Ping(_) | Command::Echo(_) => CommandKind::Ping,
            Command::Info(_) | Command::DbSize => CommandKind::Stats,
            Command::Compact => CommandKind::Admin,
            Command::Auth { .. } | Command::Hello { .. } => CommandKind::Auth,
            _ => CommandKind::Other,
        }
    }

    /// Its label value.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Read => "read",
            CommandKind::Write => "write",
            CommandKind::Delete => "delete",
            CommandKind::Ping => "ping",
            CommandKind::Stats => "stats",
            CommandKind::Admin => "admin",
            CommandKind::Auth => "auth",
            CommandKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The client protocol a request came in (the `protocol` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The line protocol (`docs/PROTOCOL.md`).
    Line,
    /// The Redis protocol, RESP.
    Resp,
}

impl Protocol {
    /// Every protocol, in declaration order (the metrics index their arrays by it).
    pub const ALL: [Protocol; 2] = [Protocol::Line, Protocol::Resp];

    /// Its label value.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Line => "line",
            Protocol::Resp => "resp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request failed (the `kind` label of `dsm_errors_total`): one per [`ErrorReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `ERR NOTPRIMARY`: this master does not serve.
    NotPrimary,
    /// `ERR UNAVAILABLE`: no quorum; nothing was done.
    Unavailable,
    /// `ERR TIMEOUT`: logged, but not acknowledged in time.
    Timeout,
    /// Any other `ERR`: the request was invalid.
    Invalid,
}

impl ErrorKind {
    /// The kind of an error reply.
    pub fn of(error: &ErrorReply) -> ErrorKind {
        match error {
            ErrorReply::NotPrimary(_) => ErrorKind::NotPrimary,
            ErrorReply::Unavailable(_) => ErrorKind::Unavailable,
            ErrorReply::Timeout(_) => ErrorKind::Timeout,
            ErrorReply::Invalid(_) => ErrorKind::Invalid,
        }
    }

    /// Its label value.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotPrimary => "notprimary",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Invalid => "invalid",
        }
    }
}

/// How a request ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with anything but `ERR` (`NOT_FOUND` included).
    Ok,
    /// Answered with `ERR`.
    Err(ErrorKind),
}

impl Outcome {
    /// The outcome a reply tells.
    pub fn of(reply: &Reply) -> Outcome {
        match reply {
            Reply::Err(e) => Outcome::Err(ErrorKind::of(e)),
            _ => Outcome::Ok,
        }
    }
}

/// A text format a scrape can be answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first), ending in `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for any other scraper (curl, older tools).
    Prometheus,
}

impl Format {
    /// The format to answer a request whose `Accept` header is `accept`: OpenMetrics when it
    /// lists `application/openmetrics-text` with a weight above zero, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.unwrap_or_default().split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == "q" && v.trim().parse::<f64>().is_ok_and(|q| q <= 0.0))
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// A master's state as a scrape reports it: what `STATS` says, read at the time of the scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The role (`dsm_role`).
    pub role: Role,
    /// The epoch (`dsm_epoch`).
    pub epoch: u64,
    /// Registered members (`dsm_members`).
    pub members: u64,
    /// Members connected and caught up (`dsm_members_up`; `STAT slaves`).
    pub members_up: u64,
    /// Live keys (`dsm_keys`).
    pub keys: u64,
    /// The log's size (`dsm_wal_bytes`).
    pub wal_bytes: u64,
    /// The log's last seq (`dsm_wal_seq`).
    pub wal_seq: u64,
    /// Compactions done since start (`dsm_compactions_total`).
    pub compactions: u64,
    /// Open connections, clients and peers (`dsm_connections`).
    pub connections: u64,
    /// Acknowledged writes and deletes since start (`dsm_writes_total`).
    pub writes: u64,
    /// Answered reads since start (`dsm_reads_total`).
    pub reads: u64,
}

/// A label set of the request families: static strings, so a look-up allocates nothing.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// One master's metrics: the request counters and histograms, and the registry that encodes
/// them with the state of a [`Snapshot`].
pub struct Metrics {
    registry: Registry,
    /// `dsm_requests_total`, by [`CommandKind::index`] then [`Protocol::index`].
    requests: [[Counter; Protocol::ALL.len()]; CommandKind::ALL.len()],
    /// `dsm_request_duration_seconds`, by [`CommandKind::index`].
    durations: [Histogram; CommandKind::ALL.len()],
    /// `dsm_errors_total`.
    errors: Family<Labels<3>, Counter>,
    /// What the next encoding reports of the master's state.
    state: Arc<StateCollector>,
    /// Held through one encoding, so two scrapes cannot mix their snapshots.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every request metric at zero, and no state until the first [`Metrics::encode`].
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<Labels<2>, Counter>::default();
        registry.register(
            "requests",
            "Client requests answered, by command and protocol, errors included",
            requests.clone(),
        );
        let errors = Family::<Labels<3>, Counter>::default();
        registry.register(
            "errors",
            "Client requests answered with ERR, by command, protocol and kind (notprimary, unavailable, timeout, invalid)",
            errors.clone(),
        );
        let durations =
            Family::<Labels<1>, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from reading a client request to having its answer, by command",
            Unit::Seconds,
            durations.clone(),
        );
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(Arc::clone(&state)));
        Metrics {
            requests: CommandKind::ALL.map(|c| {
                Protocol::ALL
                    .map(|p| requests.get_or_create_owned(&[("command", c.name()), ("protocol", p.name())]))
            }),
            durations: CommandKind::ALL.map(|c| durations.get_or_create_owned(&[("command", c.name())])),
            errors,
            state,
            scrape: Mutex::new(()),
            registry,
        }
    }

    /// Counts one answered request: what it was, how it came, how it ended, and how long it
    /// took. Cheap enough for every request: see the module doc.
    pub fn observe(&self, command: CommandKind, protocol: Protocol, outcome: Outcome, elapsed: Duration) {
        self.requests[command.index()][protocol.index()].inc();
        self.durations[command.index()].observe(elapsed.as_secs_f64());
        if let Outcome::Err(kind) = outcome {
            let labels = [("command", command.name()), ("protocol", protocol.name()), ("kind", kind.name())];
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// [`Metrics::observe`] for each of a run of requests of one kind answered together (a
    /// pipelined run of writes): each took `elapsed`.
    pub fn observe_replies(
        &self,
        command: CommandKind,
        protocol: Protocol,
        replies: &[Reply],
        elapsed: Duration,
    ) {
        for reply in replies {
            self.observe(command, protocol, Outcome::of(reply), elapsed);
        }
    }

    /// Every metric, with `state` for the state metrics, in `format`. Fails only if the
    /// encoder refuses a metric, which would be a bug here.
    pub fn encode(&self, state: &Snapshot, format: Format) -> Result<String, fmt::Error> {
        let _scrape = self.scrape.lock();
        *self.state.snapshot.lock() = Some(*state);
        let mut out = String::with_capacity(16 * 1024);
        match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.registry)?,
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// A fresh `dsm_request_duration_seconds` histogram: [`LATENCY_BUCKETS`] bounds from
/// [`LATENCY_FIRST_BUCKET`], each twice the one before (doubling is exact in binary, so the
/// bounds print short: `2e-05`, `4e-05`, ... `2.62144`).
fn latency_histogram() -> Histogram {
    Histogram::new((0..LATENCY_BUCKETS).map(|i| LATENCY_FIRST_BUCKET * f64::from(1u32 << i)))
}

/// Encodes the state metrics from the snapshot [`Metrics::encode`] left for it.
#[derive(Debug, Default)]
struct StateCollector {
    snapshot: Mutex<Option<Snapshot>>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(s) = *self.snapshot.lock() else {
            return Ok(());
        };
        {
            let help =
                "1 for the role this master has now (primary, standby or candidate), 0 for the others.";
            let mut family = encoder.encode_descriptor("role", help, None, MetricType::Gauge)?;
            for role in Role::ALL {
                let labels = [("role", role.name())];
                ConstGauge::new(i64::from(role == s.role)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Option<&Unit>, u64); 7] = [
            ("epoch", "The epoch this master is in (or last served in).", None, s.epoch),
            ("members", "Slaves registered as members, up or not.", None, s.members),
            ("members_up", "Members connected and caught up (STAT slaves).", None, s.members_up),
            ("keys", "Live keys in this master's copy.", None, s.keys),
            ("wal", "Size of the write-ahead log.", Some(&Unit::Bytes), s.wal_bytes),
            (
                "wal_seq",
                "The last seq in the write-ahead log (how far a standby has followed).",
                None,
                s.wal_seq,
            ),
            ("connections", "Open connections, clients and peers.", None, s.connections),
        ];
        for (name, help, unit, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                unit,
                MetricType::Gauge,
            )?)?;
        }
        let counters = [
            ("compactions", "Log compactions done since start.", s.compactions),
            ("writes", "Writes and deletes acknowledged since start.", s.writes),
            ("reads", "Reads answered since start.", s.reads),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            role: Role::Primary,
            epoch: 3,
            members: 3,
            members_up: 2,
            keys: 10,
            wal_bytes: 1234,
            wal_seq: 42,
            compactions: 1,
            connections: 5,
            writes: 7,
            reads: 8,
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn the_enums_index_in_the_order_they_list() {
        for (i, c) in CommandKind::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }

    #[test]
    fn commands_are_classified() {
        let table = [
            ("WRITE k v", CommandKind::Write),
            ("set k v", CommandKind::Write),
            ("GET k", CommandKind::Read),
            ("DEL k", CommandKind::Delete),
            ("PING", CommandKind::Ping),
            ("STATS", CommandKind::Stats),
            ("MEMBERS", CommandKind::Admin),
            ("COMPACT", CommandKind::Admin),
            ("REMOVE s1", CommandKind::Admin),
            ("AUTH pw", CommandKind::Auth),
            ("QUIT", CommandKind::Other),
            ("CLIENT", CommandKind::Other),
            ("NOPE", CommandKind::Other),
            ("READ", CommandKind::Other),
        ];
        for (line, want) in table {
            assert_eq!(CommandKind::of_parsed(&Request::parse(line.as_bytes())), want, "{line}");
        }
    }

    #[test]
    fn replies_are_classified() {
        assert_eq!(Outcome::of(&Reply::NotFound), Outcome::Ok);
        assert_eq!(Outcome::of(&Reply::Ok(1)), Outcome::Ok);
        let err = |e| Outcome::of(&Reply::Err(e));
        assert_eq!(err(ErrorReply::NotPrimary("x".into())), Outcome::Err(ErrorKind::NotPrimary));
        assert_eq!(err(ErrorReply::Unavailable("x".into())), Outcome::Err(ErrorKind::Unavailable));
        assert_eq!(err(ErrorReply::Timeout("x".into())), Outcome::Err(ErrorKind::Timeout));
        assert_eq!(err(ErrorReply::Invalid("x".into())), Outcome::Err(ErrorKind::Invalid));
    }

    #[test]
    fn the_format_follows_accept() {
        let table = [
            (None, Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::OpenMetrics,
            ),
            (Some("Application/OpenMetrics-Text; q=0"), Format::Prometheus),
            (Some("text/plain, application/openmetrics-text ; q=0.2"), Format::OpenMetrics),
        ];
        for (accept, want) in table {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn latency_buckets_span_20us_to_2s_and_print_short() {
        let bounds: Vec<f64> =
            (0..LATENCY_BUCKETS).map(|i| LATENCY_FIRST_BUCKET * f64::from(1u32 << i)).collect();
        assert_eq!(bounds[0], 20e-6);
        assert!(*bounds.last().unwrap() >= 2.0);
        let m = Metrics::new();
        let text = m.encode(&snapshot(), Format::Prometheus).unwrap();
        assert!(
            text.contains(r#"dsm_request_duration_seconds_bucket{command="read",le="4e-05"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dsm_request_duration_seconds_bucket{command="read",le="1.31072"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn observations_and_state_are_encoded() {
        let m = Metrics::new();
        m.observe(CommandKind::Write, Protocol::Line, Outcome::Ok, Duration::from_micros(30));
        m.observe(
            CommandKind::Write,
            Protocol::Line,
            Outcome::Err(ErrorKind::Timeout),
            Duration::from_secs(3),
        );
        m.observe_replies(
            CommandKind::Read,
            Protocol::Resp,
            &[Reply::NotFound, Reply::Err(ErrorReply::NotPrimary("b".into()))],
            Duration::from_millis(1),
        );
        let text = m.encode(&snapshot(), Format::Prometheus).unwrap();
        let v = |series| value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert_eq!(v(r#"dsm_requests_total{command="write",protocol="line"}"#), "2");
        assert_eq!(v(r#"dsm_requests_total{command="read",protocol="resp"}"#), "2");
        assert_eq!(v(r#"dsm_requests_total{command="ping",protocol="line"}"#), "0");
        assert_eq!(v(r#"dsm_errors_total{command="write",protocol="line",kind="timeout"}"#), "1");
        assert_eq!(v(r#"dsm_errors_total{command="read",protocol="resp",kind="notprimary"}"#), "1");
        assert!(value(&text, r#"dsm_errors_total{command="write",protocol="line",kind="invalid"}"#).is_none());
        assert_eq!(v(r#"dsm_request_duration_seconds_bucket{command="write",le="2e-05"}"#), "0");
        assert_eq!(v(r#"dsm_request_duration_seconds_bucket{command="write",le="4e-05"}"#), "1");
        assert_eq!(v(r#"dsm_request_duration_seconds_bucket{command="write",le="+Inf"}"#), "2");
        assert_eq!(v(r#"dsm_request_duration_seconds_count{command="write"}"#), "2");
        assert_eq!(v(r#"dsm_role{role="primary"}"#), "1");
        assert_eq!(v(r#"dsm_role{role="standby"}"#), "0");
        assert_eq!(v(r#"dsm_role{role="candidate"}"#), "0");
        assert_eq!(v("dsm_epoch"), "3");
        assert_eq!(v("dsm_members"), "3");
        assert_eq!(v("dsm_members_up"), "2");
        assert_eq!(v("dsm_keys"), "10");
        assert_eq!(v("dsm_wal_bytes"), "1234");
        assert_eq!(v("dsm_wal_seq"), "42");
        assert_eq!(v("dsm_connections"), "5");
        assert_eq!(v("dsm_compactions_total"), "1");
        assert_eq!(v("dsm_writes_total"), "7");
        assert_eq!(v("dsm_reads_total"), "8");
        assert!(text.contains("# TYPE dsm_request_duration_seconds histogram"), "{text}");
        assert!(text.contains("# TYPE dsm_role gauge"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_ends_in_eof_and_names_units() {
        let m = Metrics::new();
        let mut s = snapshot();
        s.role = Role::Standby;
        let text = m.encode(&s, Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# UNIT dsm_wal_bytes bytes"), "{text}");
        assert!(text.contains("# UNIT dsm_request_duration_seconds seconds"), "{text}");
        assert_eq!(value(&text, r#"dsm_role{role="standby"}"#).as_deref(), Some("1"));
        assert_eq!(value(&text, "dsm_writes_total").as_deref(), Some("7"));
    }
}
