//! What a client that negotiated permessage-deflate sends: any bytes, cut into any pieces, go
//! through the hub's `Inbound` before tungstenite reads them. It must never panic, must stop
//! for good at a fault, and must turn a compressed message back into exactly its text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vwed_hub::ws::deflate::deflate;
use vwed_hub::ws::deflate::inbound::Inbound;

/// The hub's limit on a client frame and on a message once inflated.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    if first & 1 == 0 {
        any_bytes(bytes, usize::from(first >> 1).max(1));
    } else {
        round_trip(bytes, usize::from(first >> 1).max(1));
    }
});

/// Arbitrary bytes in pieces of `piece` bytes.
fn any_bytes(bytes: &[u8], piece: usize) {
    let mut inbound = Inbound::new(LIMIT);
    for chunk in bytes.chunks(piece) {
        inbound.push(chunk);
        while inbound.has_output() {
            // At most one inflated frame (and the plain bytes before it) is held at a time.
            let taken = inbound.take(usize::MAX);
            assert!(taken.len() <= LIMIT + 14 + bytes.len());
        }
    }
    if let Some(fault) = inbound.fault() {
        // A compressed ping after the fault: nothing more comes out.
        inbound.push(&[0xC1, 0x80, 0, 0, 0, 0]);
        assert!(!inbound.has_output());
        assert_eq!(inbound.fault(), Some(fault));
    }
}

/// `text` deflated as a client sends it, in one masked frame fed in pieces: out comes the same
/// frame with RSV1 clear, the text as its payload.
fn round_trip(text: &[u8], piece: usize) {
    if text.len() > LIMIT {
        return;
    }
    let Some(deflated) = deflate(text, 1) else {
        return;
    };
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut wire = vec![0xC1];
    push_length(&mut wire, 0x80, deflated.len());
    wire.extend_from_slice(&mask);
    wire.extend(deflated.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    let mut inbound = Inbound::new(LIMIT);
    let mut out = Vec::new();
    for chunk in wire.chunks(piece) {
        inbound.push(chunk);
        while inbound.has_output() {
            out.extend_from_slice(&inbound.take(usize::MAX));
        }
    }
    assert_eq!(inbound.fault(), None);
    let mut expected = vec![0x81];
    push_length(&mut expected, 0x80, text.len());
    // Masked with a key of zeroes: the payload as it is.
    expected.extend_from_slice(&[0, 0, 0, 0]);
    expected.extend_from_slice(text);
    assert_eq!(out, expected);
}

/// A frame's length field (RFC 6455 section 5.2), with the mask bit given.
fn push_length(out: &mut Vec<u8>, mask_bit: u8, length: usize) {
    match length {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}
