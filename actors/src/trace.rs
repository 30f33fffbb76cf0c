//! Following one message across the cluster (OpenTelemetry through `tracing`).
//!
//! Sampling is decided once, at the edge (the socket reader, the HTTP publish): a sampled
//! message carries a [`TraceParent`] from there through the lane, the bus and every node's
//! delivery, and each step opens its span as a child of the one before. An unsampled message,
//! and every message while tracing is off, carries `None`, so each later step costs one
//! `Option` check and opens nothing: spans exist only for the messages a trace will show.
//!
//! This crate only opens spans (target [`TARGET`]) and sets their parents; whether anything is
//! exported is the binary's business (its OpenTelemetry layer listens to that target alone).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span a trace is made of.
pub const TARGET: &str = "chatty::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The sampling ratio's `f64` bits.
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Switch tracing on with the share of messages to sample (0.0..=1.0), or off (`None`).
/// Called once at startup, after the exporter is built.
pub fn configure(ratio: Option<f64>) {
    RATIO.store(ratio.unwrap_or(0.0).to_bits(), Ordering::Relaxed);
    ENABLED.store(ratio.is_some(), Ordering::Relaxed);
}

/// Whether an exporter is listening: a node that is not exporting opens no spans, even for a
/// message another node sampled.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The edge's decision for a message with no trace context of its own.
pub fn sample() -> bool {
    if !enabled() {
        return false;
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
}

/// A sampled span's place in its trace: what the next step's span names as its parent, and
/// what travels on the bus as a W3C `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

impl TraceParent {
    /// Parse a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`): the context and
    /// whether its sender sampled it. All-zero ids and unknown shapes are refused; a later
    /// version's extra fields are ignored, as the W3C spec asks.
    pub fn parse(header: &str) -> Option<(Self, bool)> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        unhex(version, &mut [0u8; 1])?;
        unhex(trace, &mut trace_id)?;
        unhex(span, &mut span_id)?;
        unhex(flags, &mut flag)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some((Self { trace_id, span_id }, flag[0] & 1 == 1))
    }

    /// The W3C `traceparent` of this sampled context.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.span_id);
        s.push_str("-01");
        s
    }

    /// The trace id, as the 32 hex digits logs and trace UIs show.
    pub fn trace_id(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }

    /// The context of `span`, if an OpenTelemetry layer gave it one.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| Self {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
        })
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }
}

/// Make `span` (not yet entered) a child of `parent`, which may live on another node; returns
/// the span's own context for the next step.
pub fn follow(span: &tracing::Span, parent: &TraceParent) -> Option<TraceParent> {
    let cx = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
    let _ = span.set_parent(cx);
    TraceParent::of(span)
}

/// Link `span` to another trace's span (a batch to the messages in it, and back).
pub fn link(span: &tracing::Span, to: &TraceParent) {
    span.add_link(to.span_context());
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Lowercase hex of exactly `out.len()` bytes (W3C forbids uppercase).
fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_refuses_what_w3c_refuses() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (tp, sampled) = TraceParent::parse(h).unwrap();
        assert!(sampled);
        assert_eq!(tp.header(), h);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (_, sampled) =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!sampled);
        // A later version may add fields.
        assert!(TraceParent::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Callers (the HTTP header) and other nodes (the envelope) send any string: parsing
        /// never panics, and whatever parses prints back as the canonical sampled form of the
        /// same ids.
        #[test]
        fn any_string_parses_without_panic_and_what_parses_round_trips(s in ".{0,80}") {
            if let Some((tp, _)) = TraceParent::parse(&s) {
                let (again, sampled) = TraceParent::parse(&tp.header()).unwrap();
                proptest::prop_assert!(sampled);
                proptest::prop_assert_eq!(again, tp);
            }
        }

        #[test]
        fn every_valid_context_round_trips(t in proptest::array::uniform16(proptest::num::u8::ANY),
                                           p in proptest::array::uniform8(proptest::num::u8::ANY)) {
            proptest::prop_assume!(t != [0; 16] && p != [0; 8]);
            let tp = TraceParent { trace_id: t, span_id: p };
            proptest::prop_assert_eq!(TraceParent::parse(&tp.header()), Some((tp, true)));
        }
    }

    #[test]
    fn nothing_is_sampled_while_tracing_is_off() {
        // The only test touching the switch: off by default, and `sample` says no.
        assert!(!enabled());
        assert!(!sample());
    }
}
