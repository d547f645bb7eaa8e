//! `--metrics-listen`: a real cluster's primary serves `/metrics`, scraped over raw HTTP the
//! way Prometheus or curl would. Every sample line of a scrape must parse; the counters must
//! have counted what the test did; bad requests get a 4xx and the endpoint goes on answering.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{bin, must_read, must_write, Raw, TestCluster, READY};
use dsm_testkit::cluster::wait_for;

/// How long one HTTP exchange may take before the test gives up on it.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary with `n` slaves and its metrics on an ephemeral port, and that port's address.
fn start(n: usize) -> (TestCluster, String) {
    let c = TestCluster::start_with(n, &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&c);
    (c, addr)
}

/// The address in the primary's `metrics on http://ADDR/metrics` line: the real port, since
/// it was started on port 0. The line follows `listening on`, so it is polled for.
fn metrics_addr(c: &TestCluster) -> String {
    let find = |out: &str| {
        let rest = &out[out.find("metrics on http://")? + "metrics on http://".len()..];
        Some(rest[..rest.find("/metrics")?].to_string())
    };
    let mut addr = None;
    wait_for("the primary's `metrics on` line", READY, || {
        addr = find(&c.primary.output());
        addr.is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.output_tails(20)));
    addr.unwrap()
}

/// One HTTP answer: its status, headers (names lowercased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `request` on a fresh connection and reads the answer to the server's close.
fn exchange(addr: &str, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    // The server may answer and stop reading before a long request is all sent.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or_else(|| panic!("bad header {l:?}"));
            (name.to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    Answer { status, headers, body: body.to_string() }
}

fn scrape(addr: &str) -> Answer {
    let a = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(a.status, 200, "{a:?}");
    a
}

/// Every sample of a scrape, by series (`name{labels}` as written), after checking that every
/// line is a comment or a well-formed `name{labels} value`.
fn samples(body: &str) -> HashMap<String, f64> {
    let mut all = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(all.insert(series.clone(), value).is_none(), "{series} twice");
    }
    all
}

/// Parses `name{label="value",...} value`, labels optional; returns the series and the value.
fn parse_sample(line: &str) -> Result<(String, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    let name_ok = |s: &str, colon: bool| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    if !name_ok(name, true) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    if let Some(mut labels) = rest.strip_prefix('{') {
        loop {
            let eq = labels.find('=').ok_or("label without =")?;
            if !name_ok(&labels[..eq], false) {
                return Err(format!("bad label name {:?}", &labels[..eq]));
            }
            let mut value =
                labels[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?.char_indices();
            let close = loop {
                match value.next().ok_or("unterminated label value")? {
                    (_, '\\') => {
                        value.next().ok_or("dangling escape")?;
                    }
                    (i, '"') => break i,
                    _ => {}
                }
            };
            labels = &labels[eq + 2 + close + 1..];
            if let Some(more) = labels.strip_prefix(',') {
                labels = more;
            } else {
                rest = labels.strip_prefix('}').ok_or("labels not closed")?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    Ok((line[..line.len() - rest.len()].to_string(), value))
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no {series} in the scrape"))
}

#[test]
fn the_sample_parser_checks_names_labels_and_values() {
    assert_eq!(parse_sample("a_b 1").unwrap(), ("a_b".to_string(), 1.0));
    assert_eq!(parse_sample(r#"a{x="1",y="q\"z"} +Inf"#).unwrap().0, r#"a{x="1",y="q\"z"}"#);
    for bad in ["1a 1", "a{x=1} 1", "a{x=\"1\" 1", "a{1x=\"1\"} 1", "a", "a{x=\"1\"}1", "a one"] {
        assert!(parse_sample(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_scrape_reports_requests_latencies_and_state() {
    let (c, addr) = start(3);
    let mut client = c.client();
    for i in 0..20 {
        must_write(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    for i in 0..10 {
        assert_eq!(must_read(&mut client, &format!("k{i}")), Some(format!("v{i}")));
    }
    // A pipelined run of writes goes through the batch path; each is counted.
    let mut raw = c.raw();
    let run: String = (0..10).map(|i| format!("WRITE p{i} x\r\n")).collect();
    raw.send(run.as_bytes());
    for _ in 0..10 {
        let reply = raw.line();
        assert!(reply.starts_with("OK ") || reply.starts_with("ERR "), "{reply}");
    }
    assert!(raw.ask("NOPE").starts_with("ERR unknown command"));
    // RESP requests are counted under their own protocol label: 3 writes (one SET, one
    // pipelined pair), 1 read, 1 unknown command, 1 malformed frame.
    let resp =
        |args: &[&str]| dsm::resp::encode_request(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
    let mut pipelined = resp(&["SET", "r1", "x"]);
    pipelined.extend(resp(&["SET", "r2", "y"]));
    raw.send(&resp(&["SET", "r0", "x"]));
    raw.send(&pipelined);
    for _ in 0..3 {
        let reply = raw.line();
        assert!(reply == "+OK" || reply.starts_with('-'), "{reply}");
    }
    raw.send(&resp(&["GET", "r0"]));
    let _ = (raw.line(), raw.line());
    raw.send(&resp(&["NOPE"]));
    assert!(raw.line().starts_with("-ERR unknown command"));
    // A malformed frame is a failed request too, though it ends its connection unparsed.
    let mut malformed = c.raw();
    malformed.send(b"*1\r\n$x\r\n");
    assert_eq!(malformed.line(), "-ERR Protocol error: invalid bulk length");
    assert!(malformed.closed());

    // The slaves may be marked down for a moment on a busy machine: poll for all three up.
    let mut last = HashMap::new();
    wait_for("the scrape to show 3 members up", READY, || {
        last = samples(&scrape(&addr).body);
        last.get("dsm_members_up") == Some(&3.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}"));
    let a = scrape(&addr);
    assert_eq!(a.headers["content-type"], dsm::metrics::PROMETHEUS_CONTENT_TYPE);
    assert_eq!(a.headers["content-length"], a.body.len().to_string());
    assert_eq!(a.headers["connection"], "close");
    let s = samples(&a.body);
    assert!(get(&s, r#"dsm_requests_total{command="write",protocol="line"}"#) >= 30.0);
    assert!(get(&s, r#"dsm_requests_total{command="read",protocol="line"}"#) >= 10.0);
    assert_eq!(get(&s, r#"dsm_requests_total{command="write",protocol="resp"}"#), 3.0);
    assert_eq!(get(&s, r#"dsm_requests_total{command="read",protocol="resp"}"#), 1.0);
    // The unknown command and the malformed frame.
    assert_eq!(get(&s, r#"dsm_requests_total{command="other",protocol="resp"}"#), 2.0);
    assert_eq!(get(&s, r#"dsm_errors_total{command="other",protocol="resp",kind="invalid"}"#), 2.0);
    assert!(get(&s, r#"dsm_errors_total{command="other",protocol="line",kind="invalid"}"#) >= 1.0);
    let count = get(&s, r#"dsm_request_duration_seconds_count{command="write"}"#);
    assert!(count >= 30.0, "{count}");
    assert_eq!(get(&s, r#"dsm_request_duration_seconds_bucket{command="write",le="+Inf"}"#), count);
    assert!(get(&s, r#"dsm_request_duration_seconds_sum{command="write"}"#) > 0.0);
    // Buckets are cumulative.
    let mut buckets: Vec<(f64, f64)> = s
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(r#"dsm_request_duration_seconds_bucket{command="write",le=""#)?;
            Some((le.strip_suffix("\"}")?.parse().ok()?, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(get(&s, r#"dsm_role{role="primary"}"#), 1.0);
    assert_eq!(get(&s, r#"dsm_role{role="standby"}"#), 0.0);
    assert!(get(&s, "dsm_epoch") >= 1.0);
    assert_eq!(get(&s, "dsm_members"), 3.0);
    assert_eq!(get(&s, "dsm_members_up"), 3.0);
    assert!(get(&s, "dsm_keys") >= 20.0);
    assert!(get(&s, "dsm_wal_bytes") > 0.0);
    assert!(get(&s, "dsm_wal_seq") >= 20.0);
    assert!(get(&s, "dsm_writes_total") >= 20.0);
    assert!(get(&s, "dsm_reads_total") >= 10.0);
    assert_eq!(get(&s, "dsm_compactions_total"), 0.0);
    assert!(get(&s, "dsm_connections") >= 4.0, "three slaves and this test's raw connection");

    // Prometheus asks for OpenMetrics, and gets it.
    let om = exchange(
        &addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(om.status, 200);
    assert_eq!(om.headers["content-type"], dsm::metrics::OPENMETRICS_CONTENT_TYPE);
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(samples(&om.body).contains_key("dsm_wal_bytes"));
    // HEAD: the headers alone.
    let head = exchange(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.headers["content-length"].parse::<usize>().unwrap() > 0);
    // The state is read from where STATS reads it (and counters only grow).
    let writes: f64 = dsm_testkit::cluster::stat(&c.addr(), "writes").unwrap().parse().unwrap();
    assert!(get(&samples(&scrape(&addr).body), "dsm_writes_total") >= writes);
}

#[test]
fn bad_requests_get_4xx_and_the_endpoint_goes_on() {
    let (mut c, addr) = start(1);
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let table: [(&[u8], u16); 6] = [
        (b"GARBAGE\r\n\r\n", 400),
        (&big, 431),
        (b"GET /nope HTTP/1.0\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.0\r\n\r\n", 405),
        (b"GET /metrics HTTP/1.0\r\nno colon\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.0\r\n\xff\xfe\r\n\r\n", 400),
    ];
    for (request, status) in table {
        let a = exchange(&addr, request);
        assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(&request[..request.len().min(40)]));
        assert_eq!(a.headers["connection"], "close");
        // After each, a scrape is still answered.
        assert!(samples(&scrape(&addr).body).contains_key("dsm_epoch"));
    }
    assert_eq!(exchange(&addr, b"POST /metrics HTTP/1.0\r\n\r\n").headers["allow"], "GET, HEAD");
    // A head sent in pieces, and a connection closed before a request, are fine too.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /met").unwrap();
    drop(TcpStream::connect(&addr).unwrap());
    slow.write_all(b"rics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    slow.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The client port is untouched by all of it.
    assert!(c.primary.is_running());
    assert!(!c.primary.output().contains("panicked"));
    assert_eq!(Raw::connect(&c.addr()).ask("PING"), "PONG");
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_the_master_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("m.log");
    let out = Command::new(bin("dsm-master"))
        .args(["--listen", "127.0.0.1:0", "--backup", "none", "--metrics-listen", "nonsense"])
        .arg("--wal")
        .arg(&wal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on nonsense for --metrics-listen"), "{stderr}");
    assert!(!wal.exists(), "the log is not opened before the metrics address is bound");
    // The backup has the flag too.
    let help = Command::new(bin("dsm-backup")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--metrics-listen <ADDR>"));
}
