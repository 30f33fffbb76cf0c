//! Hostile frames on an authenticated socket (section 2), continued: frames that are valid
//! WebSocket but hostile protocol (deep nesting, MessagePack length lies, the wrong encoding,
//! positional arrays, hostile room ids, NUL bytes, absurd history limits and sequence numbers).

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn deeply_nested_json_and_msgpack_get_bad_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = RawWs::open(&app, "nested-json", Some("chatty.v1.json")).await;
    for (r, text) in deep_json_frames() {
        j.write(&frame(true, 0x1, text.as_bytes())).await;
        let e = j.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{r}: {e}"
        );
    }
    let mut m = RawWs::open(&app, "nested-mp", Some("chatty.v1.msgpack")).await;
    for (r, bytes) in deep_msgpack_frames() {
        m.write(&frame(true, 0x2, &bytes)).await;
        let e = m.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{r}: {e}"
        );
    }
    // Both sockets still work: ping, join, send.
    j.send_json(&json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(j.reply("alive").await["type"], "pong");
    m.send_msgpack(&json!({"type": "ping", "ref": "alive"}))
        .await;
    assert_eq!(m.reply("alive").await["type"], "pong");
    for (ws, cid, mp) in [(&mut j, "n1", false), (&mut m, "n2", true)] {
        let join = json!({"type":"join","ref":"j","room":"nest"});
        let send = json!({"type":"send","ref":cid,"room":"nest","cid":cid,"body":"fine"});
        for f in [&join, &send] {
            if mp {
                ws.send_msgpack(f).await;
            } else {
                ws.send_json(f).await;
            }
        }
        assert_eq!(ws.reply("j").await["type"], "joined");
        assert_eq!(ws.reply(cid).await["type"], "ack");
    }
    assert_eq!(app.rows("nest").await.len(), 2);
    calm.still_talk().await;
}

/// JSON frames under the 64 KiB cap nesting 32,000 levels deep in a known field, the `ref`
/// readable before the deep part: (ref, text).
fn deep_json_frames() -> Vec<(&'static str, String)> {
    let depth = 32_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(depth / 5), "}".repeat(depth / 5));
    let frames = vec![
        (
            "dj1",
            format!(r#"{{"type":"join","ref":"dj1","room":{deep}}}"#),
        ),
        (
            "dj2",
            format!(r#"{{"type":"send","ref":"dj2","room":"calm","cid":"c","body":{deep_obj}}}"#),
        ),
        (
            "dj3",
            format!(r#"{{"type":"history","ref":"dj3","room":"calm","limit":{deep}}}"#),
        ),
        ("dj4", format!(r#"{{"ref":"dj4","type":{deep}}}"#)),
    ];
    assert!(frames.iter().all(|(_, t)| t.len() < 65_536));
    frames
}

/// MessagePack maps nesting 20,000-60,000 levels deep in a known field (one-element arrays,
/// one-entry maps), the `ref` readable before the deep part: (ref, bytes).
fn deep_msgpack_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mp_frame = |r: &str, field: &str, nest: &[u8]| {
        let mut b = vec![0x83];
        for s in ["type", "join", "ref", r, field] {
            b.push(0xa0 | s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
        b.extend(std::iter::repeat_n(nest, 60_000 / nest.len()).flatten());
        b.push(0xc0);
        b
    };
    let frames = vec![
        ("dm1", mp_frame("dm1", "room", &[0x91])),
        ("dm2", mp_frame("dm2", "since", &[0x81, 0xa1, b'a'])),
    ];
    assert!(frames.iter().all(|(_, b)| b.len() < 65_536));
    frames
}

/// PROTOCOL.md: an `error` carries the `ref` "whenever the offending frame carried one, even if
/// the frame is otherwise invalid"; in these frames it is a plain string read before the deep
/// part.
#[tokio::test]
async fn the_error_for_a_deeply_nested_frame_carries_its_readable_ref() {
    let app = spawn_app().await;
    let mut j = RawWs::open(&app, "nested-json", Some("chatty.v1.json")).await;
    let mut m = RawWs::open(&app, "nested-mp", Some("chatty.v1.msgpack")).await;
    let mut wrong = Vec::new();
    for (r, text) in deep_json_frames() {
        j.write(&frame(true, 0x1, text.as_bytes())).await;
        let e = j.next().await;
        if e["ref"] != r {
            wrong.push(format!("json {r}: {e}"));
        }
    }
    for (r, bytes) in deep_msgpack_frames() {
        m.write(&frame(true, 0x2, &bytes)).await;
        let e = m.next().await;
        if e["ref"] != r {
            wrong.push(format!("msgpack {r}: {e}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "errors without the frame's ref: {wrong:#?}"
    );
}

#[tokio::test]
async fn msgpack_length_lies_get_bad_request_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut m = app.connect_msgpack("liar").await;
    let mut r = app.connect("liar-watch").await;
    m.join("lies").await;
    r.join("lies").await;
    let kv = |k: &str, v: &str| {
        let mut b = vec![0xa0 | k.len() as u8];
        b.extend_from_slice(k.as_bytes());
        b.push(0xa0 | v.len() as u8);
        b.extend_from_slice(v.as_bytes());
        b
    };
    let key = |k: &str| {
        let mut b = vec![0xa0 | k.len() as u8];
        b.extend_from_slice(k.as_bytes());
        b
    };
    let send_head = [
        vec![0x85],
        kv("type", "send"),
        kv("ref", "s"),
        kv("room", "lies"),
        kv("cid", "lie"),
        key("body"),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "map16 of 65535 entries, none present",
            vec![0xde, 0xff, 0xff],
        ),
        (
            "map32 of 2^32-1 entries",
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "array32 of 2^32-1 elements",
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "fixmap of 15 entries with 1 present",
            [vec![0x8f], kv("type", "ping")].concat(),
        ),
        (
            "str32 of 4 GiB as the type",
            [vec![0x81], key("type"), vec![0xdb, 0xff, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "str32 of 4 GiB as the body",
            [send_head.clone(), vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'x']].concat(),
        ),
        (
            "bin32 of 4 GiB as the body",
            [send_head.clone(), vec![0xc6, 0xff, 0xff, 0xff, 0xff]].concat(),
        ),
        (
            "str16 body longer than the frame",
            [send_head.clone(), vec![0xda, 0xff, 0xff, b'x', b'y']].concat(),
        ),
        (
            "array32 of 2^32-1 in an unknown field",
            [
                vec![0x83],
                kv("type", "ping"),
                kv("ref", "p"),
                key("x"),
                vec![0xdd, 0xff, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "ext32 of 4 GiB in an unknown field",
            [
                vec![0x83],
                kv("type", "ping"),
                kv("ref", "p"),
                key("x"),
                vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
            ]
            .concat(),
        ),
        ("a lone map16 marker", vec![0xde]),
        ("a reserved marker byte", vec![0xc1]),
    ];
    let rss_before = rss_bytes();
    for (what, bytes) in &cases {
        m.send_raw(Message::Binary(bytes.clone().into())).await;
        let e = m.next_of("error").await;
        assert_eq!(e["code"], "bad_request", "{what}: {e}");
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 150 << 20, "RSS grew by {} MiB", grown >> 20);
    assert!(app.rows("lies").await.is_empty(), "nothing stored");
    m.send(json!({"type": "ping", "ref": "alive"})).await;
    assert_eq!(m.next_of("pong").await["ref"], "alive");
    assert_eq!(m.send_msg("lies", "truth", "ok").await["seq"], 1);
    let got = r.messages("lies", 1).await;
    assert_eq!(got[0]["cid"], "truth", "the first message the room saw");
    calm.still_talk().await;
}

#[tokio::test]
async fn a_frame_in_the_wrong_encoding_gets_bad_request_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = app.connect("json-socket").await;
    let mut m = app.connect_msgpack("msgpack-socket").await;
    let mut watch = app.connect("watcher").await;
    for c in [&mut j, &mut m, &mut watch] {
        c.join("enc").await;
    }
    let send = |cid: &str| json!({"type":"send","ref":cid,"room":"enc","cid":cid,"body":"sneaky"});
    // A well-formed MessagePack send, in a binary frame, on the JSON socket.
    j.send_raw(Message::Binary(
        rmp_serde::to_vec_named(&send("bin-on-json"))
            .unwrap()
            .into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    // A well-formed JSON send, in a text frame, on the MessagePack socket.
    m.send_raw(Message::Text(send("text-on-mp").to_string().into()))
        .await;
    assert_eq!(m.next_of("error").await["code"], "bad_request");
    // JSON bytes in a binary frame on the JSON socket, MessagePack bytes in a binary frame on the
    // MessagePack socket that is really JSON: the kind of frame decides, not its content.
    j.send_raw(Message::Binary(
        send("json-bytes-binary").to_string().into_bytes().into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    // Nothing was stored or broadcast: the first message the watcher sees is the marker, seq 1.
    assert_eq!(j.send_msg("enc", "marker", "after").await["seq"], 1);
    let got = watch.messages("enc", 1).await;
    assert_eq!(got[0]["cid"], "marker");
    assert_eq!(app.rows("enc").await.len(), 1);
    // Both sockets still work in their own encoding.
    assert_eq!(m.send_msg("enc", "mp-ok", "fine").await["seq"], 2);
    calm.still_talk().await;
}

/// "every frame is a text frame holding one JSON **object**" / "one MessagePack **map**":
/// serde would happily read a struct from a positional array, which is not the protocol.
#[tokio::test]
async fn positional_arrays_instead_of_objects_get_bad_request_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut j = RawWs::open(&app, "array-json", Some("chatty.v1.json")).await;
    let mut m = RawWs::open(&app, "array-mp", Some("chatty.v1.msgpack")).await;
    j.send_json(&json!({"type":"join","ref":"j","room":"arr"}))
        .await;
    assert_eq!(j.reply("j").await["type"], "joined");
    m.send_msgpack(&json!({"type":"join","ref":"j","room":"arr"}))
        .await;
    assert_eq!(m.reply("j").await["type"], "joined");
    // Every member of the server's frame struct, in its declaration order:
    // type, ref, room, since, cid, body, before, limit, seq.
    let send =
        |r: &str, cid: &str| json!(["send", r, "arr", null, cid, "positional", null, null, null]);
    let mut wrong = Vec::new();
    j.send_json(&send("a1", "arr-json")).await;
    let e = j.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("JSON array send: {e}"));
    }
    m.write(&frame(
        true,
        0x2,
        &rmp_serde::to_vec(&send("a2", "arr-mp")).unwrap(),
    ))
    .await;
    let e = m.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("MessagePack array send: {e}"));
    }
    j.send_json(&json!([
        "ping", "p1", null, null, null, null, null, null, null
    ]))
    .await;
    let e = j.reply_or_next().await;
    if e["code"] != "bad_request" {
        wrong.push(format!("JSON array ping: {e}"));
    }
    let rows = app.rows("arr").await;
    assert!(
        wrong.is_empty() && rows.is_empty(),
        "{wrong:#?}; stored from arrays: {rows:?}"
    );
}

#[tokio::test]
async fn hostile_room_ids_get_bad_request_with_their_ref_and_create_nothing() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut c = RawWs::open(&app, "roomer", Some("chatty.v1.json")).await;
    let rooms_before = room_count(&app).await;
    let ids: Vec<Value> = vec![
        json!("x".repeat(65)),
        json!("x".repeat(60_000)),
        json!("ünïcödé"),
        json!("💬"),
        json!("../x"),
        json!("..\\x"),
        json!("/etc/passwd"),
        json!("%2e%2e%2fx"),
        json!(""),
        json!("a\u{0}b"),
        json!("\u{0}"),
        json!("a b"),
        json!("room\n"),
        json!("ro\u{202e}om"),
        json!("calm;drop table rooms"),
        json!("calm'--"),
        json!(42),
        json!(null),
        json!(["calm"]),
        json!({"id": "calm"}),
        json!(true),
    ];
    let mut wrong = Vec::new();
    let mut n = 0;
    for id in &ids {
        let shown: String = id.to_string().chars().take(40).collect();
        for ty in ["join", "leave", "send", "history", "read"] {
            n += 1;
            let r = format!("r{n}");
            let mut f =
                json!({"type": ty, "ref": r, "room": id, "cid": "c", "body": "b", "seq": 1});
            if id.is_null() {
                f.as_object_mut().unwrap().remove("room");
            }
            c.send_json(&f).await;
            let e = c.reply(&r).await;
            if e["type"] != "error" || e["code"] != "bad_request" {
                wrong.push(format!("{ty} {shown}: {e}"));
            }
        }
        // `typing` has no ref: exactly one error comes before the pong that follows it.
        n += 1;
        let r = format!("r{n}");
        c.send_json(&json!({"type": "typing", "room": id})).await;
        c.send_json(&json!({"type": "ping", "ref": r})).await;
        let mut before_pong = Vec::new();
        loop {
            let v = c.next().await;
            if v["ref"] == r.as_str() {
                break;
            }
            before_pong.push(v);
        }
        if before_pong.len() != 1 || before_pong[0]["code"] != "bad_request" {
            wrong.push(format!("typing {shown}: {before_pong:?}"));
        }
    }
    // A lone surrogate is not a string at all.
    c.write(&frame(
        true,
        0x1,
        br#"{"type":"join","ref":"sur","room":"\ud800"}"#,
    ))
    .await;
    let e = c.reply("sur").await;
    if e["code"] != "bad_request" {
        wrong.push(format!("lone surrogate: {e}"));
    }
    // MessagePack: rooms that are not valid UTF-8 strings.
    let mut m = RawWs::open(&app, "roomer-mp", Some("chatty.v1.msgpack")).await;
    for (what, room) in [
        ("invalid UTF-8 str", vec![0xa2, 0xff, 0xfe]),
        ("overlong UTF-8 str", vec![0xa2, 0xc0, 0xaf]),
        ("bin8 not UTF-8", vec![0xc4, 0x02, 0xff, 0xfe]),
    ] {
        let mut b = vec![0x83, 0xa4];
        b.extend_from_slice(b"type");
        b.push(0xa4);
        b.extend_from_slice(b"join");
        b.push(0xa3);
        b.extend_from_slice(b"ref");
        b.push(0xa2);
        b.extend_from_slice(b"mp");
        b.push(0xa4);
        b.extend_from_slice(b"room");
        b.extend_from_slice(&room);
        m.write(&frame(true, 0x2, &b)).await;
        let e = m.next().await;
        if e["code"] != "bad_request" {
            wrong.push(format!("msgpack {what}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(room_count(&app).await, rooms_before, "no room row created");
    assert_eq!(message_count(&app).await, 0, "nothing stored");
    // The socket is still usable.
    c.send_json(&json!({"type":"join","ref":"ok","room":"fine.room-1_x"}))
        .await;
    assert_eq!(c.reply("ok").await["type"], "joined");
    calm.still_talk().await;
}

#[tokio::test]
async fn nul_bytes_in_a_body_are_bad_request_and_nothing_is_stored_or_broadcast() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut j = app.connect("nul-json").await;
    let mut m = app.connect_msgpack("nul-mp").await;
    let mut watch = app.connect("nul-watch").await;
    for c in [&mut j, &mut m, &mut watch] {
        c.join("nul").await;
    }
    let long = "x\0".repeat(2000);
    let bodies = ["\0", "\0start", "end\0", "mid\0dle", long.as_str()];
    for (i, body) in bodies.iter().enumerate() {
        for (who, c) in [("json", &mut j), ("msgpack", &mut m)] {
            let r = format!("{who}{i}");
            c.send(json!({"type":"send","ref":r,"room":"nul","cid":r,"body":body}))
                .await;
            let e = c.next_of("error").await;
            assert_eq!(
                (e["code"].as_str(), e["ref"].as_str()),
                (Some("bad_request"), Some(r.as_str())),
                "{who} body {i}: {e}"
            );
        }
    }
    // NUL written as a raw escape inside JSON text (not through serde_json).
    j.send_raw(Message::Text(
        r#"{"type":"send","ref":"esc","room":"nul","cid":"esc","body":"a\u0000b"}"#.into(),
    ))
    .await;
    assert_eq!(j.next_of("error").await["code"], "bad_request");
    assert_eq!(j.send_msg("nul", "marker", "clean").await["seq"], 1);
    let got = watch.messages("nul", 1).await;
    assert_eq!(got[0]["cid"], "marker", "nothing was broadcast before it");
    assert_eq!(
        app.rows("nul").await.len(),
        1,
        "nothing stored but the marker"
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn absurd_history_limits_and_sequence_numbers_are_refused_or_clamped() {
    let (mut s, _) = test_settings().await;
    s.limits.history_max = 5;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let mut c = app.connect("historian").await;
    c.join("hist").await;
    for i in 1..=8 {
        assert_eq!(c.send_msg("hist", &format!("h{i}"), "x").await["seq"], i);
    }
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    // limit 0, negative, past u64, fractional, a string: bad_request with the ref.
    for (r, extra) in [
        ("l0", r#","limit":0"#),
        ("lneg", r#","limit":-1"#),
        ("lbig", r#","limit":18446744073709551616"#),
        ("lhuge", r#","limit":1e400"#),
        ("lstr", r#","limit":"10""#),
        ("bneg", r#","before":-1"#),
    ] {
        let v = ask_history(&mut c, r, extra).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{extra}: {v}"
        );
    }
    // u64::MAX: the newest page, clamped to history_max.
    let v = ask_history(&mut c, "lmax", r#","limit":18446744073709551615"#).await;
    assert_eq!(v["type"], "history", "{v}");
    assert_eq!(seqs(&v), vec![4, 5, 6, 7, 8]);
    assert_eq!(v["more"], true);
    // before = u64::MAX is "before everything": the newest page too.
    let v = ask_history(
        &mut c,
        "bmax",
        r#","before":18446744073709551615,"limit":2"#,
    )
    .await;
    assert_eq!(seqs(&v), vec![7, 8], "{v}");
    assert_eq!(v["more"], true);
    let v = ask_history(&mut c, "b0", r#","before":0"#).await;
    assert_eq!(seqs(&v), Vec::<u64>::new(), "{v}");
    assert_eq!(v["more"], false);
    // A read marker far past the head is stored as the head.
    c.send(json!({"type":"read","ref":"rmax","room":"hist","seq":u64::MAX}))
        .await;
    let v = c.next_of("read").await;
    assert_eq!(
        (v["ref"].as_str(), v["seq"].as_u64()),
        (Some("rmax"), Some(8))
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn absurd_presence_pages_are_refused_or_clamped() {
    let (mut s, _) = test_settings().await;
    s.limits.presence_list_max = 2;
    let app = spawn_with(s).await;
    let mut calm = Bystanders::new(&app).await;
    let mut cs = Vec::new();
    for u in ["pa", "pb", "pc"] {
        let mut c = app.connect(u).await;
        c.join("pages").await;
        cs.push(c);
    }
    let c = &mut cs[0];
    let ask = |r: &'static str, extra: &'static str| {
        let frame = format!(r#"{{"type":"presence","ref":"{r}","room":"pages"{extra}}}"#);
        (r, frame)
    };
    for (r, extra) in [
        ("l0", r#","limit":0"#),
        ("lneg", r#","limit":-1"#),
        ("lbig", r#","limit":18446744073709551616"#),
        ("lhuge", r#","limit":1e400"#),
        ("lstr", r#","limit":"10""#),
        (
            "along",
            r#","after":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#,
        ),
        ("anum", r#","after":7"#),
    ] {
        let (r, frame) = ask(r, extra);
        c.send_raw(Message::Text(frame.into())).await;
        let v = c.skip_to_ref(r).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{extra}: {v}"
        );
    }
    // u64::MAX: clamped to presence_list_max, with a cursor to the rest.
    let (r, frame) = ask("lmax", r#","limit":18446744073709551615"#);
    c.send_raw(Message::Text(frame.into())).await;
    let v = c.skip_to_ref(r).await;
    assert_eq!(v["type"], "presence_page", "{v}");
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
    assert_eq!(v["next"], "pb");
    // A cursor past everyone: an empty last page.
    let (r, frame) = ask("zzz", r#","after":"zzzz""#);
    c.send_raw(Message::Text(frame.into())).await;
    let v = c.skip_to_ref(r).await;
    assert_eq!(v["users"], json!([]), "{v}");
    assert!(v.get("next").is_none(), "{v}");
    calm.still_talk().await;
}

/// A `since` beyond the room's head cannot be "the last seq you saw": nothing past the head
/// exists. `joined` reports the head; the live messages that follow it must then arrive (the
/// contract: "the messages after `since`, **then live ones**"). Otherwise a client holding a
/// stale or corrupt `since` (a restored database, a bug, a hostile value) is silently muted
/// in that room for as long as the socket lives.
#[tokio::test]
async fn a_join_with_since_past_the_head_still_receives_the_live_messages_that_follow() {
    let app = spawn_app().await;
    let mut c = app.connect("speaker").await;
    c.join("ahead").await;
    for i in 1..=3 {
        c.send_msg("ahead", &format!("a{i}"), "x").await;
    }
    c.messages("ahead", 3).await;
    let mut wrong = Vec::new();
    // since = the head is the control: the live message must arrive there.
    for (i, ahead) in [0u64, 1, 1000, u64::MAX].into_iter().enumerate() {
        let head = 3 + i as u64;
        let since = head.saturating_add(ahead);
        let mut late = app.connect(&format!("late{i}")).await;
        let joined = late.join_since("ahead", since).await;
        assert_eq!(joined["seq"], head, "joined reports the head");
        let cid = format!("live{i}");
        let seq = c.send_msg("ahead", &cid, "live").await["seq"]
            .as_u64()
            .unwrap();
        // The speaker's own copy shows the room has delivered it; a ping then queues behind
        // whatever the room gave `late`.
        let own = c.messages("ahead", 1).await;
        assert_eq!(own[0]["cid"], cid.as_str());
        late.send(json!({"type":"ping","ref":"sync"})).await;
        let mut got = Vec::new();
        loop {
            let v = late.next().await.expect("socket open");
            if v["ref"] == "sync" {
                break;
            }
            if v["type"] == "message" {
                got.push(v["seq"].as_u64().unwrap());
            }
        }
        if got != [seq] {
            wrong.push(format!(
                "head {head}, since {since}: live seq {seq} delivered as {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A raw `history` request for room `hist` with `extra` JSON members; the reply with its ref.
async fn ask_history(c: &mut Client, r: &str, extra: &str) -> Value {
    let text = format!(r#"{{"type":"history","ref":"{r}","room":"hist"{extra}}}"#);
    c.send_raw(Message::Text(text.into())).await;
    loop {
        let v = c.next().await.expect("socket open");
        if v["ref"] == r {
            return v;
        }
    }
}
