//! The OpenAPI document (`src/http/openapi.json`) against the running server.
//!
//! The server serves the file as it is. Every (method, path, status) the document names has a
//! case in the table below and no case names an undocumented one; every case runs against one
//! server, in order, and its status, content type and body must be what the document says
//! (bodies checked by a small JSON Schema validator that knows exactly the keywords the
//! document uses, and refuses any other). Every media type a response documents must come
//! back from at least one case. The cases run in three phases: the server working, its tables
//! renamed away (store errors: 500), and the node shut down behind a kept-alive connection
//! (draining, tree stopped, store closed: 503).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const DOC: &str = include_str!("../../src/http/openapi.json");
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
/// The tables the store reads and writes for the API; renamed away, every store call fails
/// with "relation does not exist", an error that is not about availability.
const TABLES: [&str; 5] = [
    "rooms",
    "messages",
    "room_members",
    "room_bans",
    "read_markers",
];
/// More than the 64 KiB the public router lets a body have.
const OVER_BODY_LIMIT: usize = 70 * 1024;

/// (METHOD, path template, status).
type Key = (String, String, u16);
/// (METHOD, path template, status, media type or "" for a response without content).
type Seen = (String, String, u16, String);

enum Auth {
    Key,
    Missing,
    Wrong,
}

enum Payload {
    None,
    Json(Value),
    /// A body sent as is, with this content type ("" for none).
    Raw(&'static str, Vec<u8>),
}

struct Case {
    method: &'static str,
    template: &'static str,
    status: u16,
    path: String,
    auth: Auth,
    body: Payload,
}

fn case(method: &'static str, template: &'static str, status: u16, path: &str) -> Case {
    Case {
        method,
        template,
        status,
        path: path.to_string(),
        auth: Auth::Key,
        body: Payload::None,
    }
}

impl Case {
    fn json(mut self, v: Value) -> Self {
        self.body = Payload::Json(v);
        self
    }

    fn raw(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Payload::Raw(content_type, body.into());
        self
    }

    /// A body above the router's limit, well-formed JSON with the JSON content type.
    fn oversized(self) -> Self {
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(OVER_BODY_LIMIT));
        self.raw("application/json", big)
    }

    fn no_key(mut self) -> Self {
        self.auth = Auth::Missing;
        self
    }

    fn wrong_key(mut self) -> Self {
        self.auth = Auth::Wrong;
        self
    }

    fn key(&self) -> Key {
        (
            self.method.to_string(),
            self.template.to_string(),
            self.status,
        )
    }

    fn label(&self) -> String {
        format!(
            "{} {} (as {}) -> {}",
            self.method, self.path, self.template, self.status
        )
    }
}

const OPENAPI: &str = "/api/v1/openapi.json";
const MESSAGES: &str = "/api/v1/rooms/{room}/messages";
const MESSAGE: &str = "/api/v1/rooms/{room}/messages/{seq}";
const PRESENCE: &str = "/api/v1/rooms/{room}/presence";
const ROOM: &str = "/api/v1/rooms/{room}";
const MEMBER: &str = "/api/v1/rooms/{room}/members/{user}";
const KICK: &str = "/api/v1/rooms/{room}/kick";
const BAN: &str = "/api/v1/rooms/{room}/bans/{user}";
const DISCONNECT: &str = "/api/v1/users/{user}/disconnect";
const EVENTS: &str = "/api/v1/users/{user}/events";
const ROOMS: &str = "/api/v1/users/{user}/rooms";

/// The server working. Room `oa` is public, `ann` has a socket in it; `vip` becomes private.
fn live() -> Vec<Case> {
    let publish = |body: Value| case("POST", MESSAGES, 201, "/api/v1/rooms/oa/messages").json(body);
    let bad_publish = |status, body: Value| {
        case("POST", MESSAGES, status, "/api/v1/rooms/oa/messages").json(body)
    };
    let ok_publish = json!({"from": "ann", "cid": "c9", "body": "x"});
    let edit = |status, seq: &str, body: Value| {
        case(
            "PATCH",
            MESSAGE,
            status,
            &format!("/api/v1/rooms/oa/messages/{seq}"),
        )
        .json(body)
    };
    let ok_edit = json!({"from": "ann", "body": "x"});
    vec![
        case("GET", OPENAPI, 200, OPENAPI).no_key(),
        case("GET", "/healthz", 200, "/healthz").no_key(),
        case("GET", "/readyz", 200, "/readyz").no_key(),
        case("GET", "/health", 200, "/health").no_key(),
        // Publish: seq 1 (with meta), its duplicate, seq 2 and seq 3.
        publish(json!({"from": "ann", "cid": "c1", "body": "hello", "meta": {"reply_to": 0}})),
        publish(json!({"from": "ann", "cid": "c1", "body": "hello", "meta": {"reply_to": 0}})),
        publish(json!({"from": "bob", "name": "Bob", "cid": "c2", "body": "second", "meta": null})),
        publish(json!({"from": "ann", "cid": "c3", "body": "third"})),
        case("POST", MESSAGES, 400, "/api/v1/rooms/bad%20room/messages").json(ok_publish.clone()),
        bad_publish(400, json!({"from": "ann", "cid": "bad cid", "body": "x"})),
        bad_publish(400, json!({"from": "", "cid": "c9", "body": "x"})),
        bad_publish(400, json!({"from": "ann", "cid": "c9", "body": ""})),
        bad_publish(400, json!({"from": "ann", "cid": "c9", "body": "a\u{0}b"})),
        bad_publish(
            400,
            json!({"from": "ann", "cid": "c9", "body": "x", "meta": [1]}),
        ),
        bad_publish(400, json!({"from": "ann", "body": "x"})),
        bad_publish(400, json!({"from": "ann", "cid": "c9", "body": 5})),
        case("POST", MESSAGES, 400, "/api/v1/rooms/oa/messages").raw("application/json", "{"),
        case("POST", MESSAGES, 400, "/api/v1/rooms/oa/messages")
            .raw("text/plain", ok_publish.to_string()),
        case("POST", MESSAGES, 400, "/api/v1/rooms/oa/messages").raw("", ok_publish.to_string()),
        case("POST", MESSAGES, 400, "/api/v1/rooms/%FF/messages").json(ok_publish.clone()),
        case("POST", MESSAGES, 401, "/api/v1/rooms/oa/messages")
            .json(ok_publish.clone())
            .no_key(),
        case("POST", MESSAGES, 401, "/api/v1/rooms/oa/messages")
            .json(ok_publish.clone())
            .wrong_key(),
        // The key comes first: a call without it learns nothing about the rest of its input.
        case("POST", MESSAGES, 401, "/api/v1/rooms/oa/messages")
            .raw("", ok_publish.to_string())
            .no_key(),
        case("POST", MESSAGES, 401, "/api/v1/rooms/%FF/messages")
            .raw("application/json", "{")
            .no_key(),
        bad_publish(
            413,
            json!({"from": "ann", "cid": "c9", "body": "x".repeat(5000)}),
        ),
        bad_publish(
            413,
            json!({"from": "ann", "cid": "c9", "body": "x", "meta": {"k": "v".repeat(3000)}}),
        ),
        case("POST", MESSAGES, 413, "/api/v1/rooms/oa/messages").oversized(),
        // History.
        case("GET", MESSAGES, 200, "/api/v1/rooms/oa/messages?limit=1"),
        case("GET", MESSAGES, 200, "/api/v1/rooms/oa/messages?before=2"),
        case("GET", MESSAGES, 200, "/api/v1/rooms/empty/messages"),
        case("GET", MESSAGES, 400, "/api/v1/rooms/oa/messages?limit=0"),
        case("GET", MESSAGES, 400, "/api/v1/rooms/bad%20room/messages"),
        case("GET", MESSAGES, 400, "/api/v1/rooms/oa/messages?limit=abc"),
        case("GET", MESSAGES, 400, "/api/v1/rooms/oa/messages?before=-1"),
        case("GET", MESSAGES, 400, "/api/v1/rooms/%FF/messages"),
        case("GET", MESSAGES, 401, "/api/v1/rooms/oa/messages").no_key(),
        case("GET", MESSAGES, 401, "/api/v1/rooms/oa/messages?limit=abc").no_key(),
        // Delete (seq 3), then again (unchanged).
        case("DELETE", MESSAGE, 200, "/api/v1/rooms/oa/messages/3?by=mod"),
        case("DELETE", MESSAGE, 200, "/api/v1/rooms/oa/messages/3"),
        case(
            "DELETE",
            MESSAGE,
            400,
            "/api/v1/rooms/bad%20room/messages/1",
        ),
        case("DELETE", MESSAGE, 400, "/api/v1/rooms/oa/messages/1?by="),
        case(
            "DELETE",
            MESSAGE,
            400,
            "/api/v1/rooms/oa/messages/1?by=a%0Ab",
        ),
        case("DELETE", MESSAGE, 400, "/api/v1/rooms/oa/messages/abc"),
        case(
            "DELETE",
            MESSAGE,
            400,
            "/api/v1/rooms/oa/messages/1?who=mod",
        ),
        case("DELETE", MESSAGE, 401, "/api/v1/rooms/oa/messages/1").no_key(),
        case(
            "DELETE",
            MESSAGE,
            401,
            "/api/v1/rooms/oa/messages/abc?who=x",
        )
        .no_key(),
        case("DELETE", MESSAGE, 404, "/api/v1/rooms/oa/messages/99"),
        case("DELETE", MESSAGE, 404, "/api/v1/rooms/nowhere/messages/1"),
        // Edit seq 1 (the author's), then the same again (unchanged); seq 2 never changed.
        edit(200, "1", json!({"from": "ann", "body": "hello, edited"})),
        edit(
            200,
            "1",
            json!({"from": "ann", "body": "hello, edited", "meta": null}),
        ),
        edit(200, "2", json!({"from": "bob", "body": "second"})),
        edit(400, "1", json!({"from": "", "body": "x"})),
        edit(400, "1", json!({"from": "ann", "body": ""})),
        edit(400, "1", json!({"from": "ann", "body": "x", "meta": "m"})),
        case("PATCH", MESSAGE, 400, "/api/v1/rooms/bad%20room/messages/1").json(ok_edit.clone()),
        case("PATCH", MESSAGE, 400, "/api/v1/rooms/oa/messages/1").raw("application/json", "{"),
        case("PATCH", MESSAGE, 400, "/api/v1/rooms/oa/messages/abc").json(ok_edit.clone()),
        case("PATCH", MESSAGE, 400, "/api/v1/rooms/oa/messages/1").raw("", ok_edit.to_string()),
        edit(400, "1", json!({"from": "ann", "body": "x", "extra": 1})),
        edit(400, "1", json!({"from": "ann"})),
        edit(401, "1", ok_edit.clone()).no_key(),
        case("PATCH", MESSAGE, 401, "/api/v1/rooms/oa/messages/abc")
            .raw("", "{")
            .no_key(),
        edit(403, "1", json!({"from": "bob", "body": "not mine"})),
        edit(403, "3", json!({"from": "ann", "body": "deleted"})),
        edit(404, "99", ok_edit.clone()),
        edit(413, "1", json!({"from": "ann", "body": "x".repeat(5000)})),
        case("PATCH", MESSAGE, 413, "/api/v1/rooms/oa/messages/1").oversized(),
        // Presence.
        case("GET", PRESENCE, 200, "/api/v1/rooms/oa/presence"),
        case("GET", PRESENCE, 400, "/api/v1/rooms/bad%20room/presence"),
        case("GET", PRESENCE, 400, "/api/v1/rooms/%FF/presence"),
        case("GET", PRESENCE, 401, "/api/v1/rooms/oa/presence").wrong_key(),
        // Rooms.
        case("PUT", ROOM, 204, "/api/v1/rooms/oa").json(json!({"private": false})),
        case("PUT", ROOM, 204, "/api/v1/rooms/vip").json(json!({"private": true})),
        case("PUT", ROOM, 400, "/api/v1/rooms/vip").raw("text/plain", r#"{"private":true}"#),
        case("PUT", ROOM, 400, "/api/v1/rooms/vip").json(json!({"private": "yes"})),
        case("PUT", ROOM, 400, "/api/v1/rooms/vip").json(json!({})),
        case("PUT", ROOM, 400, "/api/v1/rooms/bad%20room").json(json!({"private": true})),
        case("PUT", ROOM, 400, "/api/v1/rooms/vip").raw("application/json", "{"),
        case("PUT", ROOM, 400, "/api/v1/rooms/%FF").json(json!({"private": true})),
        case("PUT", ROOM, 401, "/api/v1/rooms/vip")
            .json(json!({"private": true}))
            .no_key(),
        case("PUT", ROOM, 401, "/api/v1/rooms/vip")
            .json(json!({}))
            .no_key(),
        case("PUT", ROOM, 413, "/api/v1/rooms/vip").oversized(),
        // Members.
        case("PUT", MEMBER, 204, "/api/v1/rooms/vip/members/ann"),
        case("PUT", MEMBER, 204, "/api/v1/rooms/vip/members/bob")
            .json(json!({"role": "moderator"})),
        case("PUT", MEMBER, 204, "/api/v1/rooms/oa/members/ann").raw("", " \n"),
        case("PUT", MEMBER, 400, "/api/v1/rooms/vip/members/bob").json(json!({"role": "king"})),
        case("PUT", MEMBER, 400, "/api/v1/rooms/vip/members/bob")
            .json(json!({"role": "owner", "extra": 1})),
        case("PUT", MEMBER, 400, "/api/v1/rooms/vip/members/bob").raw("application/json", "{"),
        case("PUT", MEMBER, 400, "/api/v1/rooms/vip/members/a%0Ab"),
        case("PUT", MEMBER, 400, "/api/v1/rooms/bad%20room/members/bob"),
        case("PUT", MEMBER, 400, "/api/v1/rooms/vip/members/%FF"),
        case("PUT", MEMBER, 401, "/api/v1/rooms/vip/members/bob").no_key(),
        case("PUT", MEMBER, 413, "/api/v1/rooms/vip/members/bob").oversized(),
        case("DELETE", MEMBER, 204, "/api/v1/rooms/vip/members/bob"),
        case("DELETE", MEMBER, 204, "/api/v1/rooms/vip/members/nobody"),
        case("DELETE", MEMBER, 400, "/api/v1/rooms/vip/members/a%0Ab"),
        case("DELETE", MEMBER, 400, "/api/v1/rooms/vip/members/%FF"),
        case("DELETE", MEMBER, 401, "/api/v1/rooms/vip/members/bob").no_key(),
        // Kicks and bans.
        case("POST", KICK, 204, "/api/v1/rooms/oa/kick").json(json!({"user": "bob"})),
        case("POST", KICK, 204, "/api/v1/rooms/oa/kick").json(json!({"user": "carl", "ban": true})),
        case("POST", KICK, 400, "/api/v1/rooms/oa/kick").json(json!({"user": ""})),
        case("POST", KICK, 400, "/api/v1/rooms/bad%20room/kick").json(json!({"user": "bob"})),
        case("POST", KICK, 400, "/api/v1/rooms/oa/kick").raw("application/json", "{"),
        case("POST", KICK, 400, "/api/v1/rooms/%FF/kick").json(json!({"user": "bob"})),
        case("POST", KICK, 400, "/api/v1/rooms/oa/kick").raw("", r#"{"user":"bob"}"#),
        case("POST", KICK, 400, "/api/v1/rooms/oa/kick").json(json!({"user": "bob", "x": 1})),
        case("POST", KICK, 400, "/api/v1/rooms/oa/kick").json(json!({})),
        case("POST", KICK, 401, "/api/v1/rooms/oa/kick")
            .json(json!({"user": "bob"}))
            .no_key(),
        case("POST", KICK, 413, "/api/v1/rooms/oa/kick").oversized(),
        case("DELETE", BAN, 204, "/api/v1/rooms/oa/bans/carl"),
        case("DELETE", BAN, 204, "/api/v1/rooms/oa/bans/nobody"),
        case("DELETE", BAN, 400, "/api/v1/rooms/oa/bans/a%0Ab"),
        case("DELETE", BAN, 400, "/api/v1/rooms/%FF/bans/carl"),
        case("DELETE", BAN, 401, "/api/v1/rooms/oa/bans/carl").wrong_key(),
        // Users.
        case("POST", DISCONNECT, 204, "/api/v1/users/zed/disconnect"),
        case("POST", DISCONNECT, 204, "/api/v1/users/zed/disconnect")
            .json(json!({"reason": "spam"})),
        case("POST", DISCONNECT, 204, "/api/v1/users/zed/disconnect").json(json!({"reason": null})),
        case("POST", DISCONNECT, 400, "/api/v1/users/zed/disconnect")
            .json(json!({"reason": "r".repeat(257)})),
        case("POST", DISCONNECT, 400, "/api/v1/users/zed/disconnect").json(json!({"why": "x"})),
        case("POST", DISCONNECT, 400, "/api/v1/users/zed/disconnect").raw("", "nope"),
        case("POST", DISCONNECT, 400, "/api/v1/users/a%0Ab/disconnect"),
        case("POST", DISCONNECT, 400, "/api/v1/users/%FF/disconnect"),
        case("POST", DISCONNECT, 401, "/api/v1/users/zed/disconnect").no_key(),
        case("POST", DISCONNECT, 413, "/api/v1/users/zed/disconnect").oversized(),
        case("POST", EVENTS, 202, "/api/v1/users/ann/events").json(json!({"data": {"kind": "x"}})),
        case("POST", EVENTS, 202, "/api/v1/users/nobody/events")
            .raw("text/plain", r#"{"data":{}}"#),
        case("POST", EVENTS, 400, "/api/v1/users/ann/events").json(json!({"data": [1]})),
        case("POST", EVENTS, 400, "/api/v1/users/ann/events").json(json!({"data": {}, "x": 1})),
        case("POST", EVENTS, 400, "/api/v1/users/ann/events"),
        case("POST", EVENTS, 400, "/api/v1/users/a%0Ab/events").json(json!({"data": {}})),
        case("POST", EVENTS, 400, "/api/v1/users/%FF/events").json(json!({"data": {}})),
        case("POST", EVENTS, 401, "/api/v1/users/ann/events")
            .json(json!({"data": {}}))
            .no_key(),
        case("POST", EVENTS, 413, "/api/v1/users/ann/events")
            .json(json!({"data": {"x": "y".repeat(4100)}})),
        case("POST", EVENTS, 413, "/api/v1/users/ann/events").oversized(),
        case("GET", ROOMS, 200, "/api/v1/users/ann/rooms"),
        case("GET", ROOMS, 200, "/api/v1/users/ann/rooms?limit=1"),
        case("GET", ROOMS, 400, "/api/v1/users/ann/rooms?limit=0"),
        case("GET", ROOMS, 400, "/api/v1/users/a%0Ab/rooms"),
        case("GET", ROOMS, 400, "/api/v1/users/ann/rooms?limit=abc"),
        case(
            "GET",
            ROOMS,
            400,
            "/api/v1/users/ann/rooms?limit=4294967296",
        ),
        case("GET", ROOMS, 400, "/api/v1/users/ann/rooms?limit=-1"),
        case("GET", ROOMS, 400, "/api/v1/users/ann/rooms?unknown=1"),
        case("GET", ROOMS, 400, "/api/v1/users/%FF/rooms"),
        case("GET", ROOMS, 401, "/api/v1/users/ann/rooms").no_key(),
        case("GET", ROOMS, 401, "/api/v1/users/%FF/rooms?limit=-1").no_key(),
    ]
}

/// After a reaction on seq 2: a page with every optional field of a message.
fn live_after_reaction() -> Vec<Case> {
    vec![case(
        "GET",
        MESSAGES,
        200,
        "/api/v1/rooms/oa/messages?limit=10",
    )]
}

/// The store's tables renamed away: a store error that is not about availability.
fn store_broken() -> Vec<Case> {
    vec![
        case("GET", MESSAGES, 500, "/api/v1/rooms/oa/messages"),
        case("PUT", ROOM, 500, "/api/v1/rooms/vip").json(json!({"private": false})),
        case("PUT", MEMBER, 500, "/api/v1/rooms/vip/members/bob"),
        case("DELETE", MEMBER, 500, "/api/v1/rooms/vip/members/ann"),
        case("POST", KICK, 500, "/api/v1/rooms/oa/kick").json(json!({"user": "bob"})),
        case("DELETE", BAN, 500, "/api/v1/rooms/oa/bans/carl"),
        case("GET", ROOMS, 500, "/api/v1/users/ann/rooms"),
    ]
}

/// The node shut down (draining, its actors stopped, its store closed), reached through a
/// connection opened before.
fn shut_down() -> Vec<Case> {
    vec![
        case("GET", "/readyz", 503, "/readyz").no_key(),
        case("GET", "/health", 503, "/health").no_key(),
        case("POST", MESSAGES, 503, "/api/v1/rooms/oa/messages")
            .json(json!({"from": "ann", "cid": "late", "body": "x"})),
        case("GET", MESSAGES, 503, "/api/v1/rooms/oa/messages"),
        case("DELETE", MESSAGE, 503, "/api/v1/rooms/oa/messages/2"),
        case("PATCH", MESSAGE, 503, "/api/v1/rooms/oa/messages/1")
            .json(json!({"from": "ann", "body": "late"})),
        case("GET", PRESENCE, 503, "/api/v1/rooms/oa/presence"),
        case("PUT", ROOM, 503, "/api/v1/rooms/vip").json(json!({"private": false})),
        case("PUT", MEMBER, 503, "/api/v1/rooms/vip/members/bob"),
        case("DELETE", MEMBER, 503, "/api/v1/rooms/vip/members/ann"),
        case("POST", KICK, 503, "/api/v1/rooms/oa/kick").json(json!({"user": "bob"})),
        case("DELETE", BAN, 503, "/api/v1/rooms/oa/bans/carl"),
        case("GET", ROOMS, 503, "/api/v1/users/ann/rooms"),
    ]
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_status_the_server_answers() {
    let doc: Value = serde_json::from_str(DOC).expect("openapi.json is JSON");
    check_document(&doc);
    let phases = [live(), live_after_reaction(), store_broken(), shut_down()];
    let all: Vec<&Case> = phases.iter().flatten().collect();
    check_coverage(&doc, &all);

    let (mut s, _) = test_settings().await;
    // A send the closed store cannot take is answered `unavailable` soon, and the connection
    // kept for the last phase is not dropped as idle.
    s.writer.retry_max_ms = 200;
    s.server.header_read_timeout_ms = 60_000;
    let mut app = spawn_with(s).await;
    let http = reqwest::Client::new();

    // Served as the file is, without the key.
    let r = http.get(app.http(OPENAPI)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        r.text().await.unwrap(),
        DOC,
        "the served document is the file"
    );

    let mut ann = app.connect("ann").await;
    ann.join("oa").await;
    let mut seen = BTreeSet::new();
    let [live, after_reaction, broken, down] = phases;
    run(&http, &app, &doc, &live, &mut seen).await;
    let r = ann
        .call(json!({"type": "react", "ref": "r", "room": "oa", "seq": 2, "key": "+1", "on": true}))
        .await;
    assert_eq!(r["type"], "updated", "{r}");
    run(&http, &app, &doc, &after_reaction, &mut seen).await;
    let (st, page) = app.api("GET", "/api/v1/rooms/oa/messages", None).await;
    assert_eq!(st, 200);
    let m = &page["messages"];
    assert_eq!(
        (
            m[0]["rev"].is_u64(),
            m[0]["edited_ts"].is_i64(),
            m[0]["meta"]["reply_to"].as_i64()
        ),
        (true, true, Some(0)),
        "{page}"
    );
    assert_eq!(
        m[1]["reactions"],
        json!([{"key": "+1", "count": 1}]),
        "{page}"
    );
    assert_eq!(
        (m[2]["deleted"].as_bool(), m[2]["body"].as_str()),
        (Some(true), Some(""))
    );

    for t in TABLES {
        sql(&app, &format!("alter table {t} rename to {t}_away")).await;
    }
    run(&http, &app, &doc, &broken, &mut seen).await;
    for t in TABLES {
        sql(&app, &format!("alter table {t}_away rename to {t}")).await;
    }

    // Keep one idle connection to the server, then shut the node down behind it: the
    // listener stops accepting, a connection already open is still served.
    ann.close().await;
    let r = http.get(app.http("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let done = app.done.take().expect("running");
    app.stop().await;
    assert!(done.await.unwrap().unwrap(), "a clean shutdown");
    // `/health` answers from a cache of at most 1 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    run(&http, &app, &doc, &down, &mut seen).await;

    let missing: Vec<String> = documented_media(&doc)
        .into_iter()
        .filter(|m| !seen.contains(m))
        .map(|(m, p, s, t)| format!("{m} {p} {s} {t}"))
        .collect();
    assert!(
        missing.is_empty(),
        "documented responses no case produced:\n{}",
        missing.join("\n")
    );
}

async fn sql(app: &TestApp, statement: &str) {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&app.pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// Run `cases` in order; each must answer its status with a documented content type and a
/// body the documented schema accepts.
async fn run(
    http: &reqwest::Client,
    app: &TestApp,
    doc: &Value,
    cases: &[Case],
    seen: &mut BTreeSet<Seen>,
) {
    for c in cases {
        let url = app.http(&c.path);
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut req = http.request(method, url);
        match c.auth {
            Auth::Key => req = req.bearer_auth(app.api_key()),
            Auth::Wrong => req = req.bearer_auth("not-the-key"),
            Auth::Missing => {}
        }
        match &c.body {
            Payload::None => {}
            Payload::Json(v) => req = req.json(v),
            Payload::Raw(ct, bytes) => {
                if !ct.is_empty() {
                    req = req.header("content-type", *ct);
                }
                req = req.body(bytes.clone());
            }
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.label()));
        let status = resp.status().as_u16();
        let media = resp
            .headers()
            .get("content-type")
            .map(|v| {
                let v = v.to_str().unwrap();
                v.split(';').next().unwrap().trim().to_ascii_lowercase()
            })
            .unwrap_or_default();
        let bytes = resp.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, c.status, "{}: got {status} {text}", c.label());

        let op = &doc["paths"][c.template][c.method.to_ascii_lowercase()];
        if status < 300 {
            if let (Payload::Json(v), Some(body)) = (&c.body, op.get("requestBody")) {
                let schema = &body["content"]["application/json"]["schema"];
                let errs = validate(doc, schema, v);
                assert!(errs.is_empty(), "{}: request body {v}: {errs:?}", c.label());
            }
        }
        let response = resolve(doc, &op["responses"][status.to_string()]);
        match response.get("content") {
            None => assert!(
                bytes.is_empty(),
                "{}: no content documented: {text}",
                c.label()
            ),
            Some(content) => {
                let schema = &content.get(&media).unwrap_or_else(|| {
                    panic!("{}: undocumented content type `{media}`: {text}", c.label())
                })["schema"];
                let body = if media == "application/json" {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", c.label()))
                } else {
                    Value::String(text.to_string())
                };
                let errs = validate(doc, schema, &body);
                assert!(errs.is_empty(), "{}: body {body}: {errs:?}", c.label());
            }
        }
        let media = if response.get("content").is_some() {
            media
        } else {
            String::new()
        };
        seen.insert((c.method.to_string(), c.template.to_string(), status, media));
    }
}

/// Every documented (METHOD, path, status).
fn documented(doc: &Value) -> BTreeSet<Key> {
    documented_media(doc)
        .into_iter()
        .map(|(m, p, s, _)| (m, p, s))
        .collect()
}

/// Every documented (METHOD, path, status, media type), "" for a response without content.
fn documented_media(doc: &Value) -> BTreeSet<Seen> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            for (status, response) in op["responses"].as_object().unwrap() {
                let status: u16 = status
                    .parse()
                    .unwrap_or_else(|_| panic!("{method} {path}: status `{status}` is not a code"));
                let m = method.to_ascii_uppercase();
                match resolve(doc, response).get("content") {
                    None => {
                        out.insert((m, path.clone(), status, String::new()));
                    }
                    Some(content) => {
                        for media in content.as_object().unwrap().keys() {
                            out.insert((m.clone(), path.clone(), status, media.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every documented response has a case and every case a documented response; each case's
/// path fits its template.
fn check_coverage(doc: &Value, cases: &[&Case]) {
    let documented = documented(doc);
    let cased: BTreeSet<Key> = cases.iter().map(|c| c.key()).collect();
    let fmt = |keys: Vec<&Key>| {
        keys.iter()
            .map(|(m, p, s)| format!("  {m} {p} {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let uncased: Vec<&Key> = documented.difference(&cased).collect();
    let undocumented: Vec<&Key> = cased.difference(&documented).collect();
    assert!(
        uncased.is_empty() && undocumented.is_empty(),
        "documented responses without a case:\n{}\ncases for undocumented responses:\n{}",
        fmt(uncased),
        fmt(undocumented)
    );
    for c in cases {
        let path = c.path.split('?').next().unwrap();
        let (got, want): (Vec<&str>, Vec<&str>) =
            (path.split('/').collect(), c.template.split('/').collect());
        let fits = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g == w || (w.starts_with('{') && !g.is_empty()));
        assert!(fits, "{}: the path does not fit its template", c.label());
    }
}

/// The document's own rules: OpenAPI 3.1, every reference resolves, the API key on every
/// `/api/v1` operation but the document itself, and none elsewhere; every error of a keyed
/// operation is `application/json` with the `Error` schema, and nothing else.
fn check_document(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    fn refs(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref") {
                    let r = r.as_str().unwrap();
                    assert!(
                        r.starts_with("#/") && doc.pointer(&r[1..]).is_some(),
                        "unresolved $ref {r}"
                    );
                }
                m.values().for_each(|v| refs(doc, v));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(doc, v)),
            _ => {}
        }
    }
    refs(doc, doc);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let keyed = path.starts_with("/api/v1/") && path != OPENAPI;
            let want = if keyed {
                json!([{"apiKey": []}])
            } else {
                json!([])
            };
            assert_eq!(op["security"], want, "{method} {path}: security");
            assert_eq!(
                op["responses"].get("401").is_some(),
                keyed,
                "{method} {path}: 401 documented exactly where the key is needed"
            );
            if !keyed {
                continue;
            }
            // Every error of a keyed operation is the JSON `Error`, whatever refused the call.
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.parse::<u16>().is_ok_and(|s| s < 400) {
                    continue;
                }
                let content = resolve(doc, response)["content"].as_object();
                let media: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
                assert_eq!(
                    media,
                    ["application/json"],
                    "{method} {path} {status}: an error is JSON only"
                );
                let schema = &content.unwrap()["application/json"]["schema"];
                assert_eq!(
                    schema["allOf"][0]["$ref"], "#/components/schemas/Error",
                    "{method} {path} {status}: an error is the `Error` schema"
                );
            }
        }
    }
}

/// `v` itself, or what its `$ref` points to.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(&r[1..]).expect("a resolvable $ref")),
        None => v,
    }
}

/// Check `v` against `schema`: the JSON Schema 2020-12 keywords the document uses. A keyword
/// this validator does not know fails the check, so none is silently ignored.
fn validate(doc: &Value, schema: &Value, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(doc, schema, v, "$", &mut errs);
    errs
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        errs.push(format!("{at}: a schema that is not an object: {schema}"));
        return;
    };
    for (kw, arg) in s {
        match kw.as_str() {
            "$ref" => {
                let target = arg.as_str().and_then(|r| doc.pointer(&r[1..]));
                match target {
                    Some(t) => check(doc, t, v, at, errs),
                    None => errs.push(format!("{at}: unresolved $ref {arg}")),
                }
            }
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    t => vec![t.as_str().unwrap_or("?")],
                };
                if !types.iter().any(|t| is_type(v, t)) {
                    errs.push(format!("{at}: {v} is not of type {arg}"));
                }
            }
            "enum" => {
                if !arg.as_array().is_some_and(|a| a.contains(v)) {
                    errs.push(format!("{at}: {v} not in {arg}"));
                }
            }
            "const" => {
                if v != arg {
                    errs.push(format!("{at}: {v} is not {arg}"));
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for k in arg.as_array().unwrap().iter().filter_map(Value::as_str) {
                        if !o.contains_key(k) {
                            errs.push(format!("{at}: `{k}` is required"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (k, sub) in arg.as_object().unwrap() {
                        if let Some(x) = o.get(k) {
                            check(doc, sub, x, &format!("{at}.{k}"), errs);
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = s.get("properties").and_then(Value::as_object);
                    for (k, x) in o {
                        if known.is_some_and(|p| p.contains_key(k)) {
                            continue;
                        }
                        match arg {
                            Value::Bool(false) => errs.push(format!("{at}: unexpected `{k}`")),
                            Value::Bool(true) => {}
                            sub => check(doc, sub, x, &format!("{at}.{k}"), errs),
                        }
                    }
                }
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, x) in a.iter().enumerate() {
                        check(doc, arg, x, &format!("{at}[{i}]"), errs);
                    }
                }
            }
            "minItems" => {
                if v.as_array()
                    .is_some_and(|a| (a.len() as u64) < arg.as_u64().unwrap())
                {
                    errs.push(format!("{at}: fewer than {arg} items"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(x), Some(bound)) = (v.as_f64(), arg.as_f64()) {
                    if (kw == "minimum" && x < bound) || (kw == "maximum" && x > bound) {
                        errs.push(format!("{at}: {x} breaks {kw} {bound}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Some(x) = v.as_str() {
                    let n = x.chars().count() as u64;
                    let bound = arg.as_u64().unwrap();
                    if (kw == "minLength" && n < bound) || (kw == "maxLength" && n > bound) {
                        errs.push(format!("{at}: length {n} breaks {kw} {bound}"));
                    }
                }
            }
            "pattern" => {
                if let Some(x) = v.as_str() {
                    if !matches_class_pattern(arg.as_str().unwrap(), x) {
                        errs.push(format!("{at}: {x:?} does not match {arg}"));
                    }
                }
            }
            "allOf" => {
                for sub in arg.as_array().unwrap() {
                    check(doc, sub, v, at, errs);
                }
            }
            "oneOf" => {
                let passing = arg
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| validate(doc, sub, v).is_empty())
                    .count();
                if passing != 1 {
                    errs.push(format!("{at}: {v} matches {passing} of oneOf {arg}"));
                }
            }
            "description" | "default" => {}
            other => errs.push(format!("{at}: the validator does not know `{other}`")),
        }
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// The one form of `pattern` the document uses: `^[class]{min,max}$`, the class made of
/// single characters and `a-z` ranges (a `-` last is itself).
fn matches_class_pattern(pattern: &str, s: &str) -> bool {
    let inner = pattern
        .strip_prefix("^[")
        .and_then(|p| p.strip_suffix('$'))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (class, counts) = inner
        .split_once("]{")
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (min, max) = counts
        .strip_suffix('}')
        .and_then(|c| c.split_once(','))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (min, max): (usize, usize) = (min.parse().unwrap(), max.parse().unwrap());
    let class: Vec<char> = class.chars().collect();
    let in_class = |c: char| {
        let mut i = 0;
        while i < class.len() {
            if i + 2 < class.len() && class[i + 1] == '-' {
                if (class[i]..=class[i + 2]).contains(&c) {
                    return true;
                }
                i += 3;
            } else {
                if class[i] == c {
                    return true;
                }
                i += 1;
            }
        }
        false
    };
    let n = s.chars().count();
    (min..=max).contains(&n) && s.chars().all(in_class)
}

#[test]
fn the_pattern_matcher_reads_the_document_s_patterns() {
    let room = "^[A-Za-z0-9._-]{1,64}$";
    assert!(matches_class_pattern(room, "oa"));
    assert!(matches_class_pattern(room, "a.b_c-9"));
    assert!(!matches_class_pattern(room, "bad room"));
    assert!(!matches_class_pattern(room, ""));
    assert!(!matches_class_pattern(room, &"a".repeat(65)));
    assert!(matches_class_pattern("^[A-Za-z0-9._:-]{1,64}$", "a:b"));
    assert!(!matches_class_pattern(room, "a:b"));
}
