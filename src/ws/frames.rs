//! WebSocket messages, both ways, with our limits. The reader is our own RFC 6455 server-side
//! frame parser: it checks every header before it allocates anything, reassembles fragments
//! with a cap on the message's size and fragment count, and keeps no buffer while the socket
//! is idle (fastwebsockets' reader holds a private 8 KiB one per socket, for life). The writer
//! frames server messages (unmasked) into one buffer so many can go out in one write.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use chatty_actors::close;

/// The most fragments one message may arrive in (bounds endless empty continuations).
pub const MAX_FRAGMENTS: usize = 128;

/// The most one read takes from the socket, into the thread's scratch buffer.
const SCRATCH_LEN: usize = 16 * 1024;

/// A read buffer emptied by the last frame is kept only up to this capacity: 0 frees every
/// one, so an idle socket holds none (a small allocation per message costs next to nothing
/// beside the read that brought it).
const KEEP_CAPACITY: usize = 0;

thread_local! {
    /// Where each read lands first, shared by all the sockets this thread serves: a socket
    /// whose read is pending then holds no memory for it. Only the bytes that came are
    /// copied into the socket's own buffer.
    static SCRATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// Run `f` on the thread's scratch buffer. It is taken for the call and put back after it,
/// so a nested call (there is none today) or one during the thread's teardown gets a fresh
/// buffer rather than a panic. The buffer never lives across an await: `f` is synchronous.
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    let mut scratch = SCRATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; SCRATCH_LEN].into_boxed_slice());
    let t = f(&mut scratch);
    let _ = SCRATCH.try_with(|c| c.set(Some(scratch)));
    t
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// The opcodes a client may send (RFC 6455, section 5.2); any other is a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientOp {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl ClientOp {
    fn from_u8(op: u8) -> Option<Self> {
        Some(match op {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A checked frame header.
struct Header {
    fin: bool,
    op: ClientOp,
    mask: [u8; 4],
    /// Its own length: 6 to 14 bytes (clients always send the 4-byte mask).
    size: usize,
    /// The payload's length, at most `max_frame`.
    len: usize,
}

/// What the buffered bytes hold so far.
enum Parsed {
    /// A header, incomplete by this many bytes.
    Need(usize),
    Header(Header),
}

/// A fragmented message being put together.
struct Assembly {
    text: bool,
    data: Vec<u8>,
    fragments: usize,
}

/// Reads complete messages, or the close code the connection must end with.
///
/// The socket's bytes wait in `buf` (parsed up to `pos`) until a whole frame is there; a frame
/// is handled, and its bytes consumed, in one go. `buf` is empty, with no allocation, whenever
/// no frame is partly read, so an idle socket costs only this struct.
pub struct MessageReader<R> {
    stream: R,
    buf: Vec<u8>,
    pos: usize,
    max_frame: usize,
    max_message: usize,
    assembling: Option<Assembly>,
    /// Set by the first error other than the client's close: every later call returns it
    /// again (what follows a violation cannot be trusted to be frames).
    failed: Option<u16>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// `max_frame` bounds each frame (checked from its header, before anything is allocated
    /// for it), `max_message` the reassembled message.
    pub fn new(stream: R, max_frame: usize, max_message: usize) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            pos: 0,
            max_frame,
            max_message,
            assembling: None,
            failed: None,
        }
    }

    /// The next message. `on_pong` sees the payload of every ping, to be answered with a
    /// pong; `on_frame` sees every frame read at all (for liveness). `Err` is the close code
    /// to send: the client's own for its close frame, ours for a violation, 1000 for a
    /// vanished peer.
    ///
    /// Cancel-safe: all the state is in the reader, and a frame's callbacks run in the same
    /// poll that consumes it, so a `next` dropped while pending (in a `select!`) loses
    /// nothing: the next call goes on where it stopped.
    pub async fn next<F>(
        &mut self,
        mut on_pong: F,
        mut on_frame: impl FnMut(),
    ) -> Result<Message, u16>
    where
        F: FnMut(&[u8]),
    {
        std::future::poll_fn(|cx| self.poll_next(cx, &mut on_pong, &mut on_frame)).await
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        on_pong: &mut impl FnMut(&[u8]),
        on_frame: &mut impl FnMut(),
    ) -> Poll<Result<Message, u16>> {
        if let Some(code) = self.failed {
            return Poll::Ready(Err(code));
        }
        loop {
            let missing = match self.parse_header() {
                Err(code) => return Poll::Ready(Err(self.fail(code))),
                Ok(Parsed::Need(n)) => n,
                Ok(Parsed::Header(h)) => {
                    let have = self.buf.len() - self.pos;
                    if have >= h.size + h.len {
                        match self.handle(h, on_pong, on_frame) {
                            Some(r) => return Poll::Ready(r),
                            None => continue,
                        }
                    }
                    h.size + h.len - have
                }
            };
            match self.poll_fill(cx, missing) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(code)) => return Poll::Ready(Err(self.fail(code))),
                Poll::Ready(Ok(())) => {}
            }
        }
    }

    /// Check the header at `pos`, in the order fastwebsockets did (the close codes stay the
    /// same), plus what it left to us: the mask bit and the size of every control frame.
    fn parse_header(&self) -> Result<Parsed, u16> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(Parsed::Need(2 - b.len()));
        }
        if b[0] & 0x70 != 0 {
            return Err(close::PROTOCOL); // RSV bits: we negotiate no extension
        }
        let op = ClientOp::from_u8(b[0] & 0x0f).ok_or(close::PROTOCOL)?;
        if b[1] & 0x80 == 0 {
            return Err(close::PROTOCOL); // RFC 6455 5.1: clients must mask every frame
        }
        let fin = b[0] & 0x80 != 0;
        let len7 = b[1] & 0x7f;
        // RFC 6455 5.5: control frames are never fragmented and carry at most 125 bytes.
        if op.is_control() && (!fin || len7 > 125) {
            return Err(close::PROTOCOL);
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let size = 2 + ext + 4;
        if b.len() < size {
            return Ok(Parsed::Need(size - b.len()));
        }
        let len = match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            _ => u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
        };
        // Before anything is allocated for it (a declared 2^62 bytes costs nothing).
        let len = match usize::try_from(len) {
            Ok(len) if len <= self.max_frame => len,
            _ => return Err(close::TOO_BIG),
        };
        // Reassembly limits known from the header alone (the codes are those the payload
        // would have led to).
        match (op, &self.assembling) {
            (ClientOp::Text | ClientOp::Binary, None) if !fin && len > self.max_message => {
                return Err(close::TOO_BIG);
            }
            (ClientOp::Continuation, Some(a))
                if a.data.len() + len > self.max_message || a.fragments + 1 > MAX_FRAGMENTS =>
            {
                return Err(close::TOO_BIG);
            }
            _ => {}
        }
        let mask = [b[size - 4], b[size - 3], b[size - 2], b[size - 1]];
        Ok(Parsed::Header(Header {
            fin,
            op,
            mask,
            size,
            len,
        }))
    }

    /// Handle the complete frame at `pos` and consume it. `Some` ends this `next`.
    fn handle(
        &mut self,
        h: Header,
        on_pong: &mut impl FnMut(&[u8]),
        on_frame: &mut impl FnMut(),
    ) -> Option<Result<Message, u16>> {
        let (start, end) = (self.pos + h.size, self.pos + h.size + h.len);
        unmask(&mut self.buf[start..end], h.mask);
        on_frame();
        match h.op {
            ClientOp::Ping => {
                on_pong(&self.buf[start..end]);
                self.consume(end);
                None
            }
            ClientOp::Pong => {
                self.consume(end);
                None
            }
            ClientOp::Close => {
                let code = close_code(&self.buf[start..end]);
                self.consume(end);
                Some(Err(code.unwrap_or_else(|code| self.fail(code))))
            }
            ClientOp::Text | ClientOp::Binary => {
                let text = h.op == ClientOp::Text;
                if h.fin && text && std::str::from_utf8(&self.buf[start..end]).is_err() {
                    return Some(Err(self.fail(close::INVALID_PAYLOAD)));
                }
                if self.assembling.is_some() {
                    return Some(Err(self.fail(close::PROTOCOL))); // a new message inside one
                }
                if h.fin {
                    let payload = self.take(start, end);
                    return Some(Ok(message(text, payload)));
                }
                let data = self.buf[start..end].to_vec();
                self.consume(end);
                self.assembling = Some(Assembly {
                    text,
                    data,
                    fragments: 1,
                });
                None
            }
            ClientOp::Continuation => {
                let Some(a) = &mut self.assembling else {
                    return Some(Err(self.fail(close::PROTOCOL))); // no message to continue
                };
                a.data.extend_from_slice(&self.buf[start..end]);
                a.fragments += 1;
                self.consume(end);
                if !h.fin {
                    return None;
                }
                let a = self.assembling.take()?;
                if a.text && std::str::from_utf8(&a.data).is_err() {
                    return Some(Err(self.fail(close::INVALID_PAYLOAD)));
                }
                Some(Ok(message(a.text, a.data)))
            }
        }
    }

    /// Read at least one more byte of the frame at `pos`, of which `missing` are still due.
    fn poll_fill(&mut self, cx: &mut Context<'_>, missing: usize) -> Poll<Result<(), u16>> {
        // The unparsed bytes move to the front, so the buffer only grows by what is read.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        with_scratch(|scratch| {
            let mut read = ReadBuf::new(scratch);
            match Pin::new(stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                // A vanished peer, mid-frame or not.
                Poll::Ready(Err(_)) => Poll::Ready(Err(close::NORMAL)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Err(close::NORMAL)),
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    // Room for the whole frame at once when its header is known: a payload
                    // trickling in a byte at a time is then not copied over and over.
                    buf.reserve_exact(missing.max(got.len()));
                    buf.extend_from_slice(got);
                    Poll::Ready(Ok(()))
                }
            }
        })
    }

    /// Consume the buffered bytes up to `end`; free the buffer once it is empty.
    fn consume(&mut self, end: usize) {
        self.pos = end;
        if self.pos == self.buf.len() {
            self.pos = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        }
    }

    /// The payload `start..end` as its own vector, and the frame consumed.
    fn take(&mut self, start: usize, end: usize) -> Vec<u8> {
        if end < self.buf.len() {
            let payload = self.buf[start..end].to_vec();
            self.consume(end);
            return payload;
        }
        // The frame ends the buffered bytes (the usual case: a message per read): the payload
        // keeps the buffer's allocation, which leaves the reader with none.
        let mut payload = std::mem::take(&mut self.buf);
        payload.drain(..start);
        self.pos = 0;
        payload
    }

    /// End reading with `code`: later calls return it again, and the buffers go now.
    fn fail(&mut self, code: u16) -> u16 {
        self.failed = Some(code);
        self.buf = Vec::new();
        self.pos = 0;
        self.assembling = None;
        code
    }
}

fn message(text: bool, payload: Vec<u8>) -> Message {
    if text {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

/// XOR the payload with the client's mask (RFC 6455 5.3), four bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let m = u32::from_ne_bytes(mask);
    let mut words = payload.chunks_exact_mut(4);
    for w in &mut words {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) ^ m;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in words.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// The code to answer a close frame's payload with (`Ok`), or the violation (`Err`), as
/// fastwebsockets' auto-close checked it: a 1-byte payload is 1002, a reason that is not
/// UTF-8 1007, a code no endpoint may send (RFC 6455 7.4) 1002. The client's code is echoed
/// when it is one we may send too, else (and for no code) the answer is 1000.
fn close_code(p: &[u8]) -> Result<u16, u16> {
    match p {
        [] => Ok(close::NORMAL),
        [_] => Err(close::PROTOCOL),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(close::INVALID_PAYLOAD);
            }
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999) {
                return Err(close::PROTOCOL);
            }
            Ok(if matches!(code, 1000..=1003 | 3000..=4999) {
                code
            } else {
                close::NORMAL
            })
        }
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
mod tests;
