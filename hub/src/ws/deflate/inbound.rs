//! Compressed client frames, inflated before tungstenite reads them.
//!
//! tungstenite knows no extensions: it fails any frame with a reserved bit set. So the bytes a
//! client sends pass through [`Inbound`] first, a state machine with no I/O of its own (the
//! stream around it is [`super::Inflating`]). Frames of a compressed message (the first with RSV1,
//! its continuations) come out as the same frames with RSV1 clear and the payload inflated;
//! every other frame goes through untouched, so tungstenite still judges everything else
//! exactly as before, RSV1 where it has no meaning (a control frame, a continuation) included.
//!
//! The hub negotiates `client_no_context_takeover`, so each message inflates on its own: an
//! inflater lives only while a compressed message is arriving.

use std::io::Cursor;

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// What section 7.2.2 of RFC 7692 has the sender strip from the end of each message, and the
/// receiver put back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why the client's frames cannot be read on: each ends the connection with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// A compressed frame, or the message it inflates to, over the size limit: 1009.
    #[error("a compressed message inflates past the size limit")]
    TooBig,
    /// Compressed data that does not inflate: 1007.
    #[error("a compressed message does not inflate")]
    NotInflatable,
}

/// The rewriting of one connection's client frames.
pub struct Inbound {
    /// Bytes read from the client and not yet looked at: at most one frame's worth, since a
    /// frame is taken as soon as it is whole.
    input: BytesMut,
    /// Bytes ready for tungstenite.
    output: BytesMut,
    /// How much of the current frame is still to go through untouched.
    passing: u64,
    /// The inflater of the compressed message arriving; between messages, kept only with
    /// `keep_inflater`. Boxed: an inflater is 150 bytes (and its window 32 KiB once used),
    /// which a hub connection between messages need not carry.
    message: Option<Box<Message>>,
    /// Whether a compressed message is under way: its first frame came, its final one not yet.
    in_message: bool,
    /// Keep the inflater between messages, reset, rather than make one per message: for a
    /// client that receives thousands of compressed messages (a load generator), not for the
    /// hub, whose clients send a `ping` now and then.
    keep_inflater: bool,
    /// Set when a frame header does not parse: from then on every byte goes through, and
    /// tungstenite names the protocol error as it would have without the extension.
    opaque: bool,
    /// The largest client frame, and message once inflated, in bytes.
    limit: usize,
    /// Set when the frames cannot be read on; the bytes before it are still delivered.
    fault: Option<Fault>,
}

/// A compressed message part-way through.
struct Message {
    /// Raw deflate (no zlib header), fresh for this message.
    inflater: Decompress,
}

impl Inbound {
    /// Frames of at most `limit` bytes, and messages that inflate to at most that; an
    /// inflater is made for each compressed message and dropped after it.
    pub fn new(limit: usize) -> Self {
        Self {
            input: BytesMut::new(),
            output: BytesMut::new(),
            passing: 0,
            message: None,
            in_message: false,
            keep_inflater: false,
            opaque: false,
            limit,
            fault: None,
        }
    }

    /// [`Inbound::new`], keeping one inflater for every message (see `keep_inflater`).
    pub fn keeping_inflater(limit: usize) -> Self {
        Self {
            keep_inflater: true,
            ..Self::new(limit)
        }
    }

    /// Takes bytes the client sent.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.fault.is_some() {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Whether bytes are ready for tungstenite.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Up to `max` of the bytes ready for tungstenite. Once everything ready is taken, the next
    /// compressed frame already received is inflated: one at a time, so that a read full of
    /// tiny frames that each inflate to 64 KiB makes the hub hold one of them, not all.
    pub fn take(&mut self, max: usize) -> BytesMut {
        let taken = self.output.split_to(max.min(self.output.len()));
        if self.output.is_empty() {
            self.process();
            self.release_buffers();
        }
        taken
    }

    /// Why the client's frames cannot be read on, once the output before it is taken.
    pub fn fault(&self) -> Option<Fault> {
        self.fault.filter(|_| self.output.is_empty())
    }

    /// Frees the buffers once everything taken in has been handed on, so that a connection
    /// between messages (nearly always) holds none: with thousands of panels, a few hundred
    /// bytes each add up.
    fn release_buffers(&mut self) {
        if self.input.is_empty() && self.output.is_empty() {
            self.input = BytesMut::new();
            self.output = BytesMut::new();
        }
    }

    fn process(&mut self) {
        loop {
            if self.opaque {
                let all = self.input.split();
                self.output.unsplit(all);
                return;
            }
            if self.passing > 0 {
                let take = usize::try_from(self.passing)
                    .unwrap_or(usize::MAX)
                    .min(self.input.len());
                let part = self.input.split_to(take);
                self.output.unsplit(part);
                self.passing -= take as u64;
                if self.passing > 0 {
                    return;
                }
                continue;
            }
            let mut cursor = Cursor::new(&self.input[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return,
                Err(_) => {
                    self.opaque = true;
                    continue;
                }
            };
            let header_length = cursor.position() as usize;
            if !self.compressed(&header) {
                self.passing = (header_length as u64).saturating_add(length);
                continue;
            }
            if !self.output.is_empty() {
                // One inflated frame waits at a time (see `take`).
                return;
            }
            if length > self.limit as u64 {
                self.fault = Some(Fault::TooBig);
                return;
            }
            let frame_length =
                header_length.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
            if self.input.len() < frame_length {
                return;
            }
            let mut frame = self.input.split_to(frame_length);
            frame.advance(header_length);
            if let Some(mask) = header.mask {
                unmask(&mut frame, mask);
            }
            if let Err(fault) = self.inflate(header, &frame) {
                self.fault = Some(fault);
                return;
            }
        }
    }

    /// Whether a frame with this header is part of a compressed message: the first frame of a
    /// data message with RSV1, or a continuation (RSV1 clear, section 6.1) of one under way.
    /// Anything else goes through as it is.
    fn compressed(&self, header: &FrameHeader) -> bool {
        match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) => header.rsv1 && !self.in_message,
            OpCode::Data(Data::Continue) => !header.rsv1 && self.in_message,
            _ => false,
        }
    }

    /// Inflates one frame's payload, and writes it out as the same frame, uncompressed.
    fn inflate(&mut self, header: FrameHeader, payload: &[u8]) -> Result<(), Fault> {
        let message = self.message.get_or_insert_with(|| {
            Box::new(Message {
                inflater: Decompress::new(false),
            })
        });
        self.in_message = true;
        let already = usize::try_from(message.inflater.total_out()).unwrap_or(usize::MAX);
        let budget = self.limit.saturating_sub(already);
        let mut inflated = Vec::with_capacity(budget.min(4 * payload.len() + 64) + 1);
        inflate_into(&mut message.inflater, payload, &mut inflated, budget)?;
        if header.is_final {
            inflate_into(&mut message.inflater, &TAIL, &mut inflated, budget)?;
            self.in_message = false;
            if self.keep_inflater {
                // Fresh for the next message (no context takeover), window and all kept.
                message.inflater.reset(false);
            } else {
                self.message = None;
            }
        }
        let plain = FrameHeader {
            rsv1: false,
            // Masked as it came, with a key that leaves the payload as it is: tungstenite
            // requires client frames to be masked.
            mask: header.mask.map(|_| [0; 4]),
            ..header
        };
        let mut head = Vec::with_capacity(14);
        // Writing to a Vec cannot fail.
        let _ = plain.format(inflated.len() as u64, &mut head);
        self.output.put_slice(&head);
        self.output.put_slice(&inflated);
        Ok(())
    }
}

/// Inflates all of `input` onto `output`, which may grow to `budget` bytes and no further.
fn inflate_into(
    inflater: &mut Decompress,
    mut input: &[u8],
    output: &mut Vec<u8>,
    budget: usize,
) -> Result<(), Fault> {
    loop {
        if output.len() == output.capacity() {
            if output.len() > budget {
                return Err(Fault::TooBig);
            }
            // One byte past the budget, so that reaching it tells "too big" from "just fits".
            let room = (budget.saturating_add(1) - output.len()).min(output.len().max(1024));
            output.reserve_exact(room);
        }
        let before = inflater.total_in();
        let status = inflater
            .decompress_vec(input, output, FlushDecompress::Sync)
            .map_err(|_| Fault::NotInflatable)?;
        let used = usize::try_from(inflater.total_in() - before).unwrap_or(usize::MAX);
        input = &input[used..];
        if output.len() > budget {
            return Err(Fault::TooBig);
        }
        match status {
            // A final deflate block (BFINAL, which section 7.2.3.3 allows a sender to set):
            // the message is whole. What follows it (the empty block a sender may still flush,
            // the tail put back) carries nothing, and is let be, as zlib's own readers do.
            Status::StreamEnd => return Ok(()),
            // All input taken, and room left over: nothing more is coming out of it.
            _ if input.is_empty() && output.len() < output.capacity() => return Ok(()),
            // Room ran out, or the inflater wants more of its input: go round again.
            Status::Ok | Status::BufError => {
                if used == 0 && output.len() < output.capacity() {
                    // No progress with room to spare: the data is broken.
                    return Err(Fault::NotInflatable);
                }
            }
        }
    }
}

/// Undoes a client frame's mask (RFC 6455 section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;

    const LIMIT: usize = 64 * 1024;

    /// What a client sends: `text` deflated on its own, the tail taken off.
    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        compress
            .compress_vec(text, &mut out, FlushCompress::Sync)
            .expect("compress");
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    fn frame(opcode: OpCode, rsv1: bool, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let header = FrameHeader {
            is_final,
            rsv1,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut bytes = Vec::new();
        header
            .format(payload.len() as u64, &mut bytes)
            .expect("format");
        let mut masked = payload.to_vec();
        unmask(&mut masked, mask);
        bytes.extend_from_slice(&masked);
        bytes
    }

    /// Everything ready for tungstenite, taken as tungstenite would, whatever the size.
    fn take_all(inbound: &mut Inbound) -> Vec<u8> {
        let mut bytes = Vec::new();
        while inbound.has_output() {
            bytes.extend_from_slice(&inbound.take(usize::MAX));
        }
        bytes
    }

    /// The frames tungstenite would read: (final, rsv1, opcode, unmasked payload).
    fn frames_out(inbound: &mut Inbound) -> Vec<(bool, bool, OpCode, Vec<u8>)> {
        let mut bytes = Cursor::new(take_all(inbound));
        let mut frames = Vec::new();
        while let Some((header, length)) = FrameHeader::parse(&mut bytes).expect("parse") {
            let at = bytes.position() as usize;
            let mut payload = bytes.get_ref()[at..at + length as usize].to_vec();
            unmask(&mut payload, header.mask.expect("still masked"));
            bytes.set_position((at + length as usize) as u64);
            frames.push((header.is_final, header.rsv1, header.opcode, payload));
        }
        frames
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const CONTINUE: OpCode = OpCode::Data(Data::Continue);

    #[test]
    fn a_compressed_message_comes_out_plain_even_when_fed_a_byte_at_a_time() {
        let text = br#"{"type":"get_status"}"#;
        let wire = frame(TEXT, true, true, &deflated(text));
        let mut inbound = Inbound::new(LIMIT);
        for byte in &wire {
            inbound.push(std::slice::from_ref(byte));
        }
        assert_eq!(
            frames_out(&mut inbound),
            [(true, false, TEXT, text.to_vec())]
        );
        assert_eq!(inbound.fault(), None);
    }

    #[test]
    fn a_compressed_message_in_frames_with_a_ping_between_inflates_frame_by_frame() {
        let text = "库位".repeat(500);
        let compressed = deflated(text.as_bytes());
        let (first, second) = compressed.split_at(compressed.len() / 2);
        let mut wire = frame(TEXT, true, false, first);
        wire.extend(frame(OpCode::Control(Control::Ping), false, true, b"hi"));
        wire.extend(frame(CONTINUE, false, true, second));
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&wire);
        let frames = frames_out(&mut inbound);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[1],
            (true, false, OpCode::Control(Control::Ping), b"hi".to_vec())
        );
        let joined: Vec<u8> = [frames[0].3.clone(), frames[2].3.clone()].concat();
        assert_eq!(joined, text.as_bytes());
        assert_eq!(
            (frames[0].0, frames[0].1, frames[2].0),
            (false, false, true)
        );
    }

    #[test]
    fn plain_frames_and_misplaced_rsv1_go_through_untouched_for_tungstenite_to_judge() {
        let mut wire = frame(TEXT, false, true, b"ping");
        wire.extend(frame(OpCode::Control(Control::Ping), true, true, b""));
        wire.extend(frame(CONTINUE, true, true, b"x"));
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&wire);
        assert_eq!(take_all(&mut inbound), wire);
    }

    #[test]
    fn the_rfcs_own_example_with_bfinal_set_inflates() {
        // RFC 7692 section 7.2.3.3: "Hello" in a final block, then an empty stored block.
        let mut inbound = Inbound::new(LIMIT);
        let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        inbound.push(&frame(TEXT, true, true, &payload));
        assert_eq!(
            frames_out(&mut inbound),
            [(true, false, TEXT, b"Hello".to_vec())]
        );
        assert_eq!(inbound.fault(), None);
    }

    #[test]
    fn many_bombs_in_one_read_are_inflated_one_at_a_time() {
        // Found in review: 40 frames of about 90 bytes, each 64 KiB once inflated, fit in one
        // read; inflated all at once they would be 2.5 MiB held for one client.
        let bomb = frame(TEXT, true, true, &deflated(&[b' '; LIMIT]));
        let wire: Vec<u8> = std::iter::repeat_n(bomb, 40).flatten().collect();
        assert!(wire.len() < 4096);
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&wire);
        let mut messages = 0;
        while inbound.has_output() {
            assert!(
                inbound.output.len() <= LIMIT + 14,
                "more than one frame held"
            );
            let taken = inbound.take(usize::MAX);
            if taken.len() > LIMIT {
                messages += 1;
            }
        }
        assert_eq!(messages, 40);
        assert_eq!(inbound.fault(), None);
    }

    #[test]
    fn a_plain_frame_claiming_any_length_goes_through_for_tungstenite_to_refuse() {
        // Found by fuzzing: the length and the header's own overflowed.
        for length in [u64::MAX, u64::MAX >> 1] {
            let mut wire = vec![0x81, 0xFF];
            wire.extend_from_slice(&length.to_be_bytes());
            wire.extend_from_slice(&[1, 2, 3, 4, 5]);
            let mut inbound = Inbound::new(LIMIT);
            inbound.push(&wire);
            assert_eq!(take_all(&mut inbound), wire);
            assert_eq!(inbound.fault(), None);
        }
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_is_too_big_and_earlier_frames_still_arrive() {
        let bomb = deflated(&vec![b'a'; LIMIT + 1]);
        assert!(bomb.len() < 1024);
        let mut wire = frame(TEXT, false, true, b"ping");
        wire.extend(frame(TEXT, true, true, &bomb));
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&wire);
        assert_eq!(inbound.fault(), None, "the ping is still to be read");
        let ping = inbound.take(usize::MAX);
        assert_eq!(ping.as_ref(), frame(TEXT, false, true, b"ping").as_slice());
        assert_eq!(inbound.fault(), Some(Fault::TooBig));
        // Exactly at the limit is fine.
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&frame(TEXT, true, true, &deflated(&vec![b'a'; LIMIT])));
        assert_eq!(inbound.fault(), None);
        assert_eq!(frames_out(&mut inbound)[0].3.len(), LIMIT);
    }

    #[test]
    fn a_limit_counts_the_whole_message_across_its_frames() {
        let compressed = deflated(&vec![b'a'; LIMIT + 10]);
        let (first, second) = compressed.split_at(compressed.len() / 2);
        let mut wire = frame(TEXT, true, false, first);
        wire.extend(frame(CONTINUE, false, true, second));
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&wire);
        // Each half fits on its own; the first comes out, the second is one too many.
        let first = inbound.take(usize::MAX);
        assert!(first.len() > LIMIT / 4 && first.len() < LIMIT);
        assert!(!inbound.has_output());
        assert_eq!(inbound.fault(), Some(Fault::TooBig));
    }

    #[test]
    fn a_compressed_frame_over_the_limit_is_too_big_before_it_arrives() {
        let mut header = Vec::new();
        FrameHeader {
            rsv1: true,
            opcode: TEXT,
            mask: Some([1, 2, 3, 4]),
            ..FrameHeader::default()
        }
        .format(LIMIT as u64 + 1, &mut header)
        .expect("format");
        let mut inbound = Inbound::new(LIMIT);
        inbound.push(&header);
        assert_eq!(inbound.fault(), Some(Fault::TooBig));
    }

    #[test]
    fn data_that_does_not_inflate_is_a_fault_of_its_own() {
        for garbage in [&[0xff_u8, 0xff, 0xff, 0xff][..], b"\x02\x00\xff\xff\xff"] {
            let mut inbound = Inbound::new(LIMIT);
            inbound.push(&frame(TEXT, true, true, garbage));
            assert_eq!(inbound.fault(), Some(Fault::NotInflatable), "{garbage:?}");
        }
    }

    #[test]
    fn a_second_message_inflates_on_its_own_with_a_new_inflater_or_a_kept_one() {
        for (mut inbound, keeps) in [
            (Inbound::new(LIMIT), false),
            (Inbound::keeping_inflater(LIMIT), true),
        ] {
            for text in [&b"ping"[..], b"ping", br#"{"type":"ping"}"#] {
                inbound.push(&frame(TEXT, true, true, &deflated(text)));
                assert_eq!(
                    frames_out(&mut inbound),
                    [(true, false, TEXT, text.to_vec())]
                );
            }
            assert!(!inbound.in_message);
            assert_eq!(inbound.message.is_some(), keeps);
        }
    }
}
