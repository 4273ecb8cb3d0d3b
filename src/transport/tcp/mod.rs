//! TCP links between hosts: the wire protocol and its authenticated handshake.
//!
//! A TCP link carries one edge of the graph from a writing process on one host to a reading
//! process on another. The writer's side is the **client** (it connects), the reader's side
//! the **server** (it listens). This module is the protocol only: bytes in, bytes out, over
//! any `Read + Write`; the link that drives it (sockets, reconnection, the unacknowledged
//! buffer) is built on top.
//!
//! # Frames
//!
//! Everything on the connection, handshake included, is a frame: a `u32` little-endian length
//! of what follows, a kind byte, a body ([`wire`] lists them all). After the handshake:
//!
//! - **Data** `{seq, elements, payload}`: one encoded batch (the shm rings' codec), several per
//!   write when they wait ([`wire::encode_data`] appends one from a borrowed payload);
//! - **End** `{seq}`: end of stream, in band after the last batch, with a seq of its own;
//! - **Ack** `{next}`: from the reader, every seq below `next` is consumed (cumulative);
//! - **Heartbeat**: either side, when it has sent nothing for a while;
//! - **Goodbye** `{reason}`: either side, before an orderly close; the peer logs the reason.
//!
//! A receiver reads them with a [`wire::FrameDecoder`], which checks each length against its
//! limit (64 MiB unless configured) before it awaits or allocates anything, holds at most one
//! largest frame, and turns any malformed input into a [`wire::WireError`] naming what was
//! wrong, never a panic.
//!
//! # Handshake
//!
//! ```text
//! client                                          server
//!   Hello {magic "IOTSTRM1", version, app,
//!          deployment digest, edge, link label,
//!          type name, type fingerprint,
//!          writer epoch, authenticated, nonce}  ->
//!                                               <-  Refuse {reason}
//!                                                 | Challenge {server nonce, server proof}
//!   Refuse {reason} | Proof {client proof}      ->
//!                                               <-  Refuse {reason} | Accept {resume_from}
//! ```
//!
//! - Handshake messages are capped at 64 KiB, whatever the frame limit.
//! - The server refuses another protocol version (naming both), a Hello that says
//!   `authenticated` when it has no secret or the reverse (naming the side without one), and,
//!   once the client proved the secret, what its `check` refuses (application, deployment,
//!   edge, type). A peer whose first bytes are not a handshake (an HTTP request, say) is
//!   "not an iotstream process", with its first bytes shown escaped.
//! - Whoever refuses sends a Refuse with the reason and returns the same reason as its error,
//!   so both sides' logs say what was wrong ([`handshake::HandshakeError`]).
//! - `Accept` carries the seq the reader expects next: the writer resumes there, so a
//!   reconnection neither loses nor repeats a batch.
//! - The length prefix, the Hello's magic and version, and the Refuse message never change
//!   between versions, so that two versions can always tell each other why they disagree.
//!
//! # What the HMAC covers
//!
//! With a shared [`auth::Secret`], the server's proof is
//! `HMAC-SHA256(secret, "iotstream server v1" || Hello body || server nonce)` and the client's
//! the same with `"iotstream client v1"`. The Hello body is every field of the Hello as sent
//! (magic, version, application, deployment digest, edge, link, type, epoch, the authenticated
//! flag, the client's nonce). So each proof binds the secret, the role (a proof cannot be
//! reflected back), what the client claims to be, and both sides' fresh nonces (neither
//! proof can be replayed on another connection). Proofs are compared in constant time. The
//! client checks the server's proof first and gives none of its own to a server that failed.
//!
//! Not covered: the Refuse and Accept messages, and every frame after the handshake. The
//! handshake authenticates the peers; it neither encrypts nor protects the stream itself.
//! Someone able to alter traffic between the hosts can alter or cut it after the handshake;
//! TLS (rustls, under the same drivers, which take any `Read + Write`) is what protects it.
//! Without a secret (`insecure = true` on both sides) the Challenge and Proof carry zeros,
//! nothing is checked, and any process that can reach the port can connect.

// Not wired into a link yet (issue 10): the unit tests and the fuzzing hooks use it.
#![allow(dead_code)]

pub(crate) mod auth;
pub(crate) mod handshake;
pub(crate) mod tls;
pub(crate) mod wire;
