//! Hostile frames on an authenticated socket (section 2), first part: frames that break
//! RFC 6455 or our limits (fragment bombs, giant declared lengths, endless continuations,
//! protocol violations, invalid UTF-8 across fragments, unmasked frames).

use std::time::Instant;

use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A text message split into `parts` fragments: the JSON in the first, then empty ones.
fn fragments(json: &[u8], parts: usize) -> Vec<u8> {
    let mut out = frame(parts == 1, 0x1, json);
    for i in 1..parts {
        out.extend(frame(i == parts - 1, 0x0, b""));
    }
    out
}

/// `{"type":"ping","ref":r,"pad":"xx…"}` of exactly `total` bytes, in fragments of `each`.
fn padded_ping(r: &str, total: usize, each: usize) -> Vec<u8> {
    let head = format!(r#"{{"type":"ping","ref":"{r}","pad":""#);
    let mut msg = head.into_bytes();
    msg.resize(total - 2, b'x');
    msg.extend_from_slice(b"\"}");
    let chunks: Vec<&[u8]> = msg.chunks(each).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { 0x1 } else { 0x0 };
        out.extend(frame(i == chunks.len() - 1, op, c));
    }
    out
}

#[tokio::test]
async fn a_fragment_bomb_is_closed_with_1009_past_128_fragments_or_64_kib_and_the_limits_themselves_pass(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ping = br#"{"type":"ping","ref":"frag"}"#;
    let max = app.settings.limits.max_message_bytes;
    assert_eq!(max, 64 * 1024);

    // Exactly at the limits: accepted.
    let mut ws = RawWs::open(&app, "frag-ok", None).await;
    ws.write(&fragments(ping, 128)).await;
    assert_eq!(ws.reply("frag").await["type"], "pong", "128 fragments");
    ws.write(&padded_ping("full", max, 16 * 1024)).await;
    assert_eq!(
        ws.reply("full").await["type"],
        "pong",
        "64 KiB in 4 fragments"
    );

    // One fragment more, one byte more, or many small ones adding up: 1009.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("129 fragments", fragments(ping, 129)),
        ("1000 fragments", fragments(ping, 1000)),
        (
            "64 KiB + 1 in 5 fragments",
            padded_ping("over", max + 1, 16 * 1024),
        ),
        (
            "70 fragments of 1000 bytes",
            padded_ping("many", 70 * 1000, 1000),
        ),
        (
            "5 fragments of 60 KiB",
            padded_ping("huge", 5 * 60 * 1024, 60 * 1024),
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("bomber{i}"), None).await;
        let t = Instant::now();
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if code != 1009 || !ws.ends().await {
            wrong.push(format!("{what}: close {code} after {seen:?}"));
        }
        assert!(t.elapsed() < WAIT);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The socket at the limits is still fine, and so are the bystanders.
    ws.write(&frame(true, 0x1, br#"{"type":"ping","ref":"again"}"#))
        .await;
    assert_eq!(ws.reply("again").await["type"], "pong");
    calm.still_talk().await;
}

#[tokio::test]
async fn two_hundred_sockets_declaring_2_pow_62_byte_frames_are_closed_with_1009_without_allocating(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    const N: usize = 200;
    let names: Vec<String> = (0..N).map(|i| format!("giant{i}")).collect();
    let sockets =
        futures_util::future::join_all(names.iter().map(|u| RawWs::open(&app, u, None))).await;
    // Text, FIN, masked, 64-bit length 2^62, then the mask and no payload at all.
    let mut decl = vec![0x81, 0x80 | 127];
    decl.extend_from_slice(&(1u64 << 62).to_be_bytes());
    decl.extend_from_slice(&MASK);
    let rss_before = rss_bytes();
    let t = Instant::now();
    let codes = futures_util::future::join_all(sockets.into_iter().map(|mut ws| {
        let decl = decl.clone();
        async move {
            ws.write(&decl).await;
            ws.close_code().await.0
        }
    }))
    .await;
    let took = t.elapsed();
    let grown = rss_bytes().saturating_sub(rss_before);
    let wrong: Vec<_> = codes.iter().filter(|c| **c != 1009).collect();
    assert!(wrong.is_empty(), "close codes other than 1009: {wrong:?}");
    assert!(took < WAIT, "all {N} closed in {took:?}");
    assert!(
        grown < 150 << 20,
        "RSS grew by {} MiB for {N} declared 2^62-byte frames",
        grown >> 20
    );
    eprintln!(
        "{N} sockets closed with 1009 in {took:?}; RSS grew {} KiB",
        grown >> 10
    );
    calm.still_talk().await;
}

#[tokio::test]
async fn endless_empty_continuations_are_cut_off_at_the_fragment_cap_with_1009() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ws = RawWs::open(&app, "endless", None).await;
    let (mut r, mut w) = ws.s.into_split();
    let mut buf = ws.buf;
    // Keep writing empty continuations (up to 10 million) until the server stops taking them.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&frame(false, 0x1, b"{")).await;
        let chunk: Vec<u8> = (0..1000).flat_map(|_| frame(false, 0x0, b"")).collect();
        let mut sent = 0u64;
        for _ in 0..10_000 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 1000;
        }
        (w, sent)
    });
    let t = Instant::now();
    let code = loop {
        match read_frame(&mut r, &mut buf).await {
            None => break 1006,
            Some((0x8, p)) if p.len() >= 2 => break u16::from_be_bytes([p[0], p[1]]),
            Some(_) => {}
        }
    };
    let took = t.elapsed();
    assert_eq!(code, 1009, "endless empty continuations");
    // Once closed, the server takes no more bytes: the writer's next writes fail.
    let (w, sent) = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the server kept taking continuations after its close")
        .unwrap();
    let mut ws = RawWs {
        s: r.reunite(w).unwrap(),
        buf,
    };
    assert!(ws.ends().await, "the connection ends after the close");
    eprintln!("endless continuations: 1009 after {took:?}, {sent} frames written in all");
    calm.still_talk().await;
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let ping = br#"{"type":"ping","ref":"x"}"#;
    let mut cases: Vec<(String, Vec<u8>, &[u16])> = vec![
        (
            "a continuation without a start".into(),
            frame(true, 0x0, ping),
            &[1002],
        ),
        (
            "a new text frame inside a fragmented one".into(),
            [frame(false, 0x1, b"{"), frame(true, 0x1, ping)].concat(),
            &[1002],
        ),
        (
            "a ping of 126 bytes".into(),
            frame(true, 0x9, &[b'p'; 126]),
            &[1002],
        ),
        ("a fragmented ping".into(), frame(false, 0x9, b"p"), &[1002]),
        (
            "a fragmented close".into(),
            frame(false, 0x8, &1000u16.to_be_bytes()),
            &[1002],
        ),
        ("a fragmented pong".into(), frame(false, 0xA, b""), &[1002]),
        (
            "a close with a 1-byte payload".into(),
            close_frame(&[0x03]),
            &[1002],
        ),
        (
            // RFC 6455 §5.5.1: the reason must be UTF-8; 1007 (invalid data) is also fair.
            "a close whose reason is not UTF-8".into(),
            close_frame(&[0x03, 0xe8, 0xff, 0xfe]),
            &[1002, 1007],
        ),
    ];
    for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        cases.push((
            format!("reserved opcode {op:#x}"),
            frame(true, op, b""),
            &[1002],
        ));
    }
    cases.push((
        "reserved opcode 0x3 with a payload".into(),
        frame(true, 0x3, ping),
        &[1002],
    ));
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((
            format!("a close with code {code}"),
            close_frame(&code.to_be_bytes()),
            &[1002],
        ));
    }
    let mut wrong = Vec::new();
    for (i, (what, bytes, expected)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("violator{i}"), None).await;
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if !expected.contains(&code) {
            wrong.push(format!("{what}: close {code}, saw {seen:?}"));
        } else if !ws.ends().await {
            wrong.push(format!("{what}: connection not ended after the close"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    calm.still_talk().await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007_but_a_character_split_across_them_is_fine(
) {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let head = br#"{"type":"ping","ref":""#;
    let msg = |parts: &[&[u8]]| -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            out.extend(frame(i == parts.len() - 1, op, p));
        }
        out
    };
    // "€" is e2 82 ac: split over three fragments it is still valid.
    let mut ws = RawWs::open(&app, "utf8-ok", None).await;
    ws.write(&msg(&[&[&head[..], &[0xe2]].concat(), &[0x82], b"\xac\"}"]))
        .await;
    assert_eq!(ws.reply("€").await["type"], "pong");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a truncated sequence completed by an ASCII byte",
            msg(&[&[&head[..], &[0xe2, 0x82]].concat(), b"(\"}"]),
        ),
        (
            "an invalid byte in the first fragment",
            msg(&[&[&head[..], &[0xff]].concat(), b"\"}"]),
        ),
        (
            "an overlong encoding split across fragments",
            msg(&[&[&head[..], &[0xc0]].concat(), b"\xaf\"}"]),
        ),
        (
            "a UTF-16 surrogate split across fragments",
            msg(&[&[&head[..], &[0xed, 0xa0]].concat(), b"\x80\"}"]),
        ),
        (
            "a sequence left unfinished by the final fragment",
            msg(&[&head[..], b"\"}", &[0xf0, 0x9f]]),
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut ws = RawWs::open(&app, &format!("utf8-{i}"), None).await;
        ws.write(bytes).await;
        let (code, seen) = ws.close_code().await;
        if code != 1007 {
            wrong.push(format!("{what}: close {code}, saw {seen:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    calm.still_talk().await;
}

/// RFC 6455 §5.1: "The server MUST close the connection upon receiving a frame that is not
/// masked", with 1002 (protocol error).
#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let app = spawn_app().await;
    let mut calm = Bystanders::new(&app).await;
    let mut ws = RawWs::open(&app, "unmasked", None).await;
    ws.write(&frame_with(
        true,
        0x1,
        br#"{"type":"ping","ref":"naked"}"#,
        None,
    ))
    .await;
    let (code, seen) = ws.close_code().await;
    assert_eq!(
        code, 1002,
        "an unmasked client frame must close the connection with 1002 (0 = no close within \
         {WAIT:?}); the server answered {seen:?}"
    );
    calm.still_talk().await;
}
