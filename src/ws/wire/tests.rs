//! The decoder against hand-written and generated hostile input.

use super::*;
use proptest::prelude::*;

const B: Bounds = Bounds {
    body: 4096,
    meta: 2048,
};

fn code_of(s: &str) -> ErrorCode {
    json(s).unwrap_err().code
}

fn json(s: &str) -> Result<Command, DecodeError> {
    decode(s.as_bytes(), Encoding::Json, B, &|_| None)
}

#[test]
fn a_valid_send_decodes() {
    let c = json(r#"{"type":"send","ref":"1","room":"r","cid":"c1","body":"hi"}"#).unwrap();
    assert!(matches!(c, Command::Send { .. }));
}

#[test]
fn errors_carry_the_ref_even_when_fields_are_wrong() {
    let e = json(r#"{"type":"join","ref":"7","room":"bad room"}"#).unwrap_err();
    assert_eq!(e.r#ref.as_deref(), Some("7"));
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = json(r#"{"type":"join","ref":"8","since":"notanumber","room":"r"}"#).unwrap_err();
    assert_eq!(e.r#ref.as_deref(), Some("8"));
    let e = json(r#"{"type":"nope","ref":"9"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.r#ref.as_deref(), Some("9"));
}

#[test]
fn oversized_bodies_are_too_large_and_nul_is_refused() {
    let body = "x".repeat(4097);
    let e = json(&format!(
        r#"{{"type":"send","room":"r","cid":"c","body":"{body}"}}"#
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    let e = json(r#"{"type":"send","room":"r","cid":"c","body":"a\u0000b"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    // Deep nesting in an unknown field is skipped without recursion; in a known field it
    // is an error. Neither may overflow the stack.
    let deep = format!(
        r#"{{"type":"ping","x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(json(&deep).is_ok());
    let deep = format!(
        r#"{{"type":"join","room":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(json(&deep).is_err());
    // MessagePack: 100k nested fixarrays of one element.
    let mut mp = vec![
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa1, b'x',
    ];
    mp.extend(std::iter::repeat_n(0x91, 100_000));
    mp.push(0xc0);
    assert!(decode(&mp, Encoding::MsgPack, B, &|_| None).is_err());
}

#[test]
fn positional_arrays_are_not_frames() {
    let e = json(r#"["send","a1","r",null,"c","body",null,null,null]"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let arr = rmp_serde::to_vec(&("ping", "p1")).unwrap();
    assert!(decode(&arr, Encoding::MsgPack, B, &|_| None).is_err());
}

#[test]
fn the_ref_of_a_deeply_nested_msgpack_frame_is_still_found() {
    let mut mp = vec![
        0x83, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ];
    mp.extend([0xa1, b'x']);
    mp.extend(std::iter::repeat_n(0x91, 100_000));
    mp.push(0xc0);
    mp.extend([0xa3, b'r', b'e', b'f', 0xa2, b'r', b'9']);
    let e = decode(&mp, Encoding::MsgPack, B, &|_| None).unwrap_err();
    assert_eq!(e.r#ref.as_deref(), Some("r9"));
    // And before the deep part.
    let mut mp = vec![0x82, 0xa3, b'r', b'e', b'f', 0xa1, b'q', 0xa1, b'x'];
    mp.extend(std::iter::repeat_n(0x91, 100_000));
    mp.push(0xc0);
    assert_eq!(
        decode(&mp, Encoding::MsgPack, B, &|_| None)
            .unwrap_err()
            .r#ref
            .as_deref(),
        Some("q")
    );
}

#[test]
fn msgpack_length_lies_are_errors() {
    // map16 claiming 65535 entries, then nothing.
    assert!(decode(&[0xde, 0xff, 0xff], Encoding::MsgPack, B, &|_| None).is_err());
    // str32 claiming 4 GiB.
    assert!(decode(
        &[0x81, 0xa4, b't', b'y', b'p', b'e', 0xdb, 0xff, 0xff, 0xff, 0xff],
        Encoding::MsgPack,
        B,
        &|_| None
    )
    .is_err());
}

#[test]
fn msgpack_maps_decode_like_json() {
    #[derive(serde::Serialize)]
    struct F<'a> {
        #[serde(rename = "type")]
        ty: &'a str,
        room: &'a str,
        since: u64,
    }
    let b = rmp_serde::to_vec_named(&F {
        ty: "join",
        room: "r",
        since: 3,
    })
    .unwrap();
    assert!(matches!(
        decode(&b, Encoding::MsgPack, B, &|_| None).unwrap(),
        Command::Join { since: Some(3), .. }
    ));
}

#[test]
fn a_send_carries_meta_and_bad_meta_is_refused_with_its_ref() {
    let c =
        json(r#"{"type":"send","ref":"1","room":"r","cid":"c","body":"hi","meta":{"reply_to":3}}"#)
            .unwrap();
    let Command::Send { meta: Some(m), .. } = c else {
        panic!("meta kept: {c:?}")
    };
    assert_eq!(m.as_json(), r#"{"reply_to":3}"#);
    for (meta, code) in [
        (r#"[1]"#, ErrorCode::BadRequest),
        (r#""text""#, ErrorCode::BadRequest),
        (r#"null"#, ErrorCode::BadRequest),
        (r#"{"a":{"b":{"c":{"d":[1]}}}}"#, ErrorCode::BadRequest),
        (r#"{"a":"x\u0000"}"#, ErrorCode::BadRequest),
    ] {
        let f = format!(
            r#"{{"type":"send","ref":"r9","room":"r","cid":"c","body":"hi","meta":{meta}}}"#
        );
        let e = json(&f).unwrap_err();
        assert_eq!(
            (e.code, e.r#ref.as_deref()),
            (code, Some("r9")),
            "meta {meta}"
        );
    }
    let big = format!(
        r#"{{"type":"send","room":"r","cid":"c","body":"hi","meta":{{"a":"{}"}}}}"#,
        "x".repeat(2048)
    );
    assert_eq!(code_of(&big), ErrorCode::TooLarge);
}

#[test]
fn edits_deletes_and_reactions_decode_and_need_their_fields() {
    let c = json(r#"{"type":"edit","ref":"1","room":"r","seq":4,"body":"new"}"#).unwrap();
    assert!(matches!(
        c,
        Command::Change {
            seq: 4,
            op: ChangeOp::Edit { meta: None, .. },
            ..
        }
    ));
    let c = json(r#"{"type":"delete","room":"r","seq":4}"#).unwrap();
    assert!(matches!(
        c,
        Command::Change {
            op: ChangeOp::Delete,
            ..
        }
    ));
    let c = json(r#"{"type":"react","room":"r","seq":4,"key":"👍","on":false}"#).unwrap();
    assert!(matches!(
        c,
        Command::Change {
            op: ChangeOp::React { on: false, .. },
            ..
        }
    ));
    assert_eq!(
        code_of(r#"{"type":"edit","room":"r","seq":4}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(r#"{"type":"edit","room":"r","body":"x"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(r#"{"type":"delete","room":"r"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(r#"{"type":"react","room":"r","seq":1,"key":"x"}"#),
        ErrorCode::BadRequest
    );
    let long = format!(
        r#"{{"type":"react","room":"r","seq":1,"key":"{}","on":true}}"#,
        "k".repeat(33)
    );
    assert_eq!(code_of(&long), ErrorCode::BadRequest);
    assert_eq!(
        code_of(r#"{"type":"react","room":"r","seq":1,"key":"","on":true}"#),
        ErrorCode::BadRequest
    );
    let c = json(r#"{"type":"join","room":"r","since":3,"since_rev":7}"#).unwrap();
    assert!(matches!(
        c,
        Command::Join {
            since: Some(3),
            since_rev: Some(7),
            ..
        }
    ));
}

#[test]
fn msgpack_meta_must_be_a_map_with_string_keys() {
    let ok = rmp_serde::to_vec_named(&serde_json::json!({
        "type": "send", "room": "r", "cid": "c", "body": "hi", "meta": {"k": [1, "x"]}
    }))
    .unwrap();
    assert!(matches!(
        decode(&ok, Encoding::MsgPack, B, &|_| None).unwrap(),
        Command::Send { meta: Some(_), .. }
    ));
    // A map keyed by an integer: no JSON object can hold it.
    let mut bad = rmp_serde::to_vec_named(&serde_json::json!({
        "type": "send", "room": "r", "cid": "c", "body": "hi"
    }))
    .unwrap();
    bad[0] += 1; // one more entry in the fixmap
    bad.extend_from_slice(&[0xa4, b'm', b'e', b't', b'a', 0x81, 0x01, 0x02]);
    assert_eq!(
        decode(&bad, Encoding::MsgPack, B, &|_| None)
            .unwrap_err()
            .code,
        ErrorCode::BadRequest
    );
}

/// Any JSON value, nested up to 8 deep (past the meta limit of 4).
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]
    #[test]
    fn any_bytes_decode_or_error_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, Encoding::Json, B, &|_| None);
        let _ = decode(&bytes, Encoding::MsgPack, B, &|_| None);
    }

    #[test]
    fn lifecycle_frames_with_random_fields_and_meta_never_panic(
        ty in prop_oneof![Just("send"), Just("edit"), Just("delete"), Just("react"), Just("join")],
        meta in arb_json(), key in ".{0,40}", seq in any::<u64>(), on in any::<bool>(),
        since_rev in any::<u64>(),
    ) {
        let v = serde_json::json!({"type": ty, "ref": "r", "room": "r", "cid": "c", "body": "b",
            "seq": seq, "key": key, "on": on, "meta": meta, "since": 1, "since_rev": since_rev});
        let small = Bounds { body: 64, meta: 64 };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = match enc {
                Encoding::Json => v.to_string().into_bytes(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&v).unwrap(),
            };
            match decode(&bytes, enc, small, &|_| None) {
                // Whatever got through is within the bounds.
                Ok(Command::Send { meta: Some(m), .. })
                | Ok(Command::Change { op: ChangeOp::Edit { meta: Some(m), .. }, .. }) => {
                    prop_assert!(m.as_json().len() <= 64);
                }
                Ok(_) => {}
                Err(e) => prop_assert_eq!(e.r#ref.as_deref(), Some("r")),
            }
        }
    }

    #[test]
    fn json_objects_with_random_fields_never_panic(ty in "[a-z]{0,8}", room in ".{0,70}", cid in ".{0,70}", body in ".{0,100}", since in any::<u64>()) {
        let v = serde_json::json!({"type": ty, "room": room, "cid": cid, "body": body, "since": since, "ref": "r"});
        let _ = decode(v.to_string().as_bytes(), Encoding::Json, Bounds { body: 64, meta: 64 }, &|_| None);
    }

    #[test]
    fn moderation_frames_with_random_fields_never_panic(
        ty in prop_oneof![Just("kick"), Just("unban"), Just("set_role"), Just("refresh")],
        room in ".{0,70}", user in ".{0,140}", role in ".{0,12}", token in ".{0,200}",
        ban in any::<bool>(),
    ) {
        let v = serde_json::json!({"type": ty, "room": room, "user": user, "role": role,
            "token": token, "ban": ban, "ref": "r"});
        let verify = |t: &str| (t == "good").then(|| identity("u"));
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = match enc {
                Encoding::Json => v.to_string().into_bytes(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&v).unwrap(),
            };
            let _ = decode(&bytes, enc, B, &verify);
        }
    }
}

fn identity(user: &str) -> Identity {
    Identity {
        user: UserId::parse(user).unwrap(),
        name: chatty_actors::DisplayName::sanitize(user),
        admin: false,
        expires: 1,
    }
}

#[test]
fn moderation_frames_decode_and_name_what_is_wrong() {
    let c = json(r#"{"type":"kick","ref":"k","room":"r","user":"bob","ban":true}"#).unwrap();
    assert!(matches!(c, Command::Kick { ban: true, .. }));
    let c = json(r#"{"type":"kick","room":"r","user":"bob"}"#).unwrap();
    assert!(matches!(c, Command::Kick { ban: false, .. }));
    let e = json(r#"{"type":"kick","ref":"k","room":"r"}"#).unwrap_err();
    assert_eq!((e.code, e.message), (ErrorCode::BadRequest, "missing user"));
    let e = json(r#"{"type":"kick","ref":"k","room":"r","user":"ab"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = json(r#"{"type":"kick","ref":"k","room":"r","user":"bob","ban":"yes"}"#).unwrap_err();
    assert_eq!(e.r#ref.as_deref(), Some("k"));
    assert!(matches!(
        json(r#"{"type":"unban","room":"r","user":"bob"}"#).unwrap(),
        Command::Unban { .. }
    ));
    for bad_role in ["admin", "Owner", ""] {
        let f = format!(r#"{{"type":"set_role","room":"r","user":"b","role":"{bad_role}"}}"#);
        assert_eq!(json(&f).unwrap_err().code, ErrorCode::BadRequest);
    }
    assert!(matches!(
        json(r#"{"type":"set_role","room":"r","user":"b","role":"moderator"}"#).unwrap(),
        Command::SetRole {
            role: RoomRole::Moderator,
            ..
        }
    ));
}

#[test]
fn refresh_carries_the_verdict_never_the_token() {
    let verify = |t: &str| (t == "good").then(|| identity("ann"));
    let f = |t: &str| format!(r#"{{"type":"refresh","ref":"f","token":"{t}"}}"#);
    let ok = decode(f("good").as_bytes(), Encoding::Json, B, &verify).unwrap();
    assert!(matches!(ok, Command::Refresh { grant: Some(ref g), .. } if g.user.as_str() == "ann"));
    let bad = decode(f("forged").as_bytes(), Encoding::Json, B, &verify).unwrap();
    assert!(matches!(bad, Command::Refresh { grant: None, .. }));
    assert!(!format!("{bad:?}").contains("forged"));
    let long = f(&"t".repeat(crate::auth::MAX_TOKEN_BYTES + 1));
    let e = decode(long.as_bytes(), Encoding::Json, B, &verify).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    let e = json(r#"{"type":"refresh","ref":"f"}"#).unwrap_err();
    assert_eq!(e.message, "missing token");
}

#[test]
fn join_takes_a_presence_mode_and_refuses_others() {
    let mode = |extra: &str| {
        json(&format!(r#"{{"type":"join","ref":"j","room":"r"{extra}}}"#)).map(|c| match c {
            Command::Join { presence, .. } => presence,
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(mode("").unwrap(), PresenceMode::Full);
    assert_eq!(mode(r#","presence":"full""#).unwrap(), PresenceMode::Full);
    assert_eq!(mode(r#","presence":"count""#).unwrap(), PresenceMode::Count);
    // null reads as absent, like every optional field.
    assert_eq!(mode(r#","presence":null"#).unwrap(), PresenceMode::Full);
    for bad in [r#","presence":"all""#, r#","presence":1"#] {
        assert_eq!(mode(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
    }
}

#[test]
fn presence_pages_refuse_a_zero_limit_and_clamp_a_huge_one() {
    let page = |extra: &str| {
        json(&format!(
            r#"{{"type":"presence","ref":"p","room":"r"{extra}}}"#
        ))
    };
    assert_eq!(
        page(r#","limit":0"#).unwrap_err().code,
        ErrorCode::BadRequest
    );
    match page(r#","limit":18446744073709551615,"after":"bob""#).unwrap() {
        Command::Presence { limit, after, .. } => {
            assert_eq!(limit, Some(u32::MAX));
            assert_eq!(after.unwrap().as_str(), "bob");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        page(r#","after":"""#).is_err(),
        "an empty cursor is not a user id"
    );
}
