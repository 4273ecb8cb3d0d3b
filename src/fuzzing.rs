//! Hooks for the fuzz targets in `fuzz/` (cargo-fuzz): thin wrappers over the TCP link's
//! frame decoder and handshake drivers, which are private to the crate. Not part of the API:
//! hidden from the docs and free to change.

use crate::transport::tcp::auth::Secret;
use crate::transport::tcp::handshake::{self, Scripted};
use crate::transport::tcp::wire::{self, FrameDecoder, MAGIC, VERSION};

/// The secret both fuzzed drivers hold when they are authenticated.
const SECRET: &[u8] = b"iotstream fuzzing secret";

/// Feeds `data` to a frame decoder refusing frames over `max_frame_bytes`, in pushes of at
/// most `chunk_bytes` (at least 1), taking every frame as it completes. Returns how many
/// frames came, or the first error's message.
///
/// # Panics
/// When the decoder ever holds more than `max_frame_bytes + 4` bytes (a finding), or
/// `max_frame_bytes` is 0.
pub fn decode_frames(
    data: &[u8],
    max_frame_bytes: u32,
    chunk_bytes: usize,
) -> Result<usize, String> {
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let chunk_bytes = chunk_bytes.max(1);
    let mut frames = 0;
    let mut rest = data;
    // Ends: every pass takes at least one byte, or returns the error that stopped it.
    while !rest.is_empty() {
        let n = decoder.push(&rest[..chunk_bytes.min(rest.len())]);
        assert!(
            decoder.held_bytes() <= decoder.limit_bytes(),
            "the decoder outgrew its limit"
        );
        rest = &rest[n..];
        while decoder.next().map_err(|e| e.to_string())?.is_some() {
            frames += 1;
        }
        assert!(
            n > 0,
            "a push took nothing though no frame or error was waiting"
        );
    }
    decoder.finish().map_err(|e| e.to_string())?;
    Ok(frames)
}

fn secret(authenticated: bool) -> Option<Secret> {
    authenticated.then(|| Secret::from_bytes(SECRET.to_vec(), "fuzzing"))
}

/// Runs the server's handshake against a client that sent `input`, with a fixed nonce;
/// returns the seq it would resume from, or the error's message.
pub fn server_handshake(input: &[u8], authenticated: bool) -> Result<u64, String> {
    let secret = secret(authenticated);
    let mut io = Scripted::new(input.to_vec());
    handshake::server_handshake_with(&mut io, secret.as_ref(), |_| Ok(7), [3; 32])
        .map(|(_, resume_from)| resume_from)
        .map_err(|e| e.to_string())
}

/// Runs the client's handshake against a server that sent `input`, with a fixed nonce;
/// returns the seq the server accepted from, or the error's message.
pub fn client_handshake(input: &[u8], authenticated: bool) -> Result<u64, String> {
    let secret = secret(authenticated);
    let hello = wire::Hello {
        magic: MAGIC,
        version: VERSION,
        app: "fuzz".into(),
        deployment: [1; 32],
        edge: 0,
        link: "a.out -> b.in".into(),
        type_name: "u64".into(),
        type_fingerprint: 42,
        writer_epoch: 0,
        authenticated,
        nonce: [0; 32],
    };
    let mut io = Scripted::new(input.to_vec());
    handshake::client_handshake_with(&mut io, &hello, secret.as_ref(), [2; 32])
        .map(|accept| accept.resume_from)
        .map_err(|e| e.to_string())
}
