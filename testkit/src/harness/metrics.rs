//! Per-second metrics: what one request's outcome adds to a one-second bucket, how buckets from
//! many client threads merge, and the rows and totals written to `metrics.csv`, `metrics.json`
//! and `summary.json`. No sockets and no clocks here: callers say which second a request
//! completed in, so every rule (success or error, warm-up exclusion, percentiles) is tested
//! with plain values.
//!
//! A request is counted in the second (since the load started) in which its reply arrived.
//! Only successes (`OK` to a write, `VALUE` or `NOT_FOUND` to a read, within the deadline)
//! enter the latency figures; errors are counted by kind. Seconds before the end of the warm-up
//! and after the end of the run are never written.
//!
//! Each client thread owns a [`Recorder`] that fills the bucket of the current second and
//! sends it on a channel when the second changes; the run loop merges the buckets into a
//! [`Timeline`]. Client threads thus never share a lock per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crossbeam_channel::Sender;
use hdrhistogram::Histogram;

/// The highest latency a histogram can hold, in microseconds (one minute). Higher values (an
/// open-loop run far behind its schedule) are recorded as this value in the percentiles; the
/// means use the true values.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Significant decimal digits the latency histograms keep: 3 means a percentile is within 0.1%
/// of the true value.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// The percentiles written for reads and for writes, as (column suffix, quantile).
pub const PERCENTILES: [(&str, f64); 4] = [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)];

/// The kind of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `READ key`.
    Read,
    /// `WRITE key value`.
    Write,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No server could be connected to.
    Connect,
    /// The connection broke (reset, closed) during the request.
    Io,
    /// No reply within the request's deadline.
    Deadline,
    /// `ERR TIMEOUT`: the master logged a write but its quorum did not answer in time.
    ServerTimeout,
    /// `ERR UNAVAILABLE`: no quorum could be formed.
    Unavailable,
    /// `ERR NOTPRIMARY` that could not be followed.
    NotPrimary,
    /// Any other `ERR` reply.
    ServerError,
    /// A reply that does not answer the request (e.g. `OK` to a read), or does not parse.
    Unexpected,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorCounts`].
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Io,
        ErrorKind::Deadline,
        ErrorKind::ServerTimeout,
        ErrorKind::Unavailable,
        ErrorKind::NotPrimary,
        ErrorKind::ServerError,
        ErrorKind::Unexpected,
    ];

    /// The name used in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Io => "io",
            ErrorKind::Deadline => "deadline",
            ErrorKind::ServerTimeout => "err_timeout",
            ErrorKind::Unavailable => "err_unavailable",
            ErrorKind::NotPrimary => "err_notprimary",
            ErrorKind::ServerError => "err_other",
            ErrorKind::Unexpected => "unexpected_reply",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The expected reply, within the deadline.
    Success,
    /// Anything else.
    Error(ErrorKind),
}

/// Error counts by kind.
pub type ErrorCounts = [u64; ErrorKind::ALL.len()];

/// A fresh latency histogram. It grows to the highest value recorded (at most
/// [`MAX_LATENCY_US`]), so the many per-second histograms of a long run stay small: about 30 KiB
/// each while latencies stay under 10 ms, instead of 140 KiB for the whole range up front.
pub fn new_histogram() -> Histogram<u64> {
    // HISTOGRAM_SIGFIG is a constant within hdrhistogram's 0..=5, so this cannot fail.
    Histogram::new(HISTOGRAM_SIGFIG).expect("constant histogram precision is valid")
}

/// The counts and latencies of one kind of request.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Requests that completed (successes and errors).
    pub count: u64,
    /// Requests that succeeded.
    pub success: u64,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Sum of the latencies of the successes, µs.
    pub sum_us: u128,
    /// Latencies of the successes, µs.
    pub hist: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats { count: 0, success: 0, errors: [0; ErrorKind::ALL.len()], sum_us: 0, hist: new_histogram() }
    }
}

impl OpStats {
    /// Adds one request.
    pub fn record(&mut self, outcome: Outcome, latency_us: u64) {
        self.count += 1;
        match outcome {
            Outcome::Success => {
                self.success += 1;
                self.sum_us += u128::from(latency_us);
                // `record` grows the histogram (`saturating_record` would clamp to its
                // current size instead); growing cannot fail below MAX_LATENCY_US.
                let v = latency_us.clamp(1, MAX_LATENCY_US);
                if self.hist.record(v).is_err() {
                    self.hist.saturating_record(v);
                }
            }
            Outcome::Error(kind) => self.errors[kind.index()] += 1,
        }
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &OpStats) {
        self.count += other.count;
        self.success += other.success;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        // Both histograms have the same bounds, so adding cannot fail; if it ever did, the
        // percentiles would be low, never the counts wrong.
        if let Err(e) = self.hist.add(&other.hist) {
            log::warn!("could not merge latency histograms: {e}");
        }
    }

    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Mean latency of the successes, µs; `None` without any.
    pub fn mean_us(&self) -> Option<f64> {
        (self.success > 0).then(|| self.sum_us as f64 / self.success as f64)
    }

    /// A latency percentile of the successes (`q` in 0..=1), µs; `None` without any.
    pub fn percentile_us(&self, q: f64) -> Option<u64> {
        (self.success > 0).then(|| self.hist.value_at_quantile(q))
    }
}

/// Everything that completed in one second.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Seconds since the load started (warm-up included).
    pub second: u64,
    /// Reads.
    pub reads: OpStats,
    /// Writes.
    pub writes: OpStats,
}

impl Bucket {
    /// An empty bucket for `second`.
    pub fn new(second: u64) -> Bucket {
        Bucket { second, reads: OpStats::default(), writes: OpStats::default() }
    }

    /// Adds one request.
    pub fn record(&mut self, op: Op, outcome: Outcome, latency_us: u64) {
        match op {
            Op::Read => self.reads.record(outcome, latency_us),
            Op::Write => self.writes.record(outcome, latency_us),
        }
    }

    /// Adds everything in `other` (whatever its second).
    pub fn merge(&mut self, other: &Bucket) {
        self.reads.merge(&other.reads);
        self.writes.merge(&other.writes);
    }

    /// Requests that completed.
    pub fn total(&self) -> u64 {
        self.reads.count + self.writes.count
    }

    /// Requests that succeeded.
    pub fn success(&self) -> u64 {
        self.reads.success + self.writes.success
    }

    /// Requests that failed.
    pub fn errors(&self) -> u64 {
        self.reads.error_count() + self.writes.error_count()
    }

    /// Errors by kind, reads and writes together.
    pub fn errors_by_kind(&self) -> ErrorCounts {
        let mut e = self.reads.errors;
        for (a, b) in e.iter_mut().zip(self.writes.errors) {
            *a += b;
        }
        e
    }
}

/// A client thread's recorder: fills the bucket of the current second and sends it to the run
/// loop when a request completes in another second, and when dropped.
pub struct Recorder {
    current: Option<Bucket>,
    tx: Sender<Bucket>,
}

impl Recorder {
    /// A recorder sending its buckets on `tx`.
    pub fn new(tx: Sender<Bucket>) -> Recorder {
        Recorder { current: None, tx }
    }

    /// Records a request that completed in `second`.
    pub fn record(&mut self, second: u64, op: Op, outcome: Outcome, latency_us: u64) {
        if self.current.as_ref().is_some_and(|b| b.second != second) {
            self.flush();
        }
        self.current.get_or_insert_with(|| Bucket::new(second)).record(op, outcome, latency_us);
    }

    /// Sends the current bucket now.
    pub fn flush(&mut self) {
        if let Some(b) = self.current.take() {
            // The run loop may be gone after an error; its results are then lost anyway.
            let _ = self.tx.send(b);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// All buckets of a run, by second, and which seconds are measured.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Seconds of warm-up: buckets `0..warmup_s` are never written.
    pub warmup_s: u64,
    /// Measured seconds: buckets `warmup_s..warmup_s + duration_s`.
    pub duration_s: u64,
    buckets: BTreeMap<u64, Bucket>,
}

impl Timeline {
    /// An empty timeline.
    pub fn new(warmup_s: u64, duration_s: u64) -> Timeline {
        Timeline { warmup_s, duration_s, buckets: BTreeMap::new() }
    }

    /// Merges a bucket from a client thread. Buckets after the measured window (requests that
    /// completed after the end) are dropped.
    pub fn add(&mut self, bucket: Bucket) {
        if bucket.second >= self.warmup_s + self.duration_s {
            return;
        }
        match self.buckets.get_mut(&bucket.second) {
            Some(b) => b.merge(&bucket),
            None => {
                self.buckets.insert(bucket.second, bucket);
            }
        }
    }

    /// The bucket of `second` so far (warm-up included), for the progress line.
    pub fn get(&self, second: u64) -> Option<&Bucket> {
        self.buckets.get(&second)
    }

    /// The measured seconds, in order, each with its bucket (empty when nothing completed in
    /// it, so a total outage shows as a row of zeros rather than a missing row).
    pub fn measured(&self) -> Vec<Bucket> {
        (self.warmup_s..self.warmup_s + self.duration_s)
            .map(|s| self.buckets.get(&s).cloned().unwrap_or_else(|| Bucket::new(s)))
            .collect()
    }

    /// Everything measured, merged into one bucket (its `second` is the first measured one).
    pub fn measured_total(&self) -> Bucket {
        let mut total = Bucket::new(self.warmup_s);
        for b in self.buckets.range(self.warmup_s..self.warmup_s + self.duration_s) {
            total.merge(b.1);
        }
        total
    }
}

/// One value in a row of `metrics.csv` / `metrics.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// A count.
    Int(u64),
    /// A measured quantity.
    Float(f64),
    /// Text.
    Text(String),
    /// Not measured (e.g. a mean latency in a second without a success): empty in CSV, `null`
    /// in JSON.
    Missing,
}

impl Cell {
    /// The CSV text of the cell.
    pub fn to_csv(&self) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) if v.is_finite() => format!("{v:.3}"),
            Cell::Float(_) | Cell::Missing => String::new(),
            Cell::Text(t) => t.clone(),
        }
    }

    /// The JSON text of the cell.
    pub fn to_json(&self) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) if v.is_finite() => format!("{v:.3}"),
            Cell::Float(_) | Cell::Missing => "null".to_string(),
            Cell::Text(t) => json_string(t),
        }
    }
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Cell {
        v.map_or(Cell::Missing, Cell::Float)
    }
}

impl From<Option<u64>> for Cell {
    fn from(v: Option<u64>) -> Cell {
        v.map_or(Cell::Missing, Cell::Int)
    }
}

/// A row: named cells, in column order.
pub type Fields = Vec<(String, Cell)>;

/// The first columns of `metrics.csv`, in order: the original harness's columns, then ours.
pub const BASE_COLUMNS: [&str; 11] = [
    "timestamp",
    "client_count",
    "slave_count",
    "total_requests",
    "success_count",
    "error_count",
    "read_latency_us",
    "write_latency_us",
    "throughput_rps",
    "read_count",
    "write_count",
];

/// What a row needs besides its bucket.
#[derive(Debug, Clone, Default)]
pub struct RowContext {
    /// Unix time, in seconds, of the start of the bucket.
    pub timestamp: f64,
    /// Seconds since the end of the warm-up at the start of the bucket.
    pub elapsed_s: u64,
    /// Client threads.
    pub client_count: u64,
    /// Live registered slaves the master reported at the end of the second; `None` if it could
    /// not be asked.
    pub slave_count: Option<u64>,
    /// Requests each slave served in the second (`slave.<id>.requests` deltas), by id, when
    /// the master reports them.
    pub slave_requests: Vec<(String, Option<u64>)>,
}

/// The cells of one row of `metrics.csv`: [`BASE_COLUMNS`], then `elapsed_s`, the read and
/// write percentiles (`read_p50_us` .. `write_p999_us`), `read_error_count`,
/// `write_error_count`, and one `slave_requests.<id>` column per slave.
///
/// `throughput_rps` counts successes only: a second of errors is no throughput.
pub fn row_fields(bucket: &Bucket, ctx: &RowContext) -> Fields {
    let mut f: Fields = vec![
        ("timestamp".into(), Cell::Float(ctx.timestamp)),
        ("client_count".into(), Cell::Int(ctx.client_count)),
        ("slave_count".into(), ctx.slave_count.into()),
        ("total_requests".into(), Cell::Int(bucket.total())),
        ("success_count".into(), Cell::Int(bucket.success())),
        ("error_count".into(), Cell::Int(bucket.errors())),
        ("read_latency_us".into(), bucket.reads.mean_us().into()),
        ("write_latency_us".into(), bucket.writes.mean_us().into()),
        ("throughput_rps".into(), Cell::Float(bucket.success() as f64)),
        ("read_count".into(), Cell::Int(bucket.reads.count)),
        ("write_count".into(), Cell::Int(bucket.writes.count)),
        ("elapsed_s".into(), Cell::Int(ctx.elapsed_s)),
    ];
    push_percentiles(&mut f, bucket);
    f.push(("read_error_count".into(), Cell::Int(bucket.reads.error_count())));
    f.push(("write_error_count".into(), Cell::Int(bucket.writes.error_count())));
    for (id, n) in &ctx.slave_requests {
        f.push((format!("slave_requests.{id}"), (*n).into()));
    }
    f
}

/// Appends `read_p50_us` .. `read_p999_us`, then `write_p50_us` .. `write_p999_us`.
pub fn push_percentiles(f: &mut Fields, bucket: &Bucket) {
    for (name, stats) in [("read", &bucket.reads), ("write", &bucket.writes)] {
        for (p, q) in PERCENTILES {
            f.push((format!("{name}_{p}_us"), stats.percentile_us(q).into()));
        }
    }
}

/// Writes rows as CSV: a header from the first row's names, then one line per row. Every row
/// must have the same columns.
pub fn write_csv(rows: &[Fields], header_if_empty: &[&str]) -> dsm::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header: Vec<String> = match rows.first() {
        Some(r) => r.iter().map(|(n, _)| n.clone()).collect(),
        None => header_if_empty.iter().map(|s| s.to_string()).collect(),
    };
    w.write_record(&header).map_err(csv_error)?;
    for r in rows {
        if r.len() != header.len() || r.iter().zip(&header).any(|((n, _), h)| n != h) {
            return Err(dsm::Error::Config("metrics rows with different columns".into()));
        }
        w.write_record(r.iter().map(|(_, c)| c.to_csv())).map_err(csv_error)?;
    }
    w.into_inner().map_err(|e| dsm::Error::Io(std::io::Error::other(e.to_string())))
}

fn csv_error(e: csv::Error) -> dsm::Error {
    dsm::Error::Io(std::io::Error::other(e.to_string()))
}

/// A JSON object of the fields, on one line.
pub fn json_object(fields: &Fields) -> String {
    let mut s = String::from("{");
    for (i, (name, cell)) in fields.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}: {}", json_string(name), cell.to_json());
    }
    s.push('}');
    s
}

/// A JSON array of objects, one per line.
pub fn json_array(rows: &[Fields]) -> String {
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        s.push_str("  ");
        s.push_str(&json_object(r));
        if i + 1 < rows.len() {
            s.push(',');
        }
        s.push('\n');
    }
    s.push_str("]\n");
    s
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The difference between two readings of a counter that may have been reset (the master
/// restarted, or a backup took over with counters of its own): a smaller reading means a reset,
/// and everything counted since is the new reading.
pub fn counter_delta(before: u64, after: u64) -> u64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    const OK: Outcome = Outcome::Success;

    #[test]
    fn counts_add_up_and_errors_stay_out_of_latencies() {
        let mut b = Bucket::new(0);
        b.record(Op::Read, OK, 100);
        b.record(Op::Read, OK, 300);
        b.record(Op::Read, Outcome::Error(ErrorKind::Deadline), 2_000_000);
        b.record(Op::Write, OK, 1000);
        b.record(Op::Write, Outcome::Error(ErrorKind::Io), 5);
        assert_eq!(b.total(), 5);
        assert_eq!(b.success() + b.errors(), b.total());
        assert_eq!(b.reads.count + b.writes.count, b.total());
        assert_eq!(b.reads.mean_us(), Some(200.0));
        assert_eq!(b.writes.mean_us(), Some(1000.0));
        assert_eq!(b.reads.hist.len(), 2, "errors are not in the histogram");
        let by_kind = b.errors_by_kind();
        assert_eq!(by_kind[ErrorKind::Deadline.index()], 1);
        assert_eq!(by_kind[ErrorKind::Io.index()], 1);
    }

    #[test]
    fn no_success_means_no_latency() {
        let mut b = Bucket::new(0);
        b.record(Op::Read, Outcome::Error(ErrorKind::Connect), 10);
        assert_eq!(b.reads.mean_us(), None);
        assert_eq!(b.reads.percentile_us(0.99), None);
        let f = row_fields(&b, &RowContext::default());
        let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, c)| c.clone());
        assert_eq!(get("read_latency_us"), Some(Cell::Missing));
        assert_eq!(get("read_p99_us"), Some(Cell::Missing));
        assert_eq!(get("throughput_rps"), Some(Cell::Float(0.0)));
        assert_eq!(get("error_count"), Some(Cell::Int(1)));
        assert_eq!(get("success_count"), Some(Cell::Int(0)));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut s = OpStats::default();
        for v in 1..=1000u64 {
            s.record(OK, v);
        }
        let within = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.001 + 1e-9, "got {got}, want {want}");
        };
        within(s.percentile_us(0.50).unwrap(), 500);
        within(s.percentile_us(0.95).unwrap(), 950);
        within(s.percentile_us(0.99).unwrap(), 990);
        within(s.percentile_us(0.999).unwrap(), 999);
        assert_eq!(s.mean_us(), Some(500.5));
    }

    #[test]
    fn the_histogram_grows_to_the_latencies_it_gets() {
        let mut s = OpStats::default();
        for v in [50, 100, 2_000_000] {
            s.record(OK, v);
        }
        let max = s.percentile_us(1.0).unwrap();
        assert!((1_998_000..=2_002_000).contains(&max), "{max}");
        assert!(s.percentile_us(0.5).unwrap() <= 101);
    }

    #[test]
    fn huge_latencies_saturate_in_the_histogram_but_not_in_the_mean() {
        let mut s = OpStats::default();
        s.record(OK, MAX_LATENCY_US * 2);
        assert_eq!(s.mean_us(), Some((MAX_LATENCY_US * 2) as f64));
        let p = s.percentile_us(1.0).unwrap();
        assert!(p <= MAX_LATENCY_US + MAX_LATENCY_US / 1000, "{p}");
    }

    #[test]
    fn recorder_buckets_by_second_and_flushes_on_change_and_drop() {
        let (tx, rx) = unbounded();
        let mut r = Recorder::new(tx);
        r.record(0, Op::Read, OK, 10);
        r.record(0, Op::Write, OK, 20);
        assert!(rx.try_recv().is_err(), "nothing sent within a second");
        r.record(1, Op::Read, OK, 30);
        let first = rx.try_recv().unwrap();
        assert_eq!((first.second, first.total()), (0, 2));
        r.record(3, Op::Read, OK, 30);
        assert_eq!(rx.try_recv().unwrap().second, 1);
        drop(r);
        let last = rx.try_recv().unwrap();
        assert_eq!((last.second, last.total()), (3, 1));
    }

    #[test]
    fn timeline_merges_threads_and_excludes_warmup_and_tail() {
        let mut t = Timeline::new(2, 3);
        for thread in 0..4u64 {
            for second in 0..7 {
                let mut b = Bucket::new(second);
                b.record(Op::Read, OK, 100 + thread);
                b.record(Op::Write, Outcome::Error(ErrorKind::ServerTimeout), 1);
                t.add(b);
            }
        }
        let rows = t.measured();
        assert_eq!(rows.iter().map(|b| b.second).collect::<Vec<_>>(), vec![2, 3, 4]);
        for b in &rows {
            assert_eq!((b.total(), b.success(), b.errors()), (8, 4, 4));
        }
        let total = t.measured_total();
        assert_eq!((total.total(), total.success()), (24, 12));
        assert!(t.get(0).is_some(), "warm-up kept for the progress line");
        assert!(t.get(5).is_none(), "after the end is dropped");
    }

    #[test]
    fn an_empty_second_is_a_row_of_zeros() {
        let mut t = Timeline::new(0, 3);
        let mut b = Bucket::new(2);
        b.record(Op::Read, OK, 1);
        t.add(b);
        let rows = t.measured();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].total(), 0);
        assert_eq!(rows[2].total(), 1);
    }

    #[test]
    fn row_columns_are_documented_order() {
        let ctx = RowContext {
            slave_requests: vec![("s1".into(), Some(5)), ("s2".into(), None)],
            ..RowContext::default()
        };
        let f = row_fields(&Bucket::new(0), &ctx);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..BASE_COLUMNS.len()], &BASE_COLUMNS);
        for col in [
            "elapsed_s",
            "read_p50_us",
            "read_p999_us",
            "write_p95_us",
            "write_p99_us",
            "slave_requests.s1",
            "slave_requests.s2",
        ] {
            assert!(names.contains(&col), "{col} missing from {names:?}");
        }
    }

    #[test]
    fn csv_and_json_have_the_same_fields() {
        let mut b = Bucket::new(0);
        b.record(Op::Write, OK, 7);
        let rows = vec![row_fields(&b, &RowContext::default())];
        let csv = String::from_utf8(write_csv(&rows, &[]).unwrap()).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let json = json_array(&rows);
        for h in &header {
            assert!(json.contains(&format!("\"{h}\": ")), "{h} not in {json}");
        }
        assert!(json.contains("\"read_latency_us\": null"));
        assert!(json.contains("\"write_latency_us\": 7.000"));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn counter_resets_are_not_negative() {
        assert_eq!(counter_delta(10, 15), 5);
        assert_eq!(counter_delta(10, 3), 3);
    }
}
