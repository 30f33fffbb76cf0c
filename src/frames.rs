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
    reader: WebSocketRead<R>,
    max_message: usize,
    assembling: Option<(OpCode, BytesMut, usize)>,
}

impl<R: tokio::io::AsyncRead + Unpin> MessageReader<R> {
    /// `max_frame` bounds each frame (checked by fastwebsockets before it allocates anything),
    /// `max_message` the reassembled message.
    pub fn new(mut reader: WebSocketRead<R>, max_frame: usize, max_message: usize) -> Self {
        reader.set_max_message_size(max_frame + 1);
        reader.set_auto_pong(true);
        reader.set_auto_close(true);
        Self {
            reader,
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
            on_frame();
            match frame.opcode {
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

/// Append one unmasked server frame.
pub fn put_frame(buf: &mut BytesMut, opcode: u8, payload: &[u8]) {
    buf.put_u8(0x80 | opcode);
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
    put_frame(buf, 0x8, &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_the_shortest_length_form() {
        let mut b = BytesMut::new();
        put_frame(&mut b, 1, &[0; 125]);
        assert_eq!(&b[..2], &[0x81, 125]);
        let mut b = BytesMut::new();
        put_frame(&mut b, 2, &[0; 126]);
        assert_eq!(&b[..4], &[0x82, 126, 0, 126]);
        let mut b = BytesMut::new();
        put_frame(&mut b, 2, &[0; 70_000]);
        assert_eq!(b[1], 127);
    }
}
