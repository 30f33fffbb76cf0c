//! Decoding of client frames: bounded and total. Every input either becomes a validated
//! `Command` or a `DecodeError` naming the protocol error code, carrying the frame's `ref`
//! whenever one could be read. Size is bounded before we get here (frame and message caps);
//! nesting depth is bounded by the decoders (JSON 128, MessagePack 32).

use chatty_actors::{
    Body, BodyError, ChangeOp, Cid, Command, Encoding, ErrorCode, Identity, Meta, MetaError,
    PresenceMode, ReactionKey, RoomId, RoomRole, UserId,
};
use serde::Deserialize;

/// Longest accepted `ref`.
pub const MAX_REF_BYTES: usize = 32;
/// MessagePack nesting limit (the protocol's frames are flat; this only bounds hostile input).
const MSGPACK_MAX_DEPTH: usize = 32;

/// A frame that could not become a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub r#ref: Option<String>,
    pub code: ErrorCode,
    pub message: &'static str,
}

impl DecodeError {
    fn new(r#ref: &Option<String>, code: ErrorCode, message: &'static str) -> Self {
        Self {
            r#ref: r#ref.clone(),
            code,
            message,
        }
    }
}

/// Every field of every client frame, all optional; validation decides what is required.
#[derive(Deserialize, Default)]
struct RawFrame {
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(rename = "ref")]
    r#ref: Option<String>,
    room: Option<String>,
    since: Option<u64>,
    cid: Option<String>,
    body: Option<String>,
    before: Option<u64>,
    limit: Option<u64>,
    seq: Option<u64>,
    user: Option<String>,
    ban: Option<bool>,
    role: Option<String>,
    token: Option<String>,
    presence: Option<String>,
    after: Option<String>,
    // v1.1, the message lifecycle. `meta` is any value here, `null` included (present, so
    // refused: only an object is metadata); `Meta::parse` decides.
    #[serde(default, deserialize_with = "present")]
    meta: Option<serde_json::Value>,
    since_rev: Option<u64>,
    key: Option<String>,
    on: Option<bool>,
}

/// A field that is there, whatever its value (`null` too): `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// The size limits a decoder checks (from `limits.*`).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `max_body_bytes`.
    pub body: usize,
    /// `max_meta_bytes` (v1.1).
    pub meta: usize,
}

/// Checks the token of a `refresh` (the edge's `Authenticator`); `None` when it is not valid.
pub type Verify<'a> = &'a dyn Fn(&str) -> Option<Identity>;

/// Only the `ref`, for replying to a frame whose other fields did not decode.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    r#ref: Option<String>,
}

fn decode_raw<'a, T: Deserialize<'a>>(bytes: &'a [u8], encoding: Encoding) -> Option<T> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).ok(),
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MSGPACK_MAX_DEPTH);
            T::deserialize(&mut de).ok()
        }
    }
}

/// Every frame is one JSON object or one MessagePack map: serde would also build the frame
/// struct from a positional array, which the protocol does not allow.
fn is_object(bytes: &[u8], encoding: Encoding) -> bool {
    match encoding {
        Encoding::Json => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{'),
        Encoding::MsgPack => bytes
            .first()
            .is_some_and(|b| (0x80..=0x8f).contains(b) || *b == 0xde || *b == 0xdf),
    }
}

/// Find a string `ref` among the top-level entries of a MessagePack map without recursing:
/// values are skipped by counting the items still to skip, so depth costs nothing.
fn msgpack_ref(bytes: &[u8]) -> Option<String> {
    use rmp::Marker;
    let mut rd = bytes;
    let entries = match rmp::decode::read_marker(&mut rd).ok()? {
        Marker::FixMap(n) => u32::from(n),
        Marker::Map16 => be(&mut rd, 2)? as u32,
        Marker::Map32 => be(&mut rd, 4)? as u32,
        _ => return None,
    };
    for _ in 0..entries {
        // Keys of interest are short strings; any other key is skipped like a value.
        let mut key_rd = rd;
        let is_ref = matches!(
            rmp::decode::read_str_len(&mut key_rd),
            Ok(3) if key_rd.get(..3) == Some(b"ref")
        );
        if is_ref {
            rd = &key_rd[3..];
            let mut v = rd;
            let len = rmp::decode::read_str_len(&mut v).ok()? as usize;
            return std::str::from_utf8(v.get(..len)?).ok().map(str::to_owned);
        }
        skip_values(&mut rd, 2)?;
    }
    None
}

/// Read a `k`-byte big-endian unsigned integer.
fn be(rd: &mut &[u8], k: usize) -> Option<u64> {
    let b = rd.get(..k)?;
    *rd = &rd[k..];
    Some(b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
}

/// Skip `n` MessagePack values iteratively.
fn skip_values(rd: &mut &[u8], mut n: u64) -> Option<()> {
    use rmp::Marker;
    fn take(rd: &mut &[u8], k: usize) -> Option<()> {
        *rd = rd.get(k..)?;
        Some(())
    }
    while n > 0 {
        n -= 1;
        match rmp::decode::read_marker(rd).ok()? {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            }
            Marker::U8 | Marker::I8 => take(rd, 1)?,
            Marker::U16 | Marker::I16 => take(rd, 2)?,
            Marker::U32 | Marker::I32 | Marker::F32 => take(rd, 4)?,
            Marker::U64 | Marker::I64 | Marker::F64 => take(rd, 8)?,
            Marker::FixStr(l) => take(rd, l as usize)?,
            Marker::Str8 | Marker::Bin8 => {
                let l = be(rd, 1)?;
                take(rd, l as usize)?
            }
            Marker::Str16 | Marker::Bin16 => {
                let l = be(rd, 2)?;
                take(rd, l as usize)?
            }
            Marker::Str32 | Marker::Bin32 => {
                let l = be(rd, 4)?;
                take(rd, l as usize)?
            }
            Marker::FixArray(l) => n += u64::from(l),
            Marker::Array16 => n += be(rd, 2)?,
            Marker::Array32 => n += be(rd, 4)?,
            Marker::FixMap(l) => n += 2 * u64::from(l),
            Marker::Map16 => n += 2 * be(rd, 2)?,
            Marker::Map32 => n += 2 * be(rd, 4)?,
            Marker::FixExt1 => take(rd, 2)?,
            Marker::FixExt2 => take(rd, 3)?,
            Marker::FixExt4 => take(rd, 5)?,
            Marker::FixExt8 => take(rd, 9)?,
            Marker::FixExt16 => take(rd, 17)?,
            Marker::Ext8 => {
                let l = be(rd, 1)?;
                take(rd, l as usize + 1)?
            }
            Marker::Ext16 => {
                let l = be(rd, 2)?;
                take(rd, l as usize + 1)?
            }
            Marker::Ext32 => {
                let l = be(rd, 4)?;
                take(rd, l as usize + 1)?
            }
            Marker::Reserved => return None,
        }
        // A length lie larger than what is left ends the scan instead of looping on.
        if n > rd.len() as u64 {
            return None;
        }
    }
    Some(())
}

/// Decode one complete client message (already reassembled and size-checked). The token of a
/// `refresh` is checked here, with `verify`, so no actor ever holds one.
pub fn decode(
    bytes: &[u8],
    encoding: Encoding,
    bounds: Bounds,
    verify: Verify<'_>,
) -> Result<Command, DecodeError> {
    let raw = is_object(bytes, encoding)
        .then(|| decode_raw::<RawFrame>(bytes, encoding))
        .flatten();
    let Some(raw) = raw else {
        if encoding == Encoding::MsgPack {
            return Err(DecodeError {
                r#ref: msgpack_ref(bytes).filter(|r| r.len() <= MAX_REF_BYTES),
                code: ErrorCode::BadRequest,
                message: "frame is not a valid object of the protocol",
            });
        }
        let r#ref = decode_raw::<RefOnly>(bytes, encoding)
            .and_then(|r| r.r#ref)
            .filter(|r| r.len() <= MAX_REF_BYTES);
        return Err(DecodeError {
            r#ref,
            code: ErrorCode::BadRequest,
            message: "frame is not a valid object of the protocol",
        });
    };
    validate(raw, bounds, verify)
}

fn validate(raw: RawFrame, bounds: Bounds, verify: Verify<'_>) -> Result<Command, DecodeError> {
    if raw.r#ref.as_ref().is_some_and(|r| r.len() > MAX_REF_BYTES) {
        return Err(DecodeError::new(
            &None,
            ErrorCode::BadRequest,
            "ref longer than 32 bytes",
        ));
    }
    let rf = &raw.r#ref;
    let bad = |m: &'static str| DecodeError::new(rf, ErrorCode::BadRequest, m);
    let room = || -> Result<RoomId, DecodeError> {
        let r = raw.room.as_deref().ok_or_else(|| bad("missing room"))?;
        RoomId::parse(r).map_err(|_| bad("room must match ^[A-Za-z0-9._-]{1,64}$"))
    };
    let boxed = || raw.r#ref.clone().map(String::into_boxed_str);
    let user = || -> Result<UserId, DecodeError> {
        let u = raw.user.as_deref().ok_or_else(|| bad("missing user"))?;
        UserId::parse(u)
            .map_err(|_| bad("user must be 1-128 bytes of UTF-8, no control characters"))
    };
    let body = |raw_body: Option<&str>| -> Result<Body, DecodeError> {
        let b = raw_body.ok_or_else(|| bad("missing body"))?;
        Body::parse(b, bounds.body).map_err(|e| match e {
            BodyError::TooLarge => {
                DecodeError::new(rf, ErrorCode::TooLarge, "body larger than max_body_bytes")
            }
            BodyError::Empty => bad("body must not be empty"),
            BodyError::Nul => bad("body must not contain NUL"),
        })
    };
    let meta = |raw_meta: Option<serde_json::Value>| -> Result<Option<Meta>, DecodeError> {
        let Some(v) = raw_meta else { return Ok(None) };
        Meta::parse(v, bounds.meta).map(Some).map_err(|e| {
            let code = match e {
                MetaError::TooLarge => ErrorCode::TooLarge,
                _ => ErrorCode::BadRequest,
            };
            DecodeError::new(rf, code, e.message())
        })
    };
    let seq = || raw.seq.ok_or_else(|| bad("missing seq"));
    let Some(ty) = raw.ty.as_deref() else {
        return Err(bad("missing type"));
    };
    Ok(match ty {
        "join" => Command::Join {
            room: room()?,
            since: raw.since,
            presence: match raw.presence.as_deref() {
                None | Some("full") => PresenceMode::Full,
                Some("count") => PresenceMode::Count,
                Some(_) => return Err(bad("presence must be \"full\" or \"count\"")),
            },
            since_rev: raw.since_rev,
            r#ref: boxed(),
        },
        "presence" => Command::Presence {
            room: room()?,
            after: match raw.after.as_deref() {
                None => None,
                Some(u) => Some(UserId::parse(u).map_err(|_| bad("after must be a user id"))?),
            },
            // As for `history`: 0 is refused, anything larger is clamped (by the room, to
            // `limits.presence_list_max`).
            limit: match raw.limit {
                None => None,
                Some(0) => return Err(bad("limit must be at least 1")),
                Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            },
            r#ref: boxed(),
        },
        "leave" => Command::Leave {
            room: room()?,
            r#ref: boxed(),
        },
        "send" => {
            let room = room()?;
            let cid = raw.cid.as_deref().ok_or_else(|| bad("missing cid"))?;
            let cid = Cid::parse(cid).map_err(|_| bad("cid must match ^[A-Za-z0-9._:-]{1,64}$"))?;
            Command::Send {
                room,
                cid,
                body: body(raw.body.as_deref())?,
                meta: meta(raw.meta.clone())?,
                r#ref: boxed(),
                // Sampled by the socket reader, after decoding.
                trace: None,
            }
        }
        "edit" => Command::Change {
            room: room()?,
            seq: seq()?,
            op: ChangeOp::Edit {
                body: body(raw.body.as_deref())?,
                meta: meta(raw.meta.clone())?,
            },
            r#ref: boxed(),
        },
        "delete" => Command::Change {
            room: room()?,
            seq: seq()?,
            op: ChangeOp::Delete,
            r#ref: boxed(),
        },
        "react" => {
            let key = raw.key.as_deref().ok_or_else(|| bad("missing key"))?;
            Command::Change {
                room: room()?,
                seq: seq()?,
                op: ChangeOp::React {
                    key: ReactionKey::parse(key).map_err(|e| bad(e.0))?,
                    on: raw.on.ok_or_else(|| bad("missing on (true or false)"))?,
                },
                r#ref: boxed(),
            }
        }
        "history" => {
            let limit = raw.limit.unwrap_or(50);
            if limit == 0 {
                return Err(bad("limit must be >= 1"));
            }
            Command::History {
                room: room()?,
                before: raw.before,
                // Clamped to the server's maximum by the connection.
                limit: limit.min(u64::from(u32::MAX)) as u32,
                r#ref: boxed(),
            }
        }
        "read" => Command::Read {
            room: room()?,
            seq: seq()?,
            r#ref: boxed(),
        },
        "typing" => Command::Typing { room: room()? },
        "ping" => Command::Ping { r#ref: boxed() },
        "rooms" => Command::Rooms { r#ref: boxed() },
        "kick" => Command::Kick {
            room: room()?,
            user: user()?,
            ban: raw.ban.unwrap_or(false),
            r#ref: boxed(),
        },
        "unban" => Command::Unban {
            room: room()?,
            user: user()?,
            r#ref: boxed(),
        },
        "set_role" => {
            let role = raw.role.as_deref().ok_or_else(|| bad("missing role"))?;
            Command::SetRole {
                room: room()?,
                user: user()?,
                role: RoomRole::parse(role)
                    .ok_or_else(|| bad("role must be member, moderator or owner"))?,
                r#ref: boxed(),
            }
        }
        "refresh" => {
            let token = raw.token.as_deref().ok_or_else(|| bad("missing token"))?;
            if token.len() > crate::auth::MAX_TOKEN_BYTES {
                return Err(DecodeError::new(
                    rf,
                    ErrorCode::TooLarge,
                    "token longer than 4096 bytes",
                ));
            }
            Command::Refresh {
                grant: verify(token),
                r#ref: boxed(),
            }
        }
        _ => {
            return Err(DecodeError::new(
                rf,
                ErrorCode::UnknownType,
                "unknown frame type",
            ))
        }
    })
}

#[cfg(test)]
mod tests;
