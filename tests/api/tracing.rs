//! Tracing: one message followed by OpenTelemetry across three real nodes, exported to a real
//! OTLP/HTTP receiver in this process (protobuf decoded); log lines that name the trace; and,
//! with tracing off, no exporter at all.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{redis_url, unique_room, Cluster};
use crate::support::*;

fn node_ids(c: &Cluster) -> Vec<String> {
    c.envs
        .iter()
        .map(|env| {
            env.iter()
                .find(|(k, _)| k == "CHATTY__NODE__ID")
                .map(|(_, v)| v.clone())
                .expect("each node has an id")
        })
        .collect()
}

/// Wait until the receiver holds `want` spans of `trace`, then give stragglers a moment and
/// return them all.
async fn trace_of(rx: &OtlpReceiver, trace: &str, want: usize) -> Vec<OtlpSpan> {
    eventually(&format!("{want} spans of trace {trace}"), || async {
        rx.trace(trace).len() >= want
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    rx.trace(trace)
}

/// The one span named `name` from `node`.
fn one<'a>(spans: &'a [OtlpSpan], name: &str, node: &str) -> &'a OtlpSpan {
    let found: Vec<&OtlpSpan> = spans
        .iter()
        .filter(|s| s.name == name && s.node == node)
        .collect();
    assert_eq!(found.len(), 1, "one {name} from {node}: {spans:#?}");
    found[0]
}

fn lines(logs: &Logs) -> Vec<Value> {
    logs.lock()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// POST a message to `port` with a `traceparent` header; the status.
async fn publish_traced(port: u16, room: &str, cid: &str, traceparent: &str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/api/v1/rooms/{room}/messages"
        ))
        .bearer_auth("local-api-key")
        .header("traceparent", traceparent)
        .json(&json!({"from": "backend", "cid": cid, "body": "from the backend"}))
        .send()
        .await
        .expect("publish")
        .status()
        .as_u16()
}

/// The eight spans of a message sent on node `origin` and delivered on all three nodes, each
/// the child of the step before: the edge, the commit, the local delivery and the publish on
/// the origin; the bus receive and the delivery on each of the two others.
fn check_causal_chain(spans: &[OtlpSpan], nodes: &[String], origin: usize, room: &str, seq: u64) {
    assert_eq!(spans.len(), 8, "each step once: {spans:#?}");
    let o = nodes[origin].as_str();
    let receive = one(spans, "chatty.receive", o);
    let commit = one(spans, "chatty.lane.commit", o);
    assert_eq!(commit.parent, receive.span_id, "commit ← receive");
    assert_eq!(commit.attrs["seq"], seq.to_string());
    let publish = one(spans, "chatty.bus.publish", o);
    assert_eq!(publish.parent, commit.span_id, "publish ← commit");
    let local = one(spans, "chatty.deliver", o);
    assert_eq!(local.parent, commit.span_id, "local delivery ← commit");
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != origin) {
        let got = one(spans, "chatty.bus.receive", node);
        assert_eq!(
            got.parent, publish.span_id,
            "node {i}: bus receive ← publish"
        );
        let deliver = one(spans, "chatty.deliver", node);
        assert_eq!(
            deliver.parent, got.span_id,
            "node {i}: delivery ← bus receive"
        );
        assert_eq!(deliver.attrs["sockets"], "1", "node {i}: one member there");
    }
    for s in spans {
        assert_eq!(s.attrs["room"], room, "{} names the room", s.name);
        assert_eq!(s.service, "chatty");
        if s.name != "chatty.receive" && s.name != "chatty.lane.commit" {
            assert_eq!(s.attrs["seq"], seq.to_string(), "{} names the seq", s.name);
        }
    }
    let mut from: Vec<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    from.sort_unstable();
    from.dedup();
    assert_eq!(from.len(), 3, "spans from all three nodes");
}

#[tokio::test]
async fn one_send_is_one_trace_with_spans_from_all_three_nodes_and_its_log_lines_name_it() {
    let rx = OtlpReceiver::start().await;
    let cluster = Cluster::start(
        3,
        &redis_url(),
        &[
            ("CHATTY__TELEMETRY__OTLP_ENDPOINT", rx.url.as_str()),
            ("CHATTY__TELEMETRY__SAMPLE_RATIO", "1.0"),
            (
                "CHATTY__LOG__LEVEL",
                "info,chatty::ws::session=debug,chatty_actors::room::core=debug",
            ),
        ],
    )
    .await;
    let nodes = node_ids(&cluster);
    let room = unique_room("traced");
    let mut ann = cluster.connect(0, "ann").await;
    ann.join(&room).await;
    let mut bob = cluster.connect(1, "bob").await;
    bob.join(&room).await;
    let mut cat = cluster.connect(2, "cat").await;
    cat.join(&room).await;

    let ack = ann.send_msg(&room, "t1", "hello").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let seq = ack["seq"].as_u64().unwrap();
    bob.messages(&room, 1).await;
    cat.messages(&room, 1).await;

    // The trace is the one the edge span of this send started.
    eventually("the send's edge span", || async {
        rx.spans()
            .iter()
            .any(|s| s.name == "chatty.receive" && s.attrs.get("cid").is_some_and(|c| c == "t1"))
    })
    .await;
    let receive = rx
        .spans()
        .into_iter()
        .find(|s| s.name == "chatty.receive" && s.attrs["cid"] == "t1")
        .unwrap();
    assert_eq!(receive.parent, "", "a socket's send starts its trace");
    assert_eq!(receive.attrs["source"], "socket");
    assert!(receive.attrs.contains_key("decode_us"), "{receive:?}");
    assert!(receive.attrs.contains_key("conn"), "{receive:?}");
    let trace = receive.trace_id.clone();
    let spans = trace_of(&rx, &trace, 8).await;
    check_causal_chain(&spans, &nodes, 0, &room, seq);

    // The group commit: one batch span, in a trace of its own, linked to the send, and the
    // send's commit span linked back to it.
    let commit = one(&spans, "chatty.lane.commit", &nodes[0]).clone();
    let batch = rx
        .spans()
        .into_iter()
        .find(|s| {
            s.name == "chatty.lane.batch"
                && s.links.contains(&(trace.clone(), receive.span_id.clone()))
        })
        .expect("a batch span linked to the send");
    assert!(commit
        .links
        .contains(&(batch.trace_id.clone(), batch.span_id.clone())));

    // Log lines written while handling it carry its trace id, on the sender's node and on a
    // node it was delivered on, with the node, connection and room ids.
    let origin = lines(&cluster.logs[0]);
    assert!(
        origin
            .iter()
            .any(|l| l["message"] == "tracing on" && l["node"] == nodes[0].as_str()),
        "node 0 says tracing is on"
    );
    let edge = origin
        .iter()
        .find(|l| l["message"] == "send received" && l["trace_id"] == trace.as_str())
        .unwrap_or_else(|| panic!("no edge log line of trace {trace}: {origin:#?}"));
    assert_eq!(edge["node"], nodes[0].as_str());
    assert_eq!(edge["room"], room.as_str());
    assert!(edge["conn"].is_string(), "{edge}");
    eventually("node 1 logs the delivery with the trace id", || async {
        lines(&cluster.logs[1]).iter().any(|l| {
            l["message"] == "delivered"
                && l["trace_id"] == trace.as_str()
                && l["node"] == nodes[1].as_str()
                && l["room"] == room.as_str()
        })
    })
    .await;

    // An HTTP publish follows its caller's sampled W3C traceparent: same trace, the edge span
    // the child of the caller's span.
    let caller = "0af7651916cd43dd8448eb211c80319c";
    let header = format!("00-{caller}-b7ad6b7169203331-01");
    assert_eq!(
        publish_traced(cluster.nodes[1].1, &room, "h1", &header).await,
        201
    );
    let spans = trace_of(&rx, caller, 8).await;
    let edge = one(&spans, "chatty.receive", &nodes[1]);
    assert_eq!(edge.parent, "b7ad6b7169203331");
    assert_eq!(edge.attrs["source"], "http");
    let seq = one(&spans, "chatty.lane.commit", &nodes[1]).attrs["seq"]
        .parse()
        .unwrap();
    check_causal_chain(&spans, &nodes, 1, &room, seq);

    // A caller that did not sample is not traced, even at ratio 1.0 (sampling is decided
    // once, at the edge); a sampled one sent after it shows the exports went on.
    let unsampled = "11111111111111111111111111111111";
    let header = format!("00-{unsampled}-2222222222222222-00");
    assert_eq!(
        publish_traced(cluster.nodes[2].1, &room, "h2", &header).await,
        201
    );
    let after = "33333333333333333333333333333333";
    let header = format!("00-{after}-4444444444444444-01");
    assert_eq!(
        publish_traced(cluster.nodes[2].1, &room, "h3", &header).await,
        201
    );
    trace_of(&rx, after, 8).await;
    assert!(
        rx.trace(unsampled).is_empty(),
        "an unsampled caller's trace"
    );
    assert_eq!(rx.requests().1, 0, "every export was OTLP protobuf");
    for i in 0..3 {
        let ok = cluster
            .metric(i, "chatty_trace_spans_exported_total{result=\"ok\"}")
            .await;
        assert!(ok >= 4.0, "node {i} counts its exported spans ({ok})");
    }
    cluster.stop().await;
}

#[tokio::test]
async fn with_tracing_off_no_exporter_is_built_and_nothing_is_exported() {
    let rx = OtlpReceiver::start().await;
    let (settings, db_url) = test_settings().await;
    let traces = format!("{}/v1/traces", rx.url);
    // The standard OpenTelemetry variables point at the receiver: an exporter built from
    // defaults would follow them. `telemetry.otlp_endpoint` is empty, so none may exist.
    let (mut child, port, metrics_port, logs) = start_binary_logged(&[
        ("CHATTY__DATABASE__URL", db_url.as_str()),
        ("CHATTY__TELEMETRY__SAMPLE_RATIO", "1.0"),
        ("CHATTY__LOG__LEVEL", "info,chatty::ws::session=debug"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ])
    .await;
    let auth = chatty::auth::Authenticator::new(&settings.auth);
    let token = auth.mint("ann", None, Duration::from_secs(600)).unwrap();
    let mut ann = Client::connect(
        &format!("ws://127.0.0.1:{port}/ws"),
        &token,
        Some("chatty.v1.json"),
    )
    .await;
    let room = unique_room("untraced");
    ann.join(&room).await;
    for i in 0..20 {
        let ack = ann.send_msg(&room, &format!("c{i}"), "hello").await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(publish_traced(port, &room, "h1", header).await, 201);
    ann.messages(&room, 21).await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A clean stop: with an exporter, this is when its last spans would be flushed.
    assert_eq!(terminate(&mut child).await, Some(0));
    assert_eq!(rx.requests(), (0, 0), "no export was attempted");
    assert_eq!(
        metric_value(&text, "chatty_trace_spans_exported_total{result=\"ok\"}"),
        0.0
    );
    let lines = lines(&logs);
    assert!(
        lines.iter().any(|l| l["message"] == "listening"),
        "the log was read"
    );
    assert!(!lines.iter().any(|l| l["message"] == "tracing on"));
    // No span was opened for any message, so no line names a trace.
    assert!(!lines.iter().any(|l| l.get("trace_id").is_some()));
    assert!(!lines.iter().any(|l| l["message"] == "send received"));
}
