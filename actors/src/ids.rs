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
}

/// A per-room sequence number. 0 means "nothing yet".
pub type Seq = u64;

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
display_as_str!(RoomId, UserId, Cid, DisplayName);

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
    fn display_names_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let n = DisplayName::sanitize(&long);
        assert!(n.as_str().len() <= DisplayName::MAX_LEN);
        assert_eq!(DisplayName::sanitize("a\u{7}b").as_str(), "ab");
    }
}
