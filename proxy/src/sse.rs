//! The zero-copy SSE framer.
//!
//! Bytes go in as the upstream chunked them; what comes out is the same bytes cut at event
//! boundaries (a blank line: `\n\n`, `\r\n\r\n`, `\r\r` or any mix, per the WHATWG SSE
//! grammar). An event that lies wholly inside one chunk is handed out as a `Bytes` slice of
//! that chunk (no copy). Only an event that spans chunks is stitched, into a buffer whose size
//! is capped: an event longer than the cap is a terminal error, never unbounded growth.
//!
//! The framer never looks inside an event beyond line terminators, so `data: ` or `\n\ndata:`
//! inside a JSON string (always escaped as `\n` by JSON) cannot be mistaken for framing, and a
//! multi-byte UTF-8 character split across chunks is simply carried in the pending tail.

use bytes::{Bytes, BytesMut};

/// The framer refused the stream: one event grew past the configured cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an SSE event exceeded {limit} bytes without an event boundary")]
pub struct EventTooLarge {
    /// The configured cap, in bytes.
    pub limit: usize,
}

/// Where the scanner is relative to line structure, carried across chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineState {
    /// True at the start of a line (nothing but a terminator seen since the last terminator).
    at_line_start: bool,
    /// True when the previous byte was `\r`, so a following `\n` belongs to the same terminator.
    after_cr: bool,
    /// True when a chunk ended on the `\r` that closes an event: the event is held until the
    /// next byte shows whether a `\n` belongs to it, so any chunking yields the same events.
    boundary_cr_pending: bool,
}

/// Splits an SSE byte stream into events. One per response.
#[derive(Debug)]
pub struct SseFramer {
    pending: BytesMut,
    state: LineState,
    max_event_bytes: usize,
}

/// What one chunk produced: the complete events in order. `flush` holds the bytes to forward
/// now (the concatenation of those events, a zero-copy slice when no event spanned chunks).
#[derive(Debug, Default)]
pub struct Framed {
    /// Complete events, each including its terminating blank line.
    pub events: Vec<Bytes>,
}

impl Framed {
    /// All complete events, concatenated, as the bytes to forward downstream now.
    pub fn joined(&self) -> Bytes {
        match self.events.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let total = many.iter().map(Bytes::len).sum();
                let mut out = BytesMut::with_capacity(total);
                for e in many {
                    out.extend_from_slice(e);
                }
                out.freeze()
            }
        }
    }
}

impl SseFramer {
    /// A framer whose pending (unterminated) event may grow to `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            state: LineState {
                at_line_start: true,
                after_cr: false,
                boundary_cr_pending: false,
            },
            max_event_bytes,
        }
    }

    /// Bytes of an unterminated event held since the last boundary.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Takes whatever unterminated bytes remain (at end of stream).
    pub fn take_remainder(&mut self) -> Bytes {
        self.state.boundary_cr_pending = false;
        self.pending.split().freeze()
    }

    /// Feeds one chunk and appends each event it completes to `out.events`.
    pub fn push(&mut self, chunk: &Bytes, out: &mut Framed) -> Result<(), EventTooLarge> {
        let mut event_start = 0usize;
        let mut i = 0usize;
        let buf = &chunk[..];
        if self.state.boundary_cr_pending && !buf.is_empty() {
            self.state.boundary_cr_pending = false;
            self.state.after_cr = false;
            if buf[0] == b'\n' {
                event_start = 1;
                i = 1;
            }
            self.emit(chunk, 0, event_start, out);
        }
        while i < buf.len() {
            let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) else {
                // Content up to the end of the chunk: not at a line start any more.
                self.state.at_line_start = false;
                self.state.after_cr = false;
                break;
            };
            let pos = i + off;
            if off > 0 {
                self.state.at_line_start = false;
                self.state.after_cr = false;
            }
            let b = buf[pos];
            i = pos + 1;
            if b == b'\n' && self.state.after_cr {
                // Second half of a CRLF whose CR already counted as the terminator.
                self.state.after_cr = false;
                continue;
            }
            self.state.after_cr = b == b'\r';
            if self.state.at_line_start {
                // A terminator on an empty line: the event ends here.
                let mut end = i;
                if b == b'\r' {
                    match buf.get(i) {
                        Some(b'\n') => {
                            end += 1;
                            i += 1;
                            self.state.after_cr = false;
                        }
                        Some(_) => {}
                        None => {
                            // Wait for the next byte before closing this event.
                            self.state.boundary_cr_pending = true;
                            self.state.at_line_start = true;
                            break;
                        }
                    }
                }
                self.emit(chunk, event_start, end, out);
                event_start = end;
                // A new event starts on a fresh line.
                self.state.at_line_start = true;
            } else {
                self.state.at_line_start = true;
            }
        }
        let tail = &buf[event_start..];
        if !tail.is_empty() {
            if self.pending.len() + tail.len() > self.max_event_bytes {
                return Err(EventTooLarge {
                    limit: self.max_event_bytes,
                });
            }
            self.pending.extend_from_slice(tail);
        }
        Ok(())
    }

    /// True when the held bytes form a complete event awaiting one more byte (see
    /// `boundary_cr_pending`); at end of stream they are a whole event, not a fragment.
    pub fn remainder_is_complete_event(&self) -> bool {
        self.state.boundary_cr_pending
    }

    fn emit(&mut self, chunk: &Bytes, start: usize, end: usize, out: &mut Framed) {
        if start == end && self.pending.is_empty() {
            return;
        }
        if self.pending.is_empty() {
            out.events.push(chunk.slice(start..end));
        } else {
            self.pending.extend_from_slice(&chunk[start..end]);
            out.events.push(self.pending.split().freeze());
        }
    }
}

/// The fields of one SSE event that the inspectors need, borrowed from the event bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The `event:` field, if any.
    pub event: Option<&'a str>,
    /// The `data:` payload: borrowed when the event has one data line, joined when several.
    pub data: std::borrow::Cow<'a, str>,
    /// True when the event carried at least one `data:` line.
    pub has_data: bool,
}

/// The event's bytes were not valid UTF-8: a stream error, never a silent substitution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream sent an SSE event that is not valid UTF-8")]
pub struct InvalidUtf8;

/// Parses the fields of one complete event (as returned by [`SseFramer::push`]).
pub fn parse_event(raw: &[u8]) -> Result<EventFields<'_>, InvalidUtf8> {
    let text = std::str::from_utf8(raw).map_err(|_| InvalidUtf8)?;
    let mut event = None;
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    for line in lines(text) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "event" => event = Some(value),
            "data" => {
                data = Some(match data {
                    None => std::borrow::Cow::Borrowed(value),
                    Some(prev) => {
                        let mut joined = prev.into_owned();
                        joined.push('\n');
                        joined.push_str(value);
                        std::borrow::Cow::Owned(joined)
                    }
                });
            }
            _ => {}
        }
    }
    let has_data = data.is_some();
    Ok(EventFields {
        event,
        data: data.unwrap_or(std::borrow::Cow::Borrowed("")),
        has_data,
    })
}

/// The lines of an event, split at every CR and at every LF as `text.split(['\n', '\r'])`
/// splits it (a CRLF leaves an empty line between its two). Found with `memchr2`:
/// `str::split` on a set of chars decodes each character and compares it with the set,
/// ~4,200 instructions an event of a streamed chat completion, a quarter of the request's.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let raw = text.as_bytes();
    let mut start = 0;
    memchr::memchr2_iter(b'\n', b'\r', raw)
        .chain(std::iter::once(raw.len()))
        .map(move |end| {
            // CR and LF are ASCII: both ends are character boundaries, so `get` never fails.
            let line = text.get(start..end).unwrap_or_default();
            start = end + 1;
            line
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(chunks: &[&[u8]], cap: usize) -> (Vec<Bytes>, Bytes) {
        let mut f = SseFramer::new(cap);
        let mut out = Framed::default();
        for c in chunks {
            f.push(&Bytes::copy_from_slice(c), &mut out)
                .expect("within cap");
        }
        (out.events, f.take_remainder())
    }

    #[test]
    fn splits_on_lf_crlf_and_cr() {
        let (ev, rest) = frame_all(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d"], 1024);
        assert_eq!(
            ev,
            vec![&b"data: a\n\n"[..], b"data: b\r\n\r\n", b"data: c\r\r"]
        );
        assert_eq!(&rest[..], b"data: d");
    }

    #[test]
    fn boundary_split_across_chunks() {
        let (ev, rest) = frame_all(&[b"data: a\r\n", b"\r", b"\ndata: b\n", b"\n"], 1024);
        assert_eq!(ev, vec![&b"data: a\r\n\r\n"[..], b"data: b\n\n"]);
        assert!(rest.is_empty());
    }

    #[test]
    fn single_chunk_events_are_zero_copy() {
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let mut f = SseFramer::new(64);
        let mut out = Framed::default();
        f.push(&chunk, &mut out).expect("within cap");
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.events[0].as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn over_long_event_is_an_error() {
        let mut f = SseFramer::new(8);
        let mut out = Framed::default();
        let err = f.push(&Bytes::from_static(b"data: 0123456789"), &mut out);
        assert_eq!(err, Err(EventTooLarge { limit: 8 }));
    }

    #[test]
    fn parses_fields_and_joins_data_lines() {
        let ev = parse_event(b"event: message_start\ndata: {\"a\":1}\n\n").expect("utf8");
        assert_eq!(ev.event, Some("message_start"));
        assert_eq!(ev.data, "{\"a\":1}");
        let ev = parse_event(b": ping\ndata: x\ndata: y\r\n\r\n").expect("utf8");
        assert_eq!(ev.data, "x\ny");
        assert!(parse_event(b"data: \xff\n\n").is_err());
    }

    #[test]
    fn data_text_inside_json_is_not_framing() {
        let (ev, _) = frame_all(&[b"data: {\"t\":\"x\\n\\ndata: y\"}\n\n"], 1024);
        assert_eq!(ev.len(), 1);
    }

    proptest::proptest! {
        /// Lines are what `str::split` on CR and LF gives, for any text: CR, LF and CRLF
        /// anywhere, empty lines, colons, multi-byte characters.
        #[test]
        fn lines_are_the_text_split_at_each_cr_and_lf(text in "[a:é😀 \r\n]{0,40}") {
            let ours: Vec<&str> = lines(&text).collect();
            let std: Vec<&str> = text.split(['\n', '\r']).collect();
            proptest::prop_assert_eq!(ours, std);
        }
    }
}
