//! The dashboards match the code: every Grafana dashboard in `grafana/dashboards` is valid and
//! only queries series a running node really exports.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::scrape;
use crate::support::*;

const DATASOURCE_UID: &str = "chatty-prometheus";

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
