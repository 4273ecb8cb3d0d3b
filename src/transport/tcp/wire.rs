//! The bytes on a TCP link: length-prefixed frames after the handshake, and the handshake's
//! own messages in the same framing.
//!
//! ```text
//! frame   = length: u32 LE (of kind + body, 1..=limit) | kind: u8 | body
//! Data      kind 0x01  seq: u64 | elements: u32 | payload (one encoded batch)
//! End       kind 0x02  seq: u64                  end of stream, in band, takes a seq
//! Ack       kind 0x03  next: u64                 every seq < next is consumed (cumulative)
//! Heartbeat kind 0x04  (empty)
//! Goodbye   kind 0x05  reason: UTF-8             orderly close, the peer logs the reason
//! Stop      kind 0x06  (empty)                   the sender's application is stopping
//! Mark      kind 0x07  seq: u64 | tag: u8 | value: u64
//!                                                a watermark (tag 0, value = its time) or
//!                                                idleness (tag 1, value 0), in band, takes a seq
//! Hello     kind 0x10  see [`Hello`]
//! Refuse    kind 0x11  reason: UTF-8
//! Challenge kind 0x12  nonce: [u8; 32] | proof: [u8; 32]
//! Proof     kind 0x13  proof: [u8; 32]
//! Accept    kind 0x14  resume_from: u64
//! ```
//!
//! All integers are little endian. A frame's length is checked against the receiver's limit
//! ([`DEFAULT_MAX_FRAME_BYTES`] unless configured; [`HANDSHAKE_MAX_BYTES`] for handshake
//! messages) before anything is allocated, and nothing beyond that limit is ever allocated
//! (a buffer that must grow for a frame at most doubles, within the limit). Every body is checked exactly: a wrong size, an unknown kind, a flag that is
//! neither 0 nor 1, text that is not UTF-8 or bytes after the last field are [`WireError`]s.
//! Decoding never panics, whatever the bytes.

use std::io::{self, Read};

use crate::stream::Mark;
use crate::transport::codec::{mark_from_parts, mark_parts};

/// Bytes of the length prefix before every frame.
pub(crate) const HEADER_BYTES: usize = 4;

/// The largest frame (kind + body) a receiver accepts unless configured otherwise: 64 MiB.
pub(crate) const DEFAULT_MAX_FRAME_BYTES: u32 = 64 << 20;

/// The largest handshake message (kind + body) either side accepts, whatever the frame limit:
/// a Hello with three strings at their longest fits, and an unauthenticated peer can make a
/// process allocate no more than this.
pub(crate) const HANDSHAKE_MAX_BYTES: u32 = 64 << 10;

/// The first bytes of every Hello body. It never changes; the version after it does.
pub(crate) const MAGIC: [u8; 8] = *b"IOTSTRM1";

/// The protocol version this build speaks. 2: a frame costs the bound of bytes not
/// acknowledged its payload and `FRAME_COST_BYTES` (1: its payload), so a reader of 2 would
/// refuse a writer of 1 mid-stream; the handshake refuses it at once instead.
pub(crate) const VERSION: u16 = 2;

/// How many bytes [`FrameDecoder::read_from`] asks a reader for at most, in one call.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// The buffer [`FrameDecoder::read_from`] reads into (unless the limit is lower, or a frame
/// needs more): a Data frame of the writers' target payload and a read's room after it, so
/// that a stream of such frames never grows it (512 KiB).
const READ_BUFFER_BYTES: usize =
    (super::TARGET_PAYLOAD_BYTES + DATA_FIXED_BYTES + 1 + HEADER_BYTES + READ_CHUNK_BYTES)
        .next_power_of_two();

/// How many reads in a row (read attempts, a timed-out one included) must fit in
/// [`READ_BUFFER_BYTES`] before a buffer grown for larger frames gives its memory back: a stream of large frames keeps its buffer, one large frame
/// among small ones does not keep it for long.
const SHRINK_AFTER_SMALL_READS: u32 = 64;

const KIND_DATA: u8 = 0x01;
const KIND_END: u8 = 0x02;
const KIND_ACK: u8 = 0x03;
const KIND_HEARTBEAT: u8 = 0x04;
const KIND_GOODBYE: u8 = 0x05;
const KIND_STOP: u8 = 0x06;
const KIND_MARK: u8 = 0x07;
pub(crate) const KIND_HELLO: u8 = 0x10;
const KIND_REFUSE: u8 = 0x11;
const KIND_CHALLENGE: u8 = 0x12;
const KIND_PROOF: u8 = 0x13;
const KIND_ACCEPT: u8 = 0x14;

/// Bytes of a Mark body: seq, tag and value.
const MARK_BODY_BYTES: usize = 8 + 1 + 8;

/// The bytes a Mark frame takes on the wire, length prefix included (22).
pub(crate) const MARK_FRAME_BYTES: usize = HEADER_BYTES + 1 + MARK_BODY_BYTES;

/// Bytes of a Data body before its payload: seq and elements.
const DATA_FIXED_BYTES: usize = 8 + 4;

// A Data frame's fixed part fits any configured limit worth having, and the handshake cap
// leaves room for a Hello's three strings.
const _: () = assert!(HANDSHAKE_MAX_BYTES as usize <= DEFAULT_MAX_FRAME_BYTES as usize);
const _: () = assert!(READ_CHUNK_BYTES <= HANDSHAKE_MAX_BYTES as usize);

/// What a frame or handshake message kind byte names, for error messages.
fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        KIND_DATA => "Data frame",
        KIND_END => "End frame",
        KIND_ACK => "Ack frame",
        KIND_HEARTBEAT => "Heartbeat frame",
        KIND_GOODBYE => "Goodbye frame",
        KIND_STOP => "Stop frame",
        KIND_MARK => "Mark frame",
        KIND_HELLO => "Hello message",
        KIND_REFUSE => "Refuse message",
        KIND_CHALLENGE => "Challenge message",
        KIND_PROOF => "Proof message",
        KIND_ACCEPT => "Accept message",
        _ => return None,
    })
}

/// `name` with its indefinite article: "a Hello message", "an End frame".
pub(crate) fn a(name: &str) -> String {
    match name.as_bytes().first() {
        Some(b'A' | b'E' | b'I' | b'O' | b'U') => format!("an {name}"),
        _ => format!("a {name}"),
    }
}

/// Whether `kind` is one this protocol defines (frame or handshake message).
pub(crate) fn is_known_kind(kind: u8) -> bool {
    kind_name(kind).is_some()
}

/// Bytes a peer sent that break the protocol. Each Display is one sentence naming what was
/// wrong; the connection that sent them is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// A length prefix over the receiver's limit.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The declared length.
        bytes: u32,
        /// The receiver's limit.
        limit: u32,
    },
    /// A length prefix of zero: every frame has at least its kind byte.
    #[error("frame of 0 bytes: every frame has at least a kind byte")]
    Empty,
    /// A kind byte this protocol does not define.
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A known kind where it has no place (a handshake message after the handshake, a frame
    /// during it).
    #[error("{} has no place {place}", a(.what))]
    OutOfPlace {
        /// The kind's name.
        what: &'static str,
        /// Where it came ("after the handshake", "during the handshake").
        place: &'static str,
    },
    /// A body whose size does not fit its kind.
    #[error("{what} with a body of {bytes} bytes, expected {expected}")]
    BadSize {
        /// The kind's name.
        what: &'static str,
        /// The body's size.
        bytes: usize,
        /// What the kind needs ("8", "at least 12").
        expected: &'static str,
    },
    /// A message that ends inside one of its fields.
    #[error("{what} ends inside its {field}")]
    Truncated {
        /// The message's name.
        what: &'static str,
        /// The field cut short.
        field: &'static str,
    },
    /// Bytes after a message's last field.
    #[error("{what} has {bytes} bytes after its last field")]
    Trailing {
        /// The message's name.
        what: &'static str,
        /// How many bytes are left over.
        bytes: usize,
    },
    /// A Mark frame whose tag or value is not a mark's.
    #[error("Mark frame: {detail}")]
    BadMark {
        /// What is wrong, as the codec says it.
        detail: String,
    },
    /// A text field that is not UTF-8.
    #[error("{what}'s {field} is not UTF-8")]
    BadText {
        /// The frame or message's name.
        what: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A flag byte that is neither 0 nor 1.
    #[error("{what}'s {field} flag is {value}, expected 0 or 1")]
    BadFlag {
        /// The message's name.
        what: &'static str,
        /// The field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// The connection closed with part of a frame received.
    #[error("the connection closed inside a frame ({bytes} bytes of it received)")]
    Cut {
        /// Bytes of the unfinished frame received.
        bytes: usize,
    },
}

/// A frame from [`FrameDecoder::next_ref`]: a Data frame's payload borrowed, any other frame
/// decoded.
#[derive(Debug)]
pub(crate) enum FrameRef<'a> {
    /// A Data frame (see [`Frame::Data`]), its payload in the decoder's buffer.
    Data {
        /// The batch's sequence number.
        seq: u64,
        /// How many elements the payload holds.
        elements: u32,
        /// The encoded batch.
        payload: &'a [u8],
    },
    /// Any other frame.
    Other(Frame),
}

/// One frame after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// One encoded batch (see `transport::codec`).
    Data {
        /// The batch's sequence number: one per Data, Mark or End frame, from the writer's first.
        seq: u64,
        /// How many elements the payload holds.
        elements: u32,
        /// The encoded batch.
        payload: Vec<u8>,
    },
    /// End of stream, in band after the last Data frame; it takes a seq of its own.
    End {
        /// Its sequence number.
        seq: u64,
    },
    /// From the reader: every seq below `next` is consumed (cumulative).
    Ack {
        /// The first sequence number not yet consumed.
        next: u64,
    },
    /// Either side, when it has sent nothing for a while: the connection is alive.
    Heartbeat,
    /// Either side, before closing in order; the peer logs the reason.
    Goodbye {
        /// Why the sender closes.
        reason: String,
    },
    /// Either side: the sender's application was asked to stop (Ctrl-C, a failure); the
    /// receiver drains its own side too.
    Stop,
    /// A watermark or idleness, in band between the Data frames around it; it takes a seq and
    /// is acknowledged like them (a frame of no element).
    Mark {
        /// Its sequence number.
        seq: u64,
        /// The mark.
        mark: Mark,
    },
}

/// Appends the length prefix and kind of a message whose body is `body_bytes` long.
///
/// # Panics
/// When kind + body exceed `u32::MAX` bytes: callers split batches far below any frame limit.
fn put_header(out: &mut Vec<u8>, kind: u8, body_bytes: usize) {
    let length = u32::try_from(body_bytes + 1).expect("a frame's length fits in a u32");
    out.extend_from_slice(&length.to_le_bytes());
    out.push(kind);
}

/// Appends `f`, length prefix included, to `out`: several frames go in one write.
pub(crate) fn encode_frame(f: &Frame, out: &mut Vec<u8>) {
    match f {
        Frame::Data {
            seq,
            elements,
            payload,
        } => encode_data(*seq, *elements, payload, out),
        Frame::End { seq } => {
            put_header(out, KIND_END, 8);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Frame::Ack { next } => {
            put_header(out, KIND_ACK, 8);
            out.extend_from_slice(&next.to_le_bytes());
        }
        Frame::Mark { seq, mark } => {
            let (tag, value) = mark_parts(*mark);
            put_header(out, KIND_MARK, MARK_BODY_BYTES);
            out.extend_from_slice(&seq.to_le_bytes());
            out.push(u8::try_from(tag).expect("a mark's tag fits a byte"));
            out.extend_from_slice(&value.to_le_bytes());
        }
        Frame::Heartbeat => put_header(out, KIND_HEARTBEAT, 0),
        Frame::Stop => put_header(out, KIND_STOP, 0),
        Frame::Goodbye { reason } => {
            put_header(out, KIND_GOODBYE, reason.len());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

/// Appends a Data frame from a borrowed payload, without building a [`Frame`] (the hot path).
pub(crate) fn encode_data(seq: u64, elements: u32, payload: &[u8], out: &mut Vec<u8>) {
    data_header(seq, elements, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends the start of a Data frame whose `payload_bytes` of payload the caller appends next
/// (encoding straight into the frame).
pub(crate) fn data_header(seq: u64, elements: u32, payload_bytes: usize, out: &mut Vec<u8>) {
    put_header(out, KIND_DATA, DATA_FIXED_BYTES + payload_bytes);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&elements.to_le_bytes());
}

/// Fixes the length prefix and the element count of `frame`, a whole Data frame (length prefix
/// included), after `added` elements were appended to its payload.
pub(crate) fn data_frame_grown(frame: &mut [u8], added: u32) {
    let length = u32::try_from(frame.len() - HEADER_BYTES).expect("a frame's length fits in a u32");
    frame[..HEADER_BYTES].copy_from_slice(&length.to_le_bytes());
    let at = HEADER_BYTES + 1 + 8;
    let elements = u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
    frame[at..at + 4].copy_from_slice(&(elements + added).to_le_bytes());
}

/// Where a Data frame's seq (`u64` LE) sits, from the frame's first byte.
#[cfg(test)]
pub(crate) const DATA_SEQ_AT: usize = HEADER_BYTES + 1;

/// The bytes a Data frame of `payload_bytes` takes on the wire, length prefix included.
#[cfg(test)]
pub(crate) fn data_frame_bytes(payload_bytes: usize) -> usize {
    HEADER_BYTES + 1 + DATA_FIXED_BYTES + payload_bytes
}

fn u64_body(what: &'static str, body: &[u8]) -> Result<u64, WireError> {
    let bytes: [u8; 8] = body.try_into().map_err(|_| WireError::BadSize {
        what,
        bytes: body.len(),
        expected: "8",
    })?;
    Ok(u64::from_le_bytes(bytes))
}

fn text_body(what: &'static str, field: &'static str, body: &[u8]) -> Result<String, WireError> {
    String::from_utf8(body.to_vec()).map_err(|_| WireError::BadText { what, field })
}

/// Decodes a frame's kind and body (the length prefix already checked and removed).
/// A Data body holds at least its fixed part (seq and elements).
fn data_fixed_fits(body: &[u8]) -> Result<(), WireError> {
    if body.len() < DATA_FIXED_BYTES {
        return Err(WireError::BadSize {
            what: "Data frame",
            bytes: body.len(),
            expected: "at least 12",
        });
    }
    Ok(())
}

fn decode_frame(kind: u8, body: &[u8]) -> Result<Frame, WireError> {
    match kind {
        KIND_DATA => {
            data_fixed_fits(body)?;
            let (fixed, payload) = body.split_at(DATA_FIXED_BYTES);
            let (seq, elements) = fixed.split_at(8);
            Ok(Frame::Data {
                seq: u64::from_le_bytes(seq.try_into().expect("8 bytes")),
                elements: u32::from_le_bytes(elements.try_into().expect("4 bytes")),
                payload: payload.to_vec(),
            })
        }
        KIND_END => Ok(Frame::End {
            seq: u64_body("End frame", body)?,
        }),
        KIND_ACK => Ok(Frame::Ack {
            next: u64_body("Ack frame", body)?,
        }),
        KIND_MARK => {
            let body: &[u8; MARK_BODY_BYTES] = body.try_into().map_err(|_| WireError::BadSize {
                what: "Mark frame",
                bytes: body.len(),
                expected: "17",
            })?;
            let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
            let value = u64::from_le_bytes(body[9..].try_into().expect("8 bytes"));
            let mark = mark_from_parts(u32::from(body[8]), value)
                .map_err(|detail| WireError::BadMark { detail })?;
            Ok(Frame::Mark { seq, mark })
        }
        KIND_HEARTBEAT if body.is_empty() => Ok(Frame::Heartbeat),
        KIND_HEARTBEAT => Err(WireError::BadSize {
            what: "Heartbeat frame",
            bytes: body.len(),
            expected: "0",
        }),
        KIND_STOP if body.is_empty() => Ok(Frame::Stop),
        KIND_STOP => Err(WireError::BadSize {
            what: "Stop frame",
            bytes: body.len(),
            expected: "0",
        }),
        KIND_GOODBYE => Ok(Frame::Goodbye {
            reason: text_body("Goodbye frame", "reason", body)?,
        }),
        other => Err(match kind_name(other) {
            Some(what) => WireError::OutOfPlace {
                what,
                place: "after the handshake",
            },
            None => WireError::UnknownKind { kind: other },
        }),
    }
}

/// Splits frames out of a byte stream, incrementally, holding at most one frame's limit.
///
/// Feed it with [`push`](Self::push) or [`read_from`](Self::read_from), then call
/// [`next`](Self::next) until it returns `Ok(None)` (more bytes needed). It holds at most
/// `max_frame_bytes + 4` bytes, whatever it is fed: `push` takes only what fits, and a length
/// prefix is checked against the limit before the frame's bytes are awaited. An error is final:
/// `next` returns it again, and the connection must be closed.
pub(crate) struct FrameDecoder {
    /// `buf[start..end]` are the bytes not decoded yet; `buf.len()` never exceeds the limit.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame_bytes: u32,
    /// Reads (attempts) and pushes in a row that needed no more than [`READ_BUFFER_BYTES`].
    small_reads: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames (kind + body) longer than `max_frame_bytes`.
    ///
    /// # Panics
    /// When `max_frame_bytes` is 0.
    pub(crate) fn new(max_frame_bytes: u32) -> Self {
        assert!(max_frame_bytes > 0, "a frame limit of 0 admits no frame");
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame_bytes,
            small_reads: 0,
        }
    }

    /// The most bytes the decoder ever holds: the largest frame and its length prefix.
    pub(crate) fn limit_bytes(&self) -> usize {
        self.max_frame_bytes as usize + HEADER_BYTES
    }

    /// Bytes received and not yet returned as frames.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes of memory the decoder's buffer holds (its capacity).
    pub(crate) fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Moves the undecoded bytes to the front of the buffer (`lazy`: only when less than a
    /// read's room is left after them, so that a frame split between reads is not copied at
    /// every read), and gives memory back once large frames have stopped coming
    /// ([`SHRINK_AFTER_SMALL_READS`]): shrunk after each one, the buffer of a stream of frames
    /// a little larger than it was shrunk and grown again at every frame, each a `mremap`
    /// and fresh pages to fault in (a third of a TCP reader's time at 1 KiB elements).
    fn compact(&mut self, lazy: bool) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && (!lazy || self.buf.len() - self.end < READ_CHUNK_BYTES) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end <= READ_CHUNK_BYTES
            && self.buf.len() > READ_BUFFER_BYTES
            && self.small_reads >= SHRINK_AFTER_SMALL_READS
        {
            self.buf.truncate(READ_BUFFER_BYTES);
            self.buf.shrink_to(READ_BUFFER_BYTES);
        }
    }

    /// Makes `buf[end..end + room]` writable; `end + room` is within the limit. A buffer too
    /// small at least doubles (within the limit), so that a large frame read a chunk at a
    /// time grows it a few times, not at every read.
    fn grow_for(&mut self, room: usize) {
        let need = self.end + room;
        debug_assert!(need <= self.limit_bytes());
        if self.buf.len() < need {
            let len = need
                .max(self.buf.len().saturating_mul(2))
                .min(self.limit_bytes());
            self.buf.reserve_exact(len - self.buf.len());
            self.buf.resize(len, 0);
        }
        if self.end - self.start + room > READ_BUFFER_BYTES {
            self.small_reads = 0;
        } else {
            self.small_reads = self.small_reads.saturating_add(1);
        }
    }

    /// Takes as many of `bytes` as fit under the limit and returns how many it took. It takes
    /// at least one byte unless a frame or an error is waiting for [`next`](Self::next).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> usize {
        self.compact(false);
        let take = bytes.len().min(self.limit_bytes() - self.end);
        self.grow_for(take);
        self.buf[self.end..self.end + take].copy_from_slice(&bytes[..take]);
        self.end += take;
        take
    }

    /// One `read` from `r` into the decoder (at most 64 KiB, never past the limit); returns
    /// what `read` returned (0: end of stream).
    ///
    /// # Panics
    /// When the decoder is full: call [`next`](Self::next) until `Ok(None)` before reading.
    pub(crate) fn read_from<R: Read + ?Sized>(&mut self, r: &mut R) -> io::Result<usize> {
        self.compact(true);
        let room = (self.limit_bytes() - self.end).min(READ_CHUNK_BYTES);
        assert!(room > 0, "the frame decoder is full: take its frames first");
        // Room for a few reads, so that the undecoded bytes move to the front rarely.
        let reads = READ_BUFFER_BYTES.min(self.limit_bytes());
        self.grow_for(room.max(reads.saturating_sub(self.end)));
        let n = r.read(&mut self.buf[self.end..self.end + room])?;
        self.end += n.min(room);
        Ok(n)
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    // Not `Iterator::next`: it returns a Result, and `Ok(None)` is not the end.
    #[allow(clippy::should_implement_trait)]
    pub(crate) fn next(&mut self) -> Result<Option<Frame>, WireError> {
        Ok(self.next_ref()?.map(|f| match f {
            FrameRef::Data {
                seq,
                elements,
                payload,
            } => Frame::Data {
                seq,
                elements,
                payload: payload.to_vec(),
            },
            FrameRef::Other(f) => f,
        }))
    }

    /// [`next`](Self::next), with a Data frame's payload borrowed from the decoder's buffer
    /// (valid until the decoder is used again): a reader decodes it from there, uncopied.
    pub(crate) fn next_ref(&mut self) -> Result<Option<FrameRef<'_>>, WireError> {
        let pending = &self.buf[self.start..self.end];
        let Some(header) = pending.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_le_bytes(*header);
        if length == 0 {
            return Err(WireError::Empty);
        }
        if length > self.max_frame_bytes {
            return Err(WireError::TooLarge {
                bytes: length,
                limit: self.max_frame_bytes,
            });
        }
        let total = HEADER_BYTES + length as usize;
        if pending.len() < total {
            return Ok(None);
        }
        let kind = pending[HEADER_BYTES];
        if kind == KIND_DATA {
            let body = &pending[HEADER_BYTES + 1..total];
            data_fixed_fits(body)?;
            let at = self.start + HEADER_BYTES + 1;
            self.start += total;
            let body = &self.buf[at..at + total - HEADER_BYTES - 1];
            let (fixed, payload) = body.split_at(DATA_FIXED_BYTES);
            let (seq, elements) = fixed.split_at(8);
            return Ok(Some(FrameRef::Data {
                seq: u64::from_le_bytes(seq.try_into().expect("8 bytes")),
                elements: u32::from_le_bytes(elements.try_into().expect("4 bytes")),
                payload,
            }));
        }
        let frame = decode_frame(kind, &pending[HEADER_BYTES + 1..total])?;
        self.start += total;
        Ok(Some(FrameRef::Other(frame)))
    }

    /// At the end of the stream: an error if part of a frame is left.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.buffered_bytes() {
            0 => Ok(()),
            bytes => Err(WireError::Cut { bytes }),
        }
    }
}

/// The client's first message: who it is, what it sends, and its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// Always [`MAGIC`]: a peer whose first bytes are not these is not iotstream.
    pub(crate) magic: [u8; 8],
    /// The client's protocol version ([`VERSION`]).
    pub(crate) version: u16,
    /// The application's name.
    pub(crate) app: String,
    /// A digest of the deployment, computed by the caller: both sides run the same one.
    pub(crate) deployment: [u8; 32],
    /// The edge's index in the application's graph.
    pub(crate) edge: u32,
    /// The link's label, as "sensor.out -> detector.in".
    pub(crate) link: String,
    /// The element type's name.
    pub(crate) type_name: String,
    /// The element type's fingerprint (layout and encoding).
    pub(crate) type_fingerprint: u64,
    /// Which incarnation of the writing process this is (restarts count up).
    pub(crate) writer_epoch: u64,
    /// Whether the client has a secret (false: the deployment says `insecure = true`). The
    /// client handshake sets it from its secret.
    pub(crate) authenticated: bool,
    /// The client's fresh nonce; the client handshake draws it.
    pub(crate) nonce: [u8; 32],
}

/// A handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Client → server, first.
    Hello(Hello),
    /// Either side: the connection is refused, and why.
    Refuse {
        /// Why, one sentence.
        reason: String,
    },
    /// Server → client: its nonce, and its proof of the secret (zeros without one).
    Challenge {
        /// The server's fresh nonce.
        nonce: [u8; 32],
        /// HMAC over the server label, the Hello and this nonce.
        proof: [u8; 32],
    },
    /// Client → server: its proof of the secret (zeros without one).
    Proof {
        /// HMAC over the client label, the Hello and the server's nonce.
        proof: [u8; 32],
    },
    /// Server → client: accepted; the reader expects this seq next.
    Accept {
        /// The first seq the reader has not consumed.
        resume_from: u64,
    },
}

impl Message {
    /// The message's name, for error messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello message",
            Message::Refuse { .. } => "Refuse message",
            Message::Challenge { .. } => "Challenge message",
            Message::Proof { .. } => "Proof message",
            Message::Accept { .. } => "Accept message",
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("a Hello string is shorter than 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Hello {
    /// Appends the Hello's body (what the proofs cover): magic, version, then the fields in
    /// declaration order; strings as `u16` length + UTF-8, the flag as one byte.
    ///
    /// # Panics
    /// When a string is 64 KiB or longer.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        put_str(out, &self.app);
        out.extend_from_slice(&self.deployment);
        out.extend_from_slice(&self.edge.to_le_bytes());
        put_str(out, &self.link);
        put_str(out, &self.type_name);
        out.extend_from_slice(&self.type_fingerprint.to_le_bytes());
        out.extend_from_slice(&self.writer_epoch.to_le_bytes());
        out.push(u8::from(self.authenticated));
        out.extend_from_slice(&self.nonce);
    }

    /// Decodes a Hello body, exactly (see [`encode_body`](Self::encode_body)).
    pub(crate) fn decode_body(body: &[u8]) -> Result<Hello, WireError> {
        let mut r = Fields {
            what: "Hello message",
            rest: body,
        };
        let hello = Hello {
            magic: r.array("magic")?,
            version: u16::from_le_bytes(r.array("version")?),
            app: r.string("application name")?,
            deployment: r.array("deployment digest")?,
            edge: u32::from_le_bytes(r.array("edge")?),
            link: r.string("link label")?,
            type_name: r.string("type name")?,
            type_fingerprint: u64::from_le_bytes(r.array("type fingerprint")?),
            writer_epoch: u64::from_le_bytes(r.array("writer epoch")?),
            authenticated: r.flag("authenticated")?,
            nonce: r.array("nonce")?,
        };
        r.end()?;
        Ok(hello)
    }
}

/// Reads a message body's fields in order, naming the one that is cut short.
struct Fields<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl Fields<'_> {
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(WireError::Truncated {
                what: self.what,
                field,
            });
        };
        self.rest = rest;
        Ok(*head)
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = u16::from_le_bytes(self.array(field)?) as usize;
        if self.rest.len() < len {
            return Err(WireError::Truncated {
                what: self.what,
                field,
            });
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        text_body(self.what, field, bytes)
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.array::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::BadFlag {
                what: self.what,
                field,
                value,
            }),
        }
    }

    fn end(&self) -> Result<(), WireError> {
        match self.rest.len() {
            0 => Ok(()),
            bytes => Err(WireError::Trailing {
                what: self.what,
                bytes,
            }),
        }
    }
}

/// Appends `m`, length prefix included, to `out`.
pub(crate) fn encode_message(m: &Message, out: &mut Vec<u8>) {
    let at = out.len();
    match m {
        Message::Hello(hello) => {
            out.extend_from_slice(&[0; HEADER_BYTES + 1]);
            hello.encode_body(out);
            let length = u32::try_from(out.len() - at - HEADER_BYTES).expect("a Hello is small");
            out[at..at + HEADER_BYTES].copy_from_slice(&length.to_le_bytes());
            out[at + HEADER_BYTES] = KIND_HELLO;
        }
        Message::Refuse { reason } => {
            put_header(out, KIND_REFUSE, reason.len());
            out.extend_from_slice(reason.as_bytes());
        }
        Message::Challenge { nonce, proof } => {
            put_header(out, KIND_CHALLENGE, 64);
            out.extend_from_slice(nonce);
            out.extend_from_slice(proof);
        }
        Message::Proof { proof } => {
            put_header(out, KIND_PROOF, 32);
            out.extend_from_slice(proof);
        }
        Message::Accept { resume_from } => {
            put_header(out, KIND_ACCEPT, 8);
            out.extend_from_slice(&resume_from.to_le_bytes());
        }
    }
}

/// Decodes a handshake message's kind and body (the length prefix already checked).
pub(crate) fn decode_message(kind: u8, body: &[u8]) -> Result<Message, WireError> {
    let exact = |what: &'static str, expected: &'static str, n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(WireError::BadSize {
                what,
                bytes: body.len(),
                expected,
            })
        }
    };
    match kind {
        KIND_HELLO => Ok(Message::Hello(Hello::decode_body(body)?)),
        KIND_REFUSE => Ok(Message::Refuse {
            reason: text_body("Refuse message", "reason", body)?,
        }),
        KIND_CHALLENGE => {
            exact("Challenge message", "64", 64)?;
            let (nonce, proof) = body.split_at(32);
            Ok(Message::Challenge {
                nonce: nonce.try_into().expect("32 bytes"),
                proof: proof.try_into().expect("32 bytes"),
            })
        }
        KIND_PROOF => {
            exact("Proof message", "32", 32)?;
            Ok(Message::Proof {
                proof: body.try_into().expect("32 bytes"),
            })
        }
        KIND_ACCEPT => Ok(Message::Accept {
            resume_from: u64_body("Accept message", body)?,
        }),
        other => Err(match kind_name(other) {
            Some(what) => WireError::OutOfPlace {
                what,
                place: "during the handshake",
            },
            None => WireError::UnknownKind { kind: other },
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A Hello with every field set to something recognisable.
    pub(crate) fn sample_hello() -> Hello {
        Hello {
            magic: MAGIC,
            version: VERSION,
            app: "plant".into(),
            deployment: [7; 32],
            edge: 3,
            link: "sensor.out -> detector.in".into(),
            type_name: "f64".into(),
            type_fingerprint: 0x0123_4567_89ab_cdef,
            writer_epoch: 2,
            authenticated: true,
            nonce: [9; 32],
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Data {
                seq: 41,
                elements: 3,
                payload: vec![1, 2, 3, 4, 5],
            },
            Frame::Data {
                seq: u64::MAX,
                elements: 0,
                payload: vec![],
            },
            Frame::End { seq: 42 },
            Frame::Mark {
                seq: 43,
                mark: Mark::Watermark(1_700_000_000_000),
            },
            Frame::Mark {
                seq: 44,
                mark: Mark::Idle,
            },
            Frame::Ack { next: 17 },
            Frame::Heartbeat,
            Frame::Stop,
            Frame::Goodbye {
                reason: "the run is over — ünïcode".into(),
            },
            Frame::Goodbye {
                reason: String::new(),
            },
        ]
    }

    fn decode_all(d: &mut FrameDecoder) -> Result<Vec<Frame>, WireError> {
        let mut frames = Vec::new();
        while let Some(f) = d.next()? {
            frames.push(f);
        }
        Ok(frames)
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, WireError> {
        let mut d = FrameDecoder::new(1024);
        assert_eq!(d.push(bytes), bytes.len());
        d.next()
    }

    #[test]
    fn every_frame_round_trips_in_one_write() {
        let frames = all_frames();
        let mut out = Vec::new();
        for f in &frames {
            encode_frame(f, &mut out);
        }
        let mut d = FrameDecoder::default();
        assert_eq!(d.push(&out), out.len());
        assert_eq!(decode_all(&mut d).unwrap(), frames);
        assert_eq!(d.buffered_bytes(), 0);
        d.finish().unwrap();
    }

    #[test]
    fn data_from_a_borrowed_payload_is_the_same_bytes() {
        let mut a = Vec::new();
        encode_data(5, 2, b"payload", &mut a);
        let mut b = Vec::new();
        encode_frame(
            &Frame::Data {
                seq: 5,
                elements: 2,
                payload: b"payload".to_vec(),
            },
            &mut b,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), data_frame_bytes(7));
        assert_eq!(&a[DATA_SEQ_AT..DATA_SEQ_AT + 8], &5u64.to_le_bytes());
        assert_eq!(&a[..5], &[20, 0, 0, 0, KIND_DATA]);
    }

    #[test]
    fn frames_arrive_byte_by_byte_through_read_from() {
        struct OneByte(std::io::Cursor<Vec<u8>>);
        impl Read for OneByte {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut out = Vec::new();
        for f in all_frames() {
            encode_frame(&f, &mut out);
        }
        let mut r = OneByte(std::io::Cursor::new(out));
        let mut d = FrameDecoder::new(64);
        let mut frames = Vec::new();
        while d.read_from(&mut r).unwrap() > 0 {
            frames.extend(decode_all(&mut d).unwrap());
        }
        d.finish().unwrap();
        assert_eq!(frames, all_frames());
    }

    #[test]
    fn bad_frames_are_errors_naming_what_was_wrong() {
        let text = |bytes: &[u8]| decode_one(bytes).unwrap_err().to_string();
        let mut d = FrameDecoder::default();
        d.push(&[0xff; 4]);
        assert_eq!(
            d.next().unwrap_err().to_string(),
            "frame of 4294967295 bytes exceeds the limit of 67108864"
        );
        assert_eq!(
            d.next().unwrap_err().to_string(),
            "frame of 4294967295 bytes exceeds the limit of 67108864",
            "an error is final"
        );
        assert_eq!(
            text(&[0, 0, 0, 0]),
            "frame of 0 bytes: every frame has at least a kind byte"
        );
        assert_eq!(text(&[1, 0, 0, 0, 0x7f]), "unknown frame kind 0x7f");
        assert_eq!(
            text(&[1, 0, 0, 0, KIND_HELLO]),
            "a Hello message has no place after the handshake"
        );
        assert_eq!(
            text(&[4, 0, 0, 0, KIND_ACK, 1, 2, 3]),
            "Ack frame with a body of 3 bytes, expected 8"
        );
        assert_eq!(
            text(&[10, 0, 0, 0, KIND_END, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            "End frame with a body of 9 bytes, expected 8"
        );
        assert_eq!(
            text(&[6, 0, 0, 0, KIND_DATA, 1, 2, 3, 4, 5]),
            "Data frame with a body of 5 bytes, expected at least 12"
        );
        let mut mark = Vec::new();
        encode_frame(
            &Frame::Mark {
                seq: 1,
                mark: Mark::Idle,
            },
            &mut mark,
        );
        assert_eq!(mark.len(), MARK_FRAME_BYTES);
        let mut short = mark[..mark.len() - 1].to_vec();
        short[0] -= 1;
        assert_eq!(
            text(&short),
            "Mark frame with a body of 16 bytes, expected 17"
        );
        let mut tag = mark.clone();
        tag[5 + 8] = 2;
        assert_eq!(
            text(&tag),
            "Mark frame: a mark with tag 2, neither 0 (watermark) nor 1 (idle)"
        );
        let mut idle = mark.clone();
        idle[5 + 9] = 5;
        assert_eq!(
            text(&idle),
            "Mark frame: an idleness mark carries a value (5), not 0"
        );
        assert_eq!(
            text(&[2, 0, 0, 0, KIND_HEARTBEAT, 0]),
            "Heartbeat frame with a body of 1 bytes, expected 0"
        );
        assert_eq!(
            text(&[2, 0, 0, 0, KIND_STOP, 0]),
            "Stop frame with a body of 1 bytes, expected 0"
        );
        assert_eq!(
            text(&[3, 0, 0, 0, KIND_GOODBYE, 0xc3, 0x28]),
            "Goodbye frame's reason is not UTF-8"
        );
        let mut d = FrameDecoder::new(16);
        d.push(&[17, 0, 0, 0]);
        assert_eq!(
            d.next().unwrap_err().to_string(),
            "frame of 17 bytes exceeds the limit of 16",
            "refused from its length alone, before its bytes come"
        );
        let mut d = FrameDecoder::default();
        d.push(&[9, 0, 0, 0, KIND_END, 1]);
        assert_eq!(d.next(), Ok(None));
        assert_eq!(
            d.finish().unwrap_err().to_string(),
            "the connection closed inside a frame (6 bytes of it received)"
        );
    }

    #[test]
    fn a_declared_length_reserves_nothing_before_its_bytes_come() {
        let mut d = FrameDecoder::default();
        let mut header = (60u32 << 20).to_le_bytes().to_vec();
        header.extend_from_slice(&[KIND_DATA, 1, 2, 3]);
        d.push(&header);
        assert_eq!(
            d.next(),
            Ok(None),
            "a 60 MiB frame, under the limit, is awaited"
        );
        assert!(d.held_bytes() <= 64, "held {}", d.held_bytes());
    }

    /// Reads `frames` through `read_from` as a socket would hand them over (at most 64 KiB a
    /// read), decoding as it goes; returns how many times the buffer was reallocated.
    fn buffer_moves_reading(d: &mut FrameDecoder, frames: &[u8]) -> usize {
        struct Socket<'a>(&'a [u8]);
        impl Read for Socket<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(64 << 10);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut socket = Socket(frames);
        let mut moves = 0;
        let mut held = (d.buf.as_ptr(), d.buf.capacity());
        while d.read_from(&mut socket).unwrap() > 0 {
            if (d.buf.as_ptr(), d.buf.capacity()) != held {
                moves += 1;
                held = (d.buf.as_ptr(), d.buf.capacity());
            }
            decode_all(d).unwrap();
        }
        assert_eq!(d.buffered_bytes(), 0);
        moves
    }

    #[test]
    fn a_stream_of_frames_reuses_one_buffer_and_a_large_frame_gives_its_memory_back() {
        // A writer's frames carry up to its target payload; with 1 KiB elements they are a
        // little more than 256 KiB long with their headers.
        let mut frames = Vec::new();
        let payload = vec![7u8; super::super::TARGET_PAYLOAD_BYTES];
        for seq in 0..200 {
            encode_data(seq, 256, &payload, &mut frames);
        }
        let mut d = FrameDecoder::default();
        let moves = buffer_moves_reading(&mut d, &frames);
        // Before: grown past 256 KiB at each frame and shrunk back after it (400 moves).
        assert!(moves <= 2, "the buffer moved {moves} times for 200 frames");
        assert!(d.held_bytes() <= READ_BUFFER_BYTES);

        // Frames of 1 MiB: the buffer doubles up to them, then keeps its size while they come.
        let mut large = Vec::new();
        let payload = vec![9u8; 1 << 20];
        for seq in 0..50 {
            encode_data(seq, 1, &payload, &mut large);
        }
        let moves = buffer_moves_reading(&mut d, &large);
        assert!(
            moves <= 3,
            "the buffer moved {moves} times for 50 large frames"
        );
        assert!(d.held_bytes() > 1 << 20);

        // Small frames again: the memory of the large ones goes back.
        let mut small = Vec::new();
        // Enough for twice the reads it waits for (four frames a read).
        for seq in 0..(8 * SHRINK_AFTER_SMALL_READS as u64) {
            encode_data(seq, 1, &[1u8; 16 << 10], &mut small);
        }
        buffer_moves_reading(&mut d, &small);
        assert_eq!(d.held_bytes(), READ_BUFFER_BYTES);
    }

    #[test]
    fn push_takes_only_what_fits_the_limit() {
        let mut out = Vec::new();
        for seq in 0..10 {
            encode_data(seq, 1, &[seq as u8; 20], &mut out);
        }
        // A frame here is 37 bytes; the decoder holds at most 33 + 4.
        let mut d = FrameDecoder::new(33);
        let mut rest = &out[..];
        let mut seqs = Vec::new();
        while !rest.is_empty() {
            let n = d.push(rest);
            assert!(n > 0);
            assert!(d.buffered_bytes() <= 37);
            rest = &rest[n..];
            for f in decode_all(&mut d).unwrap() {
                let Frame::Data { seq, payload, .. } = f else {
                    panic!("{f:?}")
                };
                assert_eq!(payload, vec![seq as u8; 20]);
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        assert!(d.held_bytes() <= 37, "held {}", d.held_bytes());
    }

    #[test]
    fn every_message_round_trips() {
        let mut insecure = sample_hello();
        insecure.authenticated = false;
        insecure.app = String::new();
        let messages = vec![
            Message::Hello(sample_hello()),
            Message::Hello(insecure),
            Message::Refuse {
                reason: "wrong application".into(),
            },
            Message::Challenge {
                nonce: [1; 32],
                proof: [2; 32],
            },
            Message::Proof { proof: [3; 32] },
            Message::Accept { resume_from: 99 },
        ];
        for m in messages {
            let mut out = Vec::new();
            encode_message(&m, &mut out);
            let length = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
            assert_eq!(length + HEADER_BYTES, out.len(), "{}", m.name());
            assert_eq!(decode_message(out[4], &out[5..]).unwrap(), m);
        }
    }

    #[test]
    fn bad_messages_are_errors_naming_what_was_wrong() {
        let text = |kind: u8, body: &[u8]| decode_message(kind, body).unwrap_err().to_string();
        let mut hello = Vec::new();
        sample_hello().encode_body(&mut hello);
        assert_eq!(
            text(KIND_HELLO, &hello[..14]),
            "Hello message ends inside its application name"
        );
        assert_eq!(
            text(KIND_HELLO, &hello[..hello.len() - 1]),
            "Hello message ends inside its nonce"
        );
        let mut long = hello.clone();
        long.push(0);
        assert_eq!(
            text(KIND_HELLO, &long),
            "Hello message has 1 bytes after its last field"
        );
        let flag_at = hello.len() - 33;
        let mut flag = hello.clone();
        flag[flag_at] = 7;
        assert_eq!(
            text(KIND_HELLO, &flag),
            "Hello message's authenticated flag is 7, expected 0 or 1"
        );
        let mut utf8 = hello.clone();
        utf8[12] = 0xff; // the application name's first byte
        assert_eq!(
            text(KIND_HELLO, &utf8),
            "Hello message's application name is not UTF-8"
        );
        assert_eq!(
            text(KIND_PROOF, &[0; 31]),
            "Proof message with a body of 31 bytes, expected 32"
        );
        assert_eq!(
            text(KIND_CHALLENGE, &[0; 65]),
            "Challenge message with a body of 65 bytes, expected 64"
        );
        assert_eq!(
            text(KIND_ACCEPT, &[]),
            "Accept message with a body of 0 bytes, expected 8"
        );
        assert_eq!(
            text(KIND_DATA, &[]),
            "a Data frame has no place during the handshake"
        );
        assert_eq!(text(0xee, &[]), "unknown frame kind 0xee");
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..80)
            )
                .prop_map(|(seq, elements, payload)| Frame::Data {
                    seq,
                    elements,
                    payload
                }),
            any::<u64>().prop_map(|seq| Frame::End { seq }),
            (
                any::<u64>(),
                prop_oneof![any::<u64>().prop_map(Mark::Watermark), Just(Mark::Idle)]
            )
                .prop_map(|(seq, mark)| Frame::Mark { seq, mark }),
            any::<u64>().prop_map(|next| Frame::Ack { next }),
            Just(Frame::Heartbeat),
            Just(Frame::Stop),
            ".{0,20}".prop_map(|reason| Frame::Goodbye { reason }),
        ]
    }

    /// Feeds `bytes` in chunks of the given sizes (cycled), checking the memory bound after
    /// every push; returns the frames, or the first error.
    fn feed(max: u32, bytes: &[u8], chunks: &[usize]) -> Result<Vec<Frame>, WireError> {
        let mut d = FrameDecoder::new(max);
        let mut frames = Vec::new();
        let mut rest = bytes;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let want = (*sizes.next().unwrap()).min(rest.len());
            let n = d.push(&rest[..want]);
            assert!(d.held_bytes() <= max as usize + HEADER_BYTES);
            rest = &rest[n..];
            frames.extend(decode_all(&mut d)?);
            // A push takes something unless a frame or an error waits, and next took those.
            assert!(n > 0 || want == 0);
        }
        d.finish()?;
        Ok(frames)
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(
            frames in prop::collection::vec(arb_frame(), 0..12),
            chunks in prop::collection::vec(1usize..50, 1..6),
        ) {
            let mut out = Vec::new();
            for f in &frames {
                encode_frame(f, &mut out);
            }
            prop_assert_eq!(feed(200, &out, &chunks).unwrap(), frames);
        }

        #[test]
        fn random_bytes_decode_or_fail_within_the_limit(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            max in 1u32..300,
            chunks in prop::collection::vec(1usize..100, 1..6),
        ) {
            let _ = feed(max, &bytes, &chunks);
        }

        #[test]
        fn mutated_frames_decode_or_fail_within_the_limit(
            frames in prop::collection::vec(arb_frame(), 1..8),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            max in 13u32..150,
            chunks in prop::collection::vec(1usize..64, 1..4),
        ) {
            let mut out = Vec::new();
            for f in &frames {
                encode_frame(f, &mut out);
            }
            for (at, byte, how) in edits {
                let i = at.index(out.len().max(1));
                match how {
                    0 if i < out.len() => out[i] = byte,
                    1 => out.insert(i.min(out.len()), byte),
                    _ => out.truncate(i),
                }
            }
            let _ = feed(max, &out, &chunks);
        }

        #[test]
        fn random_message_bodies_decode_or_fail(
            kind in any::<u8>(),
            body in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = decode_message(kind, &body);
        }
    }
}
