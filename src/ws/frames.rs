//! WebSocket messages on top of fastwebsockets frames, with our limits: the reader reassembles
//! fragments itself (fastwebsockets' collector does not cap a reassembled message) and bounds
//! the size and the fragment count of every message; the writer side frames server messages
//! (unmasked) into one buffer so many can go out in one write.

use bytes::{BufMut, BytesMut};
use fastwebsockets::{Frame, OpCode, WebSocketError, WebSocketRead};

use chatty_actors::close;

/// The most fragments one message may arrive in (bounds endless empty continuations).
pub const MAX_FRAGMENTS: usize = 128;

/// A complete message from the client.
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// Reads complete messages, or the close code the connection must end with.
pub struct MessageReader<R> {
    reader: WebSocketRead<MaskCheck<R>>,
    unmasked: UnmaskedFlag,
    max_message: usize,
    assembling: Option<(OpCode, BytesMut, usize)>,
}

impl<R: tokio::io::AsyncRead + Unpin> MessageReader<R> {
    /// `max_frame` bounds each frame (checked by fastwebsockets before it allocates anything),
    /// `max_message` the reassembled message.
    pub fn new(stream: R, max_frame: usize, max_message: usize) -> Self {
        let unmasked = UnmaskedFlag::default();
        let (mut reader, _) = fastwebsockets::after_handshake_split(
            MaskCheck::new(stream, unmasked.clone()),
            tokio::io::sink(),
            fastwebsockets::Role::Server,
        );
        reader.set_max_message_size(max_frame + 1);
        reader.set_auto_pong(true);
        reader.set_auto_close(true);
        Self {
            reader,
            unmasked,
            max_message,
            assembling: None,
        }
    }

    /// The next message. `on_control` sees every frame the protocol obliges us to answer
    /// (pongs to the client's pings) and every frame read at all (for liveness). `Err` is the
    /// close code to send: the client's own for its close frame, ours for a violation, 1000
    /// for a vanished peer.
    pub async fn next<F>(
        &mut self,
        mut on_pong: F,
        mut on_frame: impl FnMut(),
    ) -> Result<Message, u16>
    where
        F: FnMut(&[u8]),
    {
        loop {
            let mut obligated = |f: Frame<'_>| {
                if f.opcode == OpCode::Pong {
                    // A ping from the client (answered by this pong) is a sign of life too.
                    on_frame();
                    on_pong(&f.payload);
                }
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            };
            let frame = self.reader.read_frame(&mut obligated).await;
            let frame = frame.map_err(|e| read_error_code(&e))?;
            if self.unmasked.get() {
                return Err(close::PROTOCOL); // RFC 6455 5.1: clients must mask every frame
            }
            on_frame();
            match frame.opcode {
                // fastwebsockets bounds pings only; RFC 6455 bounds every control frame.
                OpCode::Close | OpCode::Ping | OpCode::Pong if frame.payload.len() > 125 => {
                    return Err(close::PROTOCOL);
                }
                OpCode::Close => {
                    // Echo the client's code when it is one we may send, else a normal close.
                    let code = if frame.payload.len() >= 2 {
                        u16::from_be_bytes([frame.payload[0], frame.payload[1]])
                    } else {
                        close::NORMAL
                    };
                    return Err(
                        if (1000..=1003).contains(&code) || (3000..=4999).contains(&code) {
                            code
                        } else {
                            close::NORMAL
                        },
                    );
                }
                OpCode::Ping | OpCode::Pong => continue,
                OpCode::Text | OpCode::Binary => {
                    if self.assembling.is_some() {
                        return Err(close::PROTOCOL); // a new message inside a fragmented one
                    }
                    if !frame.fin {
                        let mut buf = BytesMut::new();
                        buf.extend_from_slice(&frame.payload);
                        if buf.len() > self.max_message {
                            return Err(close::TOO_BIG);
                        }
                        self.assembling = Some((frame.opcode, buf, 1));
                        continue;
                    }
                    // Unfragmented text was already checked for UTF-8 by fastwebsockets.
                    let payload = frame.payload.to_vec();
                    return Ok(if frame.opcode == OpCode::Text {
                        Message::Text(payload)
                    } else {
                        Message::Binary(payload)
                    });
                }
                OpCode::Continuation => {
                    let Some((op, mut buf, n)) = self.assembling.take() else {
                        return Err(close::PROTOCOL);
                    };
                    if buf.len() + frame.payload.len() > self.max_message || n + 1 > MAX_FRAGMENTS {
                        return Err(close::TOO_BIG);
                    }
                    buf.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        self.assembling = Some((op, buf, n + 1));
                        continue;
                    }
                    if op == OpCode::Text {
                        if std::str::from_utf8(&buf).is_err() {
                            return Err(close::INVALID_PAYLOAD);
                        }
                        return Ok(Message::Text(buf.to_vec()));
                    }
                    return Ok(Message::Binary(buf.to_vec()));
                }
            }
        }
    }
}

/// Set once an unmasked client frame went by.
#[derive(Clone, Default)]
pub struct UnmaskedFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl UnmaskedFlag {
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Where a frame header scan stands.
#[derive(Clone, Copy)]
enum Scan {
    First,
    Second,
    ExtLen {
        need: u8,
        got: u8,
        len: u64,
        masked: bool,
    },
    Mask {
        left: u8,
        len: u64,
    },
    Payload {
        left: u64,
    },
}

/// Watches the frame headers in the bytes read from a client and flags an unmasked frame:
/// fastwebsockets does not check the mask bit, and its frames do not expose it.
pub struct MaskCheck<R> {
    inner: R,
    scan: Scan,
    flag: UnmaskedFlag,
}

impl<R> MaskCheck<R> {
    fn new(inner: R, flag: UnmaskedFlag) -> Self {
        Self {
            inner,
            scan: Scan::First,
            flag,
        }
    }

    fn after_len(&mut self, len: u64, masked: bool) {
        if !masked {
            self.flag.set();
        }
        self.scan = if masked {
            Scan::Mask { left: 4, len }
        } else if len > 0 {
            Scan::Payload { left: len }
        } else {
            Scan::First
        };
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.scan {
                Scan::Payload { left } => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.scan = if n == left {
                        Scan::First
                    } else {
                        Scan::Payload { left: left - n }
                    };
                    continue;
                }
                Scan::First => self.scan = Scan::Second,
                Scan::Second => {
                    let (masked, len7) = (bytes[0] & 0x80 != 0, bytes[0] & 0x7f);
                    match len7 {
                        126 => {
                            self.scan = Scan::ExtLen {
                                need: 2,
                                got: 0,
                                len: 0,
                                masked,
                            }
                        }
                        127 => {
                            self.scan = Scan::ExtLen {
                                need: 8,
                                got: 0,
                                len: 0,
                                masked,
                            }
                        }
                        n => self.after_len(u64::from(n), masked),
                    }
                }
                Scan::ExtLen {
                    need,
                    got,
                    len,
                    masked,
                } => {
                    let len = (len << 8) | u64::from(bytes[0]);
                    if got + 1 == need {
                        self.after_len(len, masked);
                    } else {
                        self.scan = Scan::ExtLen {
                            need,
                            got: got + 1,
                            len,
                            masked,
                        };
                    }
                }
                Scan::Mask { left, len } => {
                    self.scan = if left > 1 {
                        Scan::Mask {
                            left: left - 1,
                            len,
                        }
                    } else if len > 0 {
                        Scan::Payload { left: len }
                    } else {
                        Scan::First
                    };
                }
            }
            bytes = &bytes[1..];
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for MaskCheck<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.flag.get() {
            this.feed(&buf.filled()[before..]);
        }
        r
    }
}

fn read_error_code(e: &WebSocketError) -> u16 {
    match e {
        WebSocketError::FrameTooLarge => close::TOO_BIG,
        WebSocketError::InvalidUTF8 => close::INVALID_PAYLOAD,
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => close::NORMAL,
        _ => close::PROTOCOL,
    }
}

/// The opcodes a server writes (RFC 6455, section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Append one unmasked, final server frame.
pub fn put_frame(buf: &mut BytesMut, opcode: Opcode, payload: &[u8]) {
    buf.put_u8(0x80 | opcode as u8);
    let n = payload.len();
    if n < 126 {
        buf.put_u8(n as u8);
    } else if n <= usize::from(u16::MAX) {
        buf.put_u8(126);
        buf.put_u16(n as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(n as u64);
    }
    buf.extend_from_slice(payload);
}

/// Append a close frame with `code` and its short reason.
pub fn put_close(buf: &mut BytesMut, code: u16) {
    let reason = close::reason(code).as_bytes();
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason);
    put_frame(buf, Opcode::Close, &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_scan_follows_frame_boundaries() {
        let flag = UnmaskedFlag::default();
        let mut m = MaskCheck::new((), flag.clone());
        // masked text "hi", masked 200-byte binary (16-bit length), masked empty ping
        let mut bytes = vec![0x81, 0x82, 1, 2, 3, 4, b'h', b'i'];
        bytes.extend([0x82, 0xfe, 0, 200, 1, 2, 3, 4]);
        bytes.extend(std::iter::repeat_n(0u8, 200));
        bytes.extend([0x89, 0x80, 1, 2, 3, 4]);
        for chunk in bytes.chunks(7) {
            m.feed(chunk);
        }
        assert!(!flag.get());
        m.feed(&[0x81, 0x02, b'o', b'k']);
        assert!(flag.get());
    }

    #[test]
    fn frames_use_the_shortest_length_form() {
        let mut b = BytesMut::new();
        put_frame(&mut b, Opcode::Text, &[0; 125]);
        assert_eq!(&b[..2], &[0x81, 125]);
        let mut b = BytesMut::new();
        put_frame(&mut b, Opcode::Binary, &[0; 126]);
        assert_eq!(&b[..4], &[0x82, 126, 0, 126]);
        let mut b = BytesMut::new();
        put_frame(&mut b, Opcode::Binary, &[0; 70_000]);
        assert_eq!(b[1], 127);
    }
}
