//! Observability: the metrics move by exactly what happened, and every Grafana dashboard in
//! `grafana/dashboards` only queries series a running node really exports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::helpers::*;

const DATASOURCE_UID: &str = "chatty-prometheus";

// ---------------------------------------------------------------------------------------------
// A small parser of the Prometheus text exposition format.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Clone, Default)]
struct Scrape {
    samples: Vec<Sample>,
    /// `# TYPE` lines: family name → counter, gauge, histogram, …
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                    panic!("malformed TYPE line: {line}");
                };
                s.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            s.samples.push(parse_sample(line));
        }
        s
    }

    /// The sum of every sample named `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The label names carried by samples named `name`.
    fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }

    /// The values label `label` takes on samples named `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("malformed sample line: {line}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // `}` or `key="value"` followed by `,` or `}`.
            match chars.peek() {
                Some(&(i, '}')) => break i + 1,
                None => bad(),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            }
            labels.insert(key.trim().to_owned(), value);
            if let Some(&(_, ',')) = chars.peek() {
                chars.next();
            }
        };
        rest = &body[end..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| bad())
        .parse()
        .unwrap_or_else(|_| bad());
    Sample {
        name,
        labels,
        value,
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    Scrape::parse(&app.metrics().await)
}

fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

fn show(name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// Some series are updated just after the client can observe the effect (a delivery is counted
/// after the frames are queued, a close after the close frame is written): poll until the
/// delta reaches `expected`, then return a scrape on which it must be exactly `expected`.
async fn settled(
    app: &TestApp,
    before: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(app).await;
        let d = delta(before, &now, name, labels);
        if d >= expected || tokio::time::Instant::now() >= deadline {
            assert_eq!(d, expected, "{} moved by {d}", show(name, labels));
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Counters follow real traffic.

#[tokio::test]
async fn a_conversation_moves_every_counter_by_exactly_what_happened() {
    const N: usize = 7;
    const ROOM: &str = "observed";
    let members = ["alice", "bob", "carol"];
    let app = spawn_app().await;
    let start = scrape(&app).await;

    // Three members connect and join.
    let mut clients = Vec::new();
    for u in members {
        let mut c = app.connect(u).await;
        assert_eq!(c.join(ROOM).await["type"], "joined");
        clients.push(c);
    }
    let joined = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&start, &joined, name, labels);
    assert_eq!(d("chatty_connections_opened_total", &[]), 3.0);
    assert_eq!(d("chatty_connections_active", &[]), 3.0);
    assert_eq!(d("chatty_actors_alive", &[("kind", "connection")]), 3.0);
    assert_eq!(d("chatty_actors_alive", &[("kind", "room")]), 1.0);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "join")]
        ),
        3.0
    );
    assert_eq!(d("chatty_connections_closed_total", &[]), 0.0);

    // N sends from one member: each is committed once and fanned out to all three.
    for i in 0..N {
        let ack = clients[0]
            .send_msg(ROOM, &format!("m{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    for c in clients.iter_mut() {
        assert_eq!(c.messages(ROOM, N).await.len(), N);
    }
    let n = N as f64;
    let members_n = members.len() as f64;
    // Batches are counted before their acks go out, so this count is final now.
    let batches = delta(
        &joined,
        &scrape(&app).await,
        "chatty_writer_batch_size_count",
        &[],
    );
    assert!(
        (1.0..=n).contains(&batches),
        "{batches} batches for {N} sends"
    );
    settled(&app, &joined, "chatty_deliveries_total", &[], n * members_n).await;
    // One local commit→delivery observation per batch the room takes in.
    let sent = settled(
        &app,
        &joined,
        "chatty_commit_delivery_seconds_count",
        &[("scope", "local")],
        batches,
    )
    .await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&joined, &sent, name, labels);
    assert_eq!(d("chatty_messages_persisted_total", &[]), n);
    assert_eq!(d("chatty_messages_duplicate_total", &[]), 0.0);
    assert_eq!(d("chatty_deliveries_total", &[]), n * members_n);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "send")]
        ),
        n
    );
    assert_eq!(d("chatty_send_ack_seconds_count", &[]), n);
    assert_eq!(
        d("chatty_send_ack_seconds_bucket", &[("le", "+Inf")]),
        n,
        "the +Inf bucket counts every observation"
    );
    assert!(d("chatty_send_ack_seconds_sum", &[]) > 0.0);
    // Group commit: N distinct messages in between 1 and N batches.
    assert_eq!(d("chatty_writer_batch_size_sum", &[]), n);
    assert_eq!(d("chatty_writer_batch_size_count", &[]), batches);
    assert_eq!(
        d("chatty_writer_flush_duration_seconds_count", &[]),
        batches,
        "one timed flush per committed batch"
    );
    assert_eq!(
        d(
            "chatty_commit_delivery_seconds_count",
            &[("scope", "remote")]
        ),
        0.0,
        "a single node has no remote deliveries"
    );
    assert_eq!(d("chatty_writer_unavailable_total", &[]), 0.0);
    assert_eq!(d("chatty_writer_flush_errors_total", &[]), 0.0);
    assert_eq!(d("chatty_connections_opened_total", &[]), 0.0);

    // Every member got N message frames and the sender N acks besides.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = delta(
            &joined,
            &scrape(&app).await,
            "chatty_frames_out_total",
            &[("encoding", "json")],
        );
        if out >= n * members_n + n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chatty_frames_out_total{{encoding=\"json\"}} moved by only {out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A resent cid is answered with the original seq and counted as a duplicate only.
    let before = scrape(&app).await;
    let again = clients[0].send_msg(ROOM, "m0", "hello again").await;
    assert_eq!(again["type"], "ack", "{again}");
    assert_eq!(again["seq"], 1);
    let after = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("chatty_messages_duplicate_total", &[]), 1.0);
    assert_eq!(d("chatty_messages_persisted_total", &[]), 0.0);
    assert_eq!(d("chatty_deliveries_total", &[]), 0.0);
    assert_eq!(d("chatty_send_ack_seconds_count", &[]), 1.0);
    assert_eq!(
        d(
            "chatty_frames_in_total",
            &[("encoding", "json"), ("type", "send")]
        ),
        1.0
    );

    // A handshake with a bad token is refused and counted under its reason, and opens nothing.
    let before = scrape(&app).await;
    assert_eq!(
        handshake_status(&app.ws_url(), &[("authorization", "Bearer not.a.jwt")]).await,
        401
    );
    let after = scrape(&app).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(
        d(
            "chatty_handshake_rejections_total",
            &[("reason", "token_invalid")]
        ),
        1.0
    );
    assert_eq!(d("chatty_handshake_rejections_total", &[]), 1.0);
    assert_eq!(d("chatty_connections_opened_total", &[]), 0.0);
    assert_eq!(d("chatty_connections_active", &[]), 0.0);

    // An HTTP API request is counted under its route template, never the raw path.
    let before = scrape(&app).await;
    let http = reqwest::Client::new();
    let r = http
        .get(app.http(&format!("/api/v1/rooms/{ROOM}/messages?limit=100")))
        .bearer_auth(app.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(N));
    let after = scrape(&app).await;
    let route = [("route", "/api/v1/rooms/{room}/messages")];
    assert_eq!(
        delta(
            &before,
            &after,
            "chatty_http_requests_total",
            &[route[0], ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "chatty_http_requests_total", &[]),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "chatty_http_request_duration_seconds_count",
            &route
        ),
        1.0
    );
    let routes = after.label_values("chatty_http_requests_total", "route");
    assert!(
        routes.iter().all(|r| !r.contains(ROOM)),
        "a raw path leaked into the route label: {routes:?}"
    );

    // A client that leaves: one close with 1000, one connection fewer.
    let before = scrape(&app).await;
    clients.pop().unwrap().close().await;
    let after = settled(
        &app,
        &before,
        "chatty_connections_closed_total",
        &[("code", "1000")],
        1.0,
    )
    .await;
    assert_eq!(
        delta(&before, &after, "chatty_connections_closed_total", &[]),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "chatty_connections_active", &[]),
        -1.0
    );
    assert_eq!(after.sum("chatty_connections_active", &[]), 2.0);
}

// ---------------------------------------------------------------------------------------------
// The dashboards match the code.

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &Value, out: &mut Vec<Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p.clone());
        if let Some(nested) = p.get("panels") {
            all_panels(nested, out);
        }
    }
}

/// Every string under an `expr` key, anywhere in the document (targets, annotations).
fn all_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => all_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| all_exprs(v, out)),
        _ => {}
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// One `chatty_*` series reference in a PromQL expression.
#[derive(Debug)]
struct Reference {
    name: String,
    /// (label, operator, value) of its `{…}` selector.
    matchers: Vec<(String, String, String)>,
    /// Followed by a range (`[…]`), as a rate() or increase() argument is.
    ranged: bool,
}

fn references(expr: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = expr[i..].find("chatty_") {
        let start = i + off;
        let boundary = expr[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_ident(c));
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        i = end;
        if !boundary {
            continue;
        }
        let name = expr[start..end].to_owned();
        let mut matchers = Vec::new();
        let mut rest = &expr[end..];
        if let Some(body) = rest.strip_prefix('{') {
            let close = body
                .find('}')
                .unwrap_or_else(|| panic!("unclosed selector in {expr}"));
            for m in body[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = m
                    .find(['=', '!'])
                    .unwrap_or_else(|| panic!("bad matcher {m:?} in {expr}"));
                let label = m[..op_at].trim().to_owned();
                let after = &m[op_at..];
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| after.starts_with(op))
                    .unwrap_or_else(|| panic!("bad matcher {m:?} in {expr}"));
                let value = after[op.len()..].trim().trim_matches('"').to_owned();
                matchers.push((label, op.to_owned(), value));
            }
            rest = &body[close + 1..];
            i = expr.len() - rest.len();
        }
        let ranged = rest.trim_start().starts_with('[');
        out.push(Reference {
            name,
            matchers,
            ranged,
        });
    }
    out
}

/// The label lists of `by (…)` and `without (…)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut i = 0;
        while let Some(off) = expr[i..].find(kw) {
            let start = i + off;
            i = start + kw.len();
            let before_ok = expr[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !is_ident(c));
            let rest = expr[i..].trim_start();
            if !before_ok || !rest.starts_with('(') {
                continue;
            }
            let close = rest.find(')').expect("unclosed grouping");
            out.extend(
                rest[1..close]
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// A scrape with every labelled family populated: `IntCounterVec`s and `HistogramVec`s that
/// no code path has touched yet are left out of the exposition, so drive one of each.
async fn warmed_up_scrape(app: &TestApp) -> Scrape {
    let mut c = app.connect("warmup").await;
    c.join("warmup").await;
    assert_eq!(c.send_msg("warmup", "w1", "hi").await["type"], "ack");
    c.send(json!({"type": "join", "ref": "bad"})).await; // no room: an error frame
    c.next_of("error").await;
    c.close().await;
    let r = reqwest::get(app.http("/healthz")).await.unwrap();
    assert!(r.status().is_success());
    // The close is counted once the server has written its close frame.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(app).await;
        if s.sum("chatty_connections_closed_total", &[]) >= 1.0 {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the warm-up connection's close to be counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_dashboard_is_valid_and_queries_only_series_the_server_exports() {
    let root = crate_root();
    let grafana = root.join("grafana");

    // Provisioning: the datasource uid every panel points at, and where dashboards load from.
    let ds = read(&grafana.join("provisioning/datasources/prometheus.yml"));
    let ds_lines: Vec<&str> = ds.lines().map(str::trim).collect();
    assert!(
        ds_lines.contains(&format!("uid: {DATASOURCE_UID}").as_str()),
        "the datasource provisioning sets uid {DATASOURCE_UID}"
    );
    assert!(ds_lines.contains(&"type: prometheus"));
    assert!(ds_lines.contains(&"url: http://prometheus:9090"));
    let provider = read(&grafana.join("provisioning/dashboards/chatty.yml"));
    assert!(provider
        .lines()
        .any(|l| l.trim() == "path: /var/lib/grafana/dashboards"));
    let prom = read(&grafana.join("prometheus.yml"));
    for target in ["chatty-1:9090", "chatty-2:9090"] {
        assert!(prom.contains(target), "prometheus.yml scrapes {target}");
    }

    let app = spawn_app().await;
    let live = warmed_up_scrape(&app).await;
    assert!(
        live.types.len() > 20,
        "a live scrape lists the registered families"
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(grafana.join("dashboards"))
        .expect("grafana/dashboards exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let stems: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["actors", "traffic", "dependencies"] {
        assert!(
            stems.contains(want),
            "grafana/dashboards/{want}.json exists"
        );
    }

    let mut problems: Vec<String> = Vec::new();
    let mut uids = HashSet::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        let f = file.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Value = serde_json::from_str(&read(file))
            .unwrap_or_else(|e| panic!("{f} is not valid JSON: {e}"));
        let uid = dash["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty(), "{f} has a uid");
        assert!(uids.insert(uid.to_owned()), "{f}: uid {uid} is reused");
        assert!(
            dash["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{f} has a title"
        );
        let schema = dash["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            (36..=41).contains(&schema),
            "{f}: schemaVersion {schema} is not Grafana 10–12's"
        );

        let mut panels = Vec::new();
        all_panels(&dash["panels"], &mut panels);
        assert!(!panels.is_empty(), "{f} has panels");
        let mut ids = HashSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?");
            let ty = p["type"].as_str().unwrap_or("");
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                Some(id) => problems.push(format!("{f}: panel id {id} is used twice")),
                None => problems.push(format!("{f}: panel {title:?} has no numeric id")),
            }
            if ![
                "row",
                "timeseries",
                "heatmap",
                "stat",
                "gauge",
                "bargauge",
                "table",
                "text",
            ]
            .contains(&ty)
            {
                problems.push(format!("{f}: panel {title:?} has unexpected type {ty:?}"));
            }
            if ty == "row" || ty == "text" {
                if p.get("datasource").is_some_and(|d| !d.is_null())
                    && p["datasource"]["uid"] != DATASOURCE_UID
                {
                    problems.push(format!("{f}: row {title:?} names another datasource"));
                }
                continue;
            }
            if p["datasource"] != json!({"type": "prometheus", "uid": DATASOURCE_UID}) {
                problems.push(format!(
                    "{f}: panel {title:?} datasource is {}",
                    p["datasource"]
                ));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{f}: panel {title:?} has no queries"));
            }
            for t in &targets {
                if t.get("datasource").is_some() && t["datasource"]["uid"] != DATASOURCE_UID {
                    problems.push(format!(
                        "{f}: a query of {title:?} names datasource {}",
                        t["datasource"]
                    ));
                }
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    problems.push(format!("{f}: a query of {title:?} has no expr"));
                }
            }
        }

        // Every PromQL text: targets, annotations, and the template variables' queries.
        let mut exprs = Vec::new();
        all_exprs(&dash, &mut exprs);
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("?");
            if v.get("datasource").is_some_and(|d| !d.is_null())
                && v["datasource"]["uid"] != DATASOURCE_UID
            {
                problems.push(format!("{f}: variable {name} names another datasource"));
            }
            for q in [&v["query"], &v["query"]["query"], &v["definition"]] {
                if let Some(q) = q.as_str() {
                    exprs.push(q.to_owned());
                }
            }
        }
        for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
            if a["builtIn"] != 1 && a["datasource"]["uid"] != DATASOURCE_UID {
                problems.push(format!(
                    "{f}: annotation {} names another datasource",
                    a["name"]
                ));
            }
        }

        for expr in &exprs {
            let refs = references(expr);
            let mut labels_in_expr: BTreeSet<String> =
                ["instance", "job", "le"].map(String::from).into();
            for r in &refs {
                // Resolve the family: the name itself, or a histogram's _bucket/_sum/_count.
                let family = if live.types.contains_key(&r.name) {
                    Some((r.name.clone(), live.types[&r.name].clone()))
                } else {
                    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                        let base = r.name.strip_suffix(suffix)?;
                        (live.types.get(base).map(String::as_str) == Some("histogram"))
                            .then(|| (base.to_owned(), "histogram".to_owned()))
                    })
                };
                let Some((base, kind)) = family else {
                    problems.push(format!("{f}: {} is not in the scrape ({expr})", r.name));
                    continue;
                };
                used.insert(base.clone());
                if kind == "histogram" && r.name == base {
                    problems.push(format!(
                        "{f}: histogram {base} queried without _bucket/_sum/_count ({expr})"
                    ));
                }
                if (kind == "counter" || kind == "histogram") && !r.ranged {
                    problems.push(format!(
                        "{f}: {} is cumulative; query it through rate()/increase() ({expr})",
                        r.name
                    ));
                }
                let have = live.label_names(&r.name);
                labels_in_expr.extend(have.iter().cloned());
                for (label, op, value) in &r.matchers {
                    if label == "instance" || label == "job" {
                        continue;
                    }
                    if !have.contains(label) {
                        problems.push(format!(
                            "{f}: {} has no label {label:?} (it has {have:?}) ({expr})",
                            r.name
                        ));
                    } else if op == "=" && !value.contains('$') {
                        let values = live.label_values(&r.name, label);
                        if !values.contains(value) {
                            problems.push(format!(
                                "{f}: {}{{{label}=\"{value}\"}} is not exported \
                                 (values: {values:?}) ({expr})",
                                r.name
                            ));
                        }
                    }
                }
            }
            for l in grouping_labels(expr) {
                if !labels_in_expr.contains(&l) {
                    problems.push(format!("{f}: grouping by unknown label {l:?} ({expr})"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n  {}",
        problems.join("\n  ")
    );
    // The dashboards cover the core series (a dashboard that lost its queries fails here).
    for core in [
        "chatty_actors_alive",
        "chatty_actor_restarts_total",
        "chatty_queue_depth",
        "chatty_writer_batch_size",
        "chatty_writer_flush_duration_seconds",
        "chatty_connections_active",
        "chatty_messages_persisted_total",
        "chatty_deliveries_total",
        "chatty_frames_in_total",
        "chatty_send_ack_seconds",
        "chatty_commit_delivery_seconds",
        "chatty_join_replay_seconds",
        "chatty_db_pool_connections",
        "chatty_redis_errors_total",
        "chatty_bus_published_total",
        "chatty_gap_fills_total",
    ] {
        assert!(used.contains(core), "no dashboard queries {core}");
    }
}

#[test]
fn the_promql_reader_finds_names_selectors_ranges_and_groupings() {
    let e = r#"histogram_quantile(0.99, sum by (le, scope) (rate(chatty_x_bucket{instance=~"$i",scope="local"}[5m]))) / chatty_g"#;
    let refs = references(e);
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0].name, "chatty_x_bucket");
    assert!(refs[0].ranged);
    assert_eq!(
        refs[0].matchers,
        vec![
            ("instance".into(), "=~".into(), "$i".into()),
            ("scope".into(), "=".into(), "local".into())
        ]
    );
    assert_eq!(refs[1].name, "chatty_g");
    assert!(!refs[1].ranged);
    assert_eq!(grouping_labels(e), vec!["le", "scope"]);
    let s = Scrape::parse(
        "# TYPE chatty_h histogram\nchatty_h_bucket{route=\"/a/{b}\",le=\"+Inf\"} 3\nchatty_h_count 3\n",
    );
    assert_eq!(s.types["chatty_h"], "histogram");
    assert_eq!(
        s.sum("chatty_h_bucket", &[("route", "/a/{b}"), ("le", "+Inf")]),
        3.0
    );
}
