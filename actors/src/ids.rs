//! Newtypes for every identifier on the wire. Each constructor validates, so a value of one of
//! these types is always well formed and the rest of the engine never re-checks it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub &'static str);

/// A room id: `^[A-Za-z0-9._-]{1,64}$`. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(Arc<str>);

impl RoomId {
    /// Longest room id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// `s` as a room id, if it matches the pattern; the error is fit for a `bad_request`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok_len = !s.is_empty() && s.len() <= Self::MAX_LEN;
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok_len && ok_chars {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidId("room must match ^[A-Za-z0-9._-]{1,64}$"))
        }
    }

    /// The id as on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user id (the JWT `sub`): 1–128 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Longest user id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// `s` as a user id, if it is 1–128 bytes without control characters.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > Self::MAX_LEN || s.chars().any(char::is_control) {
            Err(InvalidId(
                "user id must be 1-128 bytes without control characters",
            ))
        } else {
            Ok(Self(Arc::from(s)))
        }
    }

    /// The id as on the wire (and in the token's `sub`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client message id, the idempotency key of a send: 1–64 bytes of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Cid(Arc<str>);

impl Cid {
    /// Longest cid, in bytes.
    pub const MAX_LEN: usize = 64;

    /// `s` as a cid, if it matches the pattern; the error is fit for a `bad_request`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let ok_len = !s.is_empty() && s.len() <= Self::MAX_LEN;
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok_len && ok_chars {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidId("cid must match ^[A-Za-z0-9._:-]{1,64}$"))
        }
    }

    /// The cid as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name (JWT `name` claim, or the user id when absent): at most 128 bytes, no
/// control characters. Longer names are cut at a character boundary rather than refused,
/// because the name is cosmetic.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(Arc<str>);

impl DisplayName {
    /// Longest name, in bytes; `sanitize` cuts anything longer.
    pub const MAX_LEN: usize = 128;

    /// `s` without control characters, cut at a character boundary to at most `MAX_LEN`
    /// bytes. Never fails.
    pub fn sanitize(s: &str) -> Self {
        let mut out = String::with_capacity(s.len().min(Self::MAX_LEN));
        for c in s.chars().filter(|c| !c.is_control()) {
            if out.len() + c.len_utf8() > Self::MAX_LEN {
                break;
            }
            out.push(c);
        }
        Self(Arc::from(out))
    }

    /// The name as shown to others.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: 1..=max bytes of UTF-8, no NUL (a NUL would fail a whole Postgres batch).
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Body(Arc<str>);

/// Why a body was refused; `TooLarge` maps to the `too_large` error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Zero bytes (`bad_request`).
    Empty,
    /// More than the configured maximum of bytes (`too_large`).
    TooLarge,
    /// Contains a NUL byte (`bad_request`).
    Nul,
}

impl Body {
    /// `s` as a body, if it is 1..=`max_bytes` bytes (the `max_body_bytes` setting) with no NUL.
    pub fn parse(s: &str, max_bytes: usize) -> Result<Self, BodyError> {
        if s.is_empty() {
            Err(BodyError::Empty)
        } else if s.len() > max_bytes {
            Err(BodyError::TooLarge)
        } else if s.as_bytes().contains(&0) {
            Err(BodyError::Nul)
        } else {
            Ok(Self(Arc::from(s)))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The empty body of a deleted message (a tombstone), the one body that is not 1.. bytes.
    pub fn tombstone() -> Self {
        Self(Arc::from(""))
    }
}

/// A per-room sequence number. 0 means "nothing yet".
pub type Seq = u64;

/// A per-room revision: the count of committed changes (edits, deletes, reactions) of the
/// room's messages. 0 means "never changed"; gap-free from 1, independent of `Seq`.
pub type Rev = u64;

/// A message's metadata (`send.meta`): a JSON object, bounded in size and depth, with no NUL
/// anywhere (PostgreSQL's `jsonb` refuses `\u0000`). Kept both as a value (encoded into either
/// encoding on the way out) and as its JSON text (what the store keeps).
#[derive(Clone)]
pub struct Meta {
    value: Arc<serde_json::Value>,
    text: Arc<str>,
}

/// Why a `meta` was refused; `TooLarge` maps to `too_large`, the rest to `bad_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// Not a JSON object (a MessagePack map with string keys).
    NotObject,
    /// More than the allowed bytes once encoded as JSON.
    TooLarge,
    /// Containers nested deeper than `Meta::MAX_DEPTH`.
    TooDeep,
    /// A NUL in a key or a string.
    Nul,
}

impl MetaError {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            MetaError::NotObject => "meta must be an object",
            MetaError::TooLarge => "meta larger than max_meta_bytes",
            MetaError::TooDeep => "meta nested deeper than 4",
            MetaError::Nul => "meta must not contain NUL",
        }
    }
}

impl Meta {
    /// Deepest nesting: the object itself is depth 1, each container inside adds one.
    pub const MAX_DEPTH: usize = 4;

    /// `value` as metadata, if it is an object of at most `max_bytes` (JSON-encoded) within
    /// the depth limit and without NUL.
    pub fn parse(value: serde_json::Value, max_bytes: usize) -> Result<Self, MetaError> {
        if !value.is_object() {
            return Err(MetaError::NotObject);
        }
        check_meta(&value, 1)?;
        Self::object(value, max_bytes)
    }

    /// Any JSON object of at most `max_bytes`: a personal event's `data` (v1.1), which is
    /// never stored, so neither the depth limit of metadata nor its NUL rule applies (the
    /// decoders' own depth bound does).
    pub fn object(value: serde_json::Value, max_bytes: usize) -> Result<Self, MetaError> {
        if !value.is_object() {
            return Err(MetaError::NotObject);
        }
        let text = serde_json::to_string(&value).map_err(|_| MetaError::NotObject)?;
        if text.len() > max_bytes {
            return Err(MetaError::TooLarge);
        }
        Ok(Self {
            value: Arc::new(value),
            text: Arc::from(text),
        })
    }

    /// Metadata read back from the store (checked when it was stored).
    pub fn from_stored(text: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        value.is_object().then(|| Self {
            value: Arc::new(value),
            text: Arc::from(text),
        })
    }

    /// The JSON text, as stored.
    pub fn as_json(&self) -> &str {
        &self.text
    }

    /// The value.
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }
}

/// Depth and NUL check without recursion past the limit (the decoders bound the input's
/// depth already; this bounds what we accept).
fn check_meta(v: &serde_json::Value, depth: usize) -> Result<(), MetaError> {
    use serde_json::Value;
    let nul = |s: &str| s.as_bytes().contains(&0);
    match v {
        Value::String(s) if nul(s) => Err(MetaError::Nul),
        Value::Array(_) | Value::Object(_) if depth > Meta::MAX_DEPTH => Err(MetaError::TooDeep),
        Value::Array(items) => items.iter().try_for_each(|i| check_meta(i, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, i)| {
            if nul(k) {
                return Err(MetaError::Nul);
            }
            check_meta(i, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// Equal values are equal metadata, however their text was written (PostgreSQL's `jsonb`
/// gives it back with its own spacing and key order).
impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl fmt::Debug for Meta {
    // Like bodies, metadata never reaches logs: only its size does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Meta({} bytes)", self.text.len())
    }
}

/// A reaction key (`react.key`): an emoji or a short name, 1-32 bytes of UTF-8 without
/// control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ReactionKey(Arc<str>);

impl ReactionKey {
    /// Longest key, in bytes.
    pub const MAX_LEN: usize = 32;

    /// `s` as a reaction key; the error is fit for a `bad_request`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > Self::MAX_LEN || s.chars().any(char::is_control) {
            Err(InvalidId(
                "reaction key must be 1-32 bytes without control characters",
            ))
        } else {
            Ok(Self(Arc::from(s)))
        }
    }

    /// The key as on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A connection id, unique within one node's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ConnId(pub u64);

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    )*};
}
display_as_str!(RoomId, UserId, Cid, DisplayName, ReactionKey);

impl fmt::Debug for Body {
    // Bodies never reach logs: only their size does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Body({} bytes)", self.0.len())
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_follow_the_protocol_pattern() {
        assert!(RoomId::parse("general").is_ok());
        assert!(RoomId::parse("a.b_c-D9").is_ok());
        assert!(RoomId::parse(&"x".repeat(64)).is_ok());
        assert!(RoomId::parse(&"x".repeat(65)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("has space").is_err());
        assert!(RoomId::parse("ünï").is_err());
        assert!(RoomId::parse("a/b").is_err());
    }

    #[test]
    fn cids_allow_colons_but_not_slashes() {
        assert!(Cid::parse("abc:123-x_y.z").is_ok());
        assert!(Cid::parse("a/b").is_err());
        assert!(Cid::parse(&"c".repeat(65)).is_err());
    }

    #[test]
    fn user_ids_refuse_control_characters() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("ålice smith").is_ok());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse(&"u".repeat(129)).is_err());
    }

    #[test]
    fn bodies_refuse_nul_and_oversize() {
        assert_eq!(Body::parse("a\0b", 10), Err(BodyError::Nul));
        assert_eq!(Body::parse("", 10), Err(BodyError::Empty));
        assert_eq!(Body::parse("12345", 4), Err(BodyError::TooLarge));
        assert!(Body::parse("1234", 4).is_ok());
    }

    #[test]
    fn meta_is_an_object_bounded_in_size_and_depth_without_nul() {
        use serde_json::json;
        assert!(Meta::parse(json!({"reply_to": 3, "a": [{"b": [1]}]}), 100).is_ok());
        assert_eq!(Meta::parse(json!([1]), 100), Err(MetaError::NotObject));
        assert_eq!(Meta::parse(json!("x"), 100), Err(MetaError::NotObject));
        assert_eq!(
            Meta::parse(json!({"a": {"b": {"c": {"d": 1}}}}), 100).map(|m| m.as_json().len()),
            Ok(25)
        );
        assert_eq!(
            Meta::parse(json!({"a": {"b": {"c": {"d": {}}}}}), 100),
            Err(MetaError::TooDeep)
        );
        assert_eq!(
            Meta::parse(json!({"a": "x".repeat(100)}), 100),
            Err(MetaError::TooLarge)
        );
        assert_eq!(
            Meta::parse(json!({"a": "x\u{0}"}), 100),
            Err(MetaError::Nul)
        );
        assert_eq!(Meta::parse(json!({"\u{0}": 1}), 100), Err(MetaError::Nul));
        let m = Meta::parse(json!({"k": [1, "two"]}), 100).unwrap();
        assert_eq!(Meta::from_stored(m.as_json()), Some(m));
    }

    #[test]
    fn reaction_keys_are_short_and_printable() {
        assert!(ReactionKey::parse("👍").is_ok());
        assert!(ReactionKey::parse(&"k".repeat(32)).is_ok());
        assert!(ReactionKey::parse(&"k".repeat(33)).is_err());
        assert!(ReactionKey::parse("").is_err());
        assert!(ReactionKey::parse("a\u{0}").is_err());
    }

    #[test]
    fn display_names_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let n = DisplayName::sanitize(&long);
        assert!(n.as_str().len() <= DisplayName::MAX_LEN);
        assert_eq!(DisplayName::sanitize("a\u{7}b").as_str(), "ab");
    }
}
