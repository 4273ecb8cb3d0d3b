//! The blocking handshake drivers, generic over any `Read + Write` (a `TcpStream`, later a TLS
//! stream, or [`Scripted`] bytes in tests and fuzzing).
//!
//! ```text
//! client (writer, connects)                  server (reader, listens)
//!   Hello {magic, version, app, ..., nonce} ->
//!                                            <- Refuse {reason} | Challenge {nonce, proof}
//!   checks the server's proof
//!   Refuse {reason} | Proof {proof}         ->
//!                                               checks the client's proof, then `check`
//!                                            <- Refuse {reason} | Accept {resume_from}
//! ```
//!
//! Whoever refuses sends its reason to the peer and returns it as its own error, so both logs
//! say what was wrong. The drivers read exactly the handshake's bytes, never past them: frames
//! follow on the same stream. They block: the caller sets a read timeout on the stream first.

use std::io::{self, Cursor, Read, Write};

use super::auth::{self, Role, Secret};
use super::wire::{
    a, decode_message, encode_message, is_known_kind, Hello, Message, WireError,
    HANDSHAKE_MAX_BYTES, HEADER_BYTES, KIND_HELLO, MAGIC, VERSION,
};

/// How many of a stranger's first bytes an error shows.
const SHOWN_BYTES: usize = 32;

/// The longest text of a peer's that an error repeats (its Refuse reason).
const SHOWN_REASON_CHARS: usize = 500;

/// The server accepted: where the stream resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accept {
    /// The first seq the reader has not consumed: the writer sends from there.
    pub(crate) resume_from: u64,
}

/// Why a handshake failed. Each Display is one sentence; the refusals also reached the peer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The peer closed the connection before the handshake was over.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// Reading or writing failed (a timeout, a reset).
    #[error("the connection failed during the handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer's first bytes are not an iotstream handshake.
    #[error("the peer is not an iotstream process (it sent \"{sent}\")")]
    NotIotstream {
        /// Its first bytes (at most 32), escaped.
        sent: String,
    },
    /// An iotstream peer sent bytes that break the protocol.
    #[error("the {peer} sent a malformed handshake message: {error}")]
    Malformed {
        /// Who sent them.
        peer: Role,
        /// What was wrong.
        error: WireError,
    },
    /// A well-formed message out of turn.
    #[error("the {peer} sent {} where {} was expected", a(.got), a(.expected))]
    Unexpected {
        /// Who sent it.
        peer: Role,
        /// What came.
        got: &'static str,
        /// What the protocol says comes there.
        expected: &'static str,
    },
    /// The peer refused the connection.
    #[error("the {peer} refused the connection: {reason}")]
    Refused {
        /// Who refused.
        peer: Role,
        /// Its reason, control characters escaped.
        reason: String,
    },
    /// This side refused the connection (and told the peer why).
    #[error("refused the {peer}: {reason}")]
    Refusing {
        /// Who was refused.
        peer: Role,
        /// The reason sent.
        reason: String,
    },
    /// A client with a secret failed before the server proved it knows it: whoever answered
    /// may not be the server it dialled (see [`client_handshake`]).
    #[error("{0}")]
    Unproven(Box<HandshakeError>),
}

/// `bytes` as printable ASCII, at most [`SHOWN_BYTES`] of them.
fn escaped(bytes: &[u8]) -> String {
    bytes[..bytes.len().min(SHOWN_BYTES)]
        .escape_ascii()
        .to_string()
}

/// A peer's text, safe for a log line: control characters escaped, length bounded.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(SHOWN_REASON_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full<R: Read + ?Sized>(io: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    // Ends: each pass reads at least one byte, or returns.
    while got < buf.len() {
        match io.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// One handshake message's kind and body, exactly its bytes. On the `first` message from a
/// peer, bytes that cannot start a handshake are [`HandshakeError::NotIotstream`].
fn read_raw<S: Read + ?Sized>(
    io: &mut S,
    peer: Role,
    first: bool,
) -> Result<(u8, Vec<u8>), HandshakeError> {
    let stranger = |seen: &[u8]| HandshakeError::NotIotstream {
        sent: escaped(seen),
    };
    let mut header = [0; HEADER_BYTES];
    let got = read_full(io, &mut header)?;
    if got == 0 {
        return Err(HandshakeError::Closed);
    }
    if got < HEADER_BYTES {
        return Err(if first {
            stranger(&header[..got])
        } else {
            HandshakeError::Closed
        });
    }
    let length = u32::from_le_bytes(header);
    if length == 0 || length > HANDSHAKE_MAX_BYTES {
        if first {
            // One more read, to show what the stranger sent; it may have sent nothing more.
            let mut seen = [0; SHOWN_BYTES];
            seen[..HEADER_BYTES].copy_from_slice(&header);
            let more = loop {
                match io.read(&mut seen[HEADER_BYTES..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other.unwrap_or(0),
                }
            };
            return Err(stranger(&seen[..HEADER_BYTES + more]));
        }
        let error = if length == 0 {
            WireError::Empty
        } else {
            WireError::TooLarge {
                bytes: length,
                limit: HANDSHAKE_MAX_BYTES,
            }
        };
        return Err(HandshakeError::Malformed { peer, error });
    }
    // Checked against the handshake's cap above: at most 64 KiB.
    let mut message = vec![0; length as usize];
    let got = read_full(io, &mut message)?;
    let seen = || [&header[..], &message[..got]].concat();
    if got < message.len() {
        return Err(if first {
            stranger(&seen())
        } else {
            HandshakeError::Closed
        });
    }
    let kind = message[0];
    if first && !is_known_kind(kind) {
        return Err(stranger(&seen()));
    }
    message.remove(0);
    Ok((kind, message))
}

/// Reads one message and decodes it.
fn read_message<S: Read + ?Sized>(
    io: &mut S,
    peer: Role,
    first: bool,
) -> Result<Message, HandshakeError> {
    let (kind, body) = read_raw(io, peer, first)?;
    decode_message(kind, &body).map_err(|error| HandshakeError::Malformed { peer, error })
}

fn send<S: Write + ?Sized>(io: &mut S, m: &Message) -> Result<(), HandshakeError> {
    let mut out = Vec::new();
    encode_message(m, &mut out);
    io.write_all(&out)?;
    io.flush()?;
    Ok(())
}

/// Sends a Refuse with `reason` (if the peer is still there to read it) and returns it as
/// this side's error.
fn refuse<S: Write + ?Sized>(io: &mut S, peer: Role, reason: String) -> HandshakeError {
    // The refusal is the error either way; a peer already gone does not change it.
    let _ = send(
        io,
        &Message::Refuse {
            reason: reason.clone(),
        },
    );
    HandshakeError::Refusing { peer, reason }
}

fn refused(peer: Role, reason: &str) -> HandshakeError {
    HandshakeError::Refused {
        peer,
        reason: printable(reason),
    }
}

fn unexpected(peer: Role, got: &Message, expected: &'static str) -> HandshakeError {
    HandshakeError::Unexpected {
        peer,
        got: got.name(),
        expected,
    }
}

const NO_SECRET_HINT: &str =
    "give both hosts the same secret file, or set insecure = true for both";

/// The client's side: sends `hello` (with a fresh nonce; `hello.authenticated` must say
/// whether there is a `secret`), checks the server's proof, sends its own, and returns the
/// server's [`Accept`].
///
/// With a secret, a failure before the server's proof checked out (a refusal, bytes that are
/// not a handshake, a wrong proof, the connection lost) is [`HandshakeError::Unproven`]:
/// nothing says it came from the server the client meant to reach.
///
/// # Panics
/// When `hello.authenticated` disagrees with `secret`.
pub(crate) fn client_handshake<S: Read + Write + ?Sized>(
    io: &mut S,
    hello: &Hello,
    secret: Option<&Secret>,
) -> Result<Accept, HandshakeError> {
    client_handshake_with(io, hello, secret, auth::nonce()?)
}

/// [`client_handshake`] with the client's nonce given (fuzzing wants it fixed).
pub(crate) fn client_handshake_with<S: Read + Write + ?Sized>(
    io: &mut S,
    hello: &Hello,
    secret: Option<&Secret>,
    nonce: [u8; 32],
) -> Result<Accept, HandshakeError> {
    assert_eq!(
        hello.authenticated,
        secret.is_some(),
        "a Hello says it is authenticated exactly when the client has a secret"
    );
    let hello = Hello {
        nonce,
        ..hello.clone()
    };
    let mut hello_body = Vec::new();
    hello.encode_body(&mut hello_body);
    // Until the server's proof checks out, a failure may come from anyone on its address.
    let unproven = |e: HandshakeError| match secret {
        Some(_) => HandshakeError::Unproven(Box::new(e)),
        None => e,
    };
    send(io, &Message::Hello(hello)).map_err(unproven)?;
    let server = Role::Server;
    let server_nonce = match read_message(io, server, true).map_err(unproven)? {
        Message::Challenge { nonce, proof } => {
            if let Some(secret) = secret {
                if !auth::verify(secret, Role::Server, &hello_body, &nonce, &proof) {
                    return Err(unproven(refuse(
                        io,
                        server,
                        "wrong secret: the server's proof does not match the client's secret \
                         (the server does not know the secret, or the client has a wrong one)"
                            .into(),
                    )));
                }
            }
            nonce
        }
        Message::Refuse { reason } => return Err(unproven(refused(server, &reason))),
        other => return Err(unproven(unexpected(server, &other, "Challenge message"))),
    };
    let proof = match secret {
        Some(secret) => auth::proof(secret, Role::Client, &hello_body, &server_nonce),
        None => [0; 32],
    };
    send(io, &Message::Proof { proof })?;
    match read_message(io, server, false)? {
        Message::Accept { resume_from } => Ok(Accept { resume_from }),
        Message::Refuse { reason } => Err(refused(server, &reason)),
        other => Err(unexpected(server, &other, "Accept message")),
    }
}

/// The server's side: reads the client's Hello, proves the secret, checks the client's proof,
/// then asks `check` (application, deployment, edge, type) for the seq to resume from or the
/// reason to refuse, which goes to the client and is returned. `check` sees only clients that
/// proved the secret (or every client, without one).
pub(crate) fn server_handshake<S: Read + Write + ?Sized>(
    io: &mut S,
    secret: Option<&Secret>,
    check: impl FnOnce(&Hello) -> Result<u64, String>,
) -> Result<(Hello, u64), HandshakeError> {
    server_handshake_with(io, secret, check, auth::nonce()?)
}

/// [`server_handshake`] with the server's nonce given (fuzzing wants it fixed).
pub(crate) fn server_handshake_with<S: Read + Write + ?Sized>(
    io: &mut S,
    secret: Option<&Secret>,
    check: impl FnOnce(&Hello) -> Result<u64, String>,
    nonce: [u8; 32],
) -> Result<(Hello, u64), HandshakeError> {
    let client = Role::Client;
    let (kind, body) = read_raw(io, client, true)?;
    if kind != KIND_HELLO {
        let got = decode_message(kind, &body).map_err(|error| HandshakeError::Malformed {
            peer: client,
            error,
        })?;
        return Err(unexpected(client, &got, "Hello message"));
    }
    if !body.starts_with(&MAGIC) {
        // The bytes as they came: the length prefix (checked, so it fits), the kind, the body.
        let length = u32::try_from(body.len() + 1).unwrap_or(u32::MAX);
        let mut seen = length.to_le_bytes().to_vec();
        seen.push(kind);
        seen.extend_from_slice(&body);
        return Err(HandshakeError::NotIotstream {
            sent: escaped(&seen),
        });
    }
    // The magic and the version come first in every version's Hello; the rest may change.
    if let Some(version) = body.get(MAGIC.len()..MAGIC.len() + 2) {
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version != VERSION {
            return Err(refuse(
                io,
                client,
                format!(
                    "protocol version mismatch: the client speaks version {version}, the server \
                     version {VERSION}"
                ),
            ));
        }
    }
    let hello = match Hello::decode_body(&body) {
        Ok(hello) => hello,
        Err(error) => {
            let _ = refuse(
                io,
                client,
                format!("the server cannot read the Hello: {error}"),
            );
            return Err(HandshakeError::Malformed {
                peer: client,
                error,
            });
        }
    };
    match (hello.authenticated, secret.is_some()) {
        (true, false) => {
            return Err(refuse(
                io,
                client,
                format!(
                    "authentication mismatch: the client has a secret but the server has none \
                     ({NO_SECRET_HINT})"
                ),
            ))
        }
        (false, true) => {
            return Err(refuse(
                io,
                client,
                format!(
                    "authentication mismatch: the server has a secret but the client has none \
                     ({NO_SECRET_HINT})"
                ),
            ))
        }
        _ => {}
    }
    let (nonce, proof) = match secret {
        Some(secret) => (nonce, auth::proof(secret, Role::Server, &body, &nonce)),
        None => ([0; 32], [0; 32]),
    };
    send(io, &Message::Challenge { nonce, proof })?;
    match read_message(io, client, false)? {
        Message::Proof { proof } => {
            if let Some(secret) = secret {
                if !auth::verify(secret, Role::Client, &body, &nonce, &proof) {
                    return Err(refuse(
                        io,
                        client,
                        "wrong secret: the client's proof does not match the server's secret"
                            .into(),
                    ));
                }
            }
        }
        Message::Refuse { reason } => return Err(refused(client, &reason)),
        other => return Err(unexpected(client, &other, "Proof message")),
    }
    match check(&hello) {
        Ok(resume_from) => {
            send(io, &Message::Accept { resume_from })?;
            Ok((hello, resume_from))
        }
        Err(reason) => Err(refuse(io, client, reason)),
    }
}

/// A stream of scripted bytes: reads come from `input`, writes go to `output`. For tests and
/// fuzzing, in place of a socket.
#[derive(Debug, Default)]
pub(crate) struct Scripted {
    /// What the peer "sent".
    pub(crate) input: Cursor<Vec<u8>>,
    /// What this side wrote.
    pub(crate) output: Vec<u8>,
}

impl Scripted {
    /// A stream whose peer sent `input`.
    pub(crate) fn new(input: Vec<u8>) -> Self {
        Self {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::wire::tests::sample_hello;
    use proptest::prelude::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn secret(s: &str) -> Secret {
        Secret::from_bytes(s.as_bytes().to_vec(), "test")
    }

    fn hello(authenticated: bool) -> Hello {
        Hello {
            authenticated,
            ..sample_hello()
        }
    }

    /// A connected loopback pair, both ends with a read timeout so that a broken test fails
    /// instead of hanging. The sockets close when dropped.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        (client, server)
    }

    type ServerOutcome = Result<(Hello, u64), HandshakeError>;

    /// Runs both drivers over real loopback sockets, the server in a second thread.
    fn over_tcp(
        hello: Hello,
        client_secret: Option<Secret>,
        server_secret: Option<Secret>,
        check: impl FnOnce(&Hello) -> Result<u64, String> + Send,
    ) -> (Result<Accept, HandshakeError>, ServerOutcome) {
        let (mut client, mut server) = pair();
        std::thread::scope(|s| {
            let server =
                s.spawn(move || server_handshake(&mut server, server_secret.as_ref(), check));
            let accepted = client_handshake(&mut client, &hello, client_secret.as_ref());
            drop(client);
            (accepted, server.join().unwrap())
        })
    }

    #[test]
    fn the_right_secret_is_accepted_with_the_readers_resume_point() {
        let (client, server) = over_tcp(
            hello(true),
            Some(secret("correct horse battery")),
            Some(secret("correct horse battery")),
            |h| {
                assert_eq!(h.app, "plant");
                Ok(1234)
            },
        );
        assert_eq!(client.unwrap(), Accept { resume_from: 1234 });
        let (got, resume_from) = server.unwrap();
        assert_eq!(resume_from, 1234);
        assert_eq!(
            Hello {
                nonce: [9; 32],
                ..got
            },
            hello(true),
            "the server sees the client's Hello, with a fresh nonce"
        );
        assert_ne!(got.nonce, [9; 32]);
    }

    #[test]
    fn a_wrong_secret_is_refused_on_both_sides() {
        let (client, server) = over_tcp(
            hello(true),
            Some(secret("correct horse battery")),
            Some(secret("incorrect horse battery")),
            |_| panic!("a client with a wrong secret is never checked"),
        );
        let reason = "wrong secret: the server's proof does not match the client's secret (the \
                      server does not know the secret, or the client has a wrong one)";
        assert_eq!(
            client.unwrap_err().to_string(),
            format!("refused the server: {reason}")
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            format!("the client refused the connection: {reason}")
        );
    }

    #[test]
    fn insecure_on_both_sides_is_accepted() {
        let (client, server) = over_tcp(hello(false), None, None, |_| Ok(0));
        assert_eq!(client.unwrap(), Accept { resume_from: 0 });
        assert_eq!(server.unwrap().1, 0);
    }

    #[test]
    fn a_secret_on_one_side_only_is_refused_naming_the_side_without() {
        let hint = "give both hosts the same secret file, or set insecure = true for both";
        let (client, server) =
            over_tcp(hello(true), Some(secret("0123456789abcdef")), None, |_| {
                Ok(0)
            });
        let reason = format!(
            "authentication mismatch: the client has a secret but the server has none ({hint})"
        );
        assert_eq!(
            client.unwrap_err().to_string(),
            format!("the server refused the connection: {reason}")
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            format!("refused the client: {reason}")
        );
        let (client, server) =
            over_tcp(hello(false), None, Some(secret("0123456789abcdef")), |_| {
                Ok(0)
            });
        let reason = format!(
            "authentication mismatch: the server has a secret but the client has none ({hint})"
        );
        assert_eq!(
            client.unwrap_err().to_string(),
            format!("the server refused the connection: {reason}")
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            format!("refused the client: {reason}")
        );
    }

    #[test]
    fn the_checks_refusal_reaches_the_client_with_its_reason() {
        let (client, server) = over_tcp(
            hello(true),
            Some(secret("0123456789abcdef")),
            Some(secret("0123456789abcdef")),
            |h| {
                Err(format!(
                    "wrong type: the reader takes u32, the writer sends {}",
                    h.type_name
                ))
            },
        );
        let reason = "wrong type: the reader takes u32, the writer sends f64";
        assert_eq!(
            client.unwrap_err().to_string(),
            format!("the server refused the connection: {reason}")
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            format!("refused the client: {reason}")
        );
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let (client, server) = over_tcp(
            Hello {
                version: 9,
                ..hello(false)
            },
            None,
            None,
            |_| Ok(0),
        );
        let reason = "protocol version mismatch: the client speaks version 9, the server version 2";
        assert_eq!(
            client.unwrap_err().to_string(),
            format!("the server refused the connection: {reason}")
        );
        assert_eq!(
            server.unwrap_err().to_string(),
            format!("refused the client: {reason}")
        );
    }

    #[test]
    fn an_http_client_is_not_an_iotstream_process() {
        let mut io = Scripted::new(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n".to_vec());
        let err = server_handshake(&mut io, None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the peer is not an iotstream process (it sent "GET / HTTP/1.1\r\nHost: example.or")"#
        );
        assert!(io.output.is_empty(), "nothing is sent to a stranger");
    }

    #[test]
    fn an_http_server_is_not_an_iotstream_process() {
        let mut io = Scripted::new(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
        let err = client_handshake(&mut io, &hello(false), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the peer is not an iotstream process (it sent "HTTP/1.1 400 Bad Request\r\n\r\n")"#
        );
    }

    #[test]
    fn a_hello_without_the_magic_or_a_short_stranger_is_not_iotstream() {
        let mut body = Vec::new();
        sample_hello().encode_body(&mut body);
        body[0] = b'X';
        let mut input = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        input.push(KIND_HELLO);
        input.extend_from_slice(&body);
        let err = server_handshake(&mut Scripted::new(input), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"the peer is not an iotstream process (it sent "\x87\x00\x00\x00\x10XOTSTRM1\x{VERSION:02x}\x00\x05\x00plant\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07")"#
            )
        );
        let err =
            server_handshake(&mut Scripted::new(b"hi".to_vec()), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"the peer is not an iotstream process (it sent "hi")"#
        );
        let err = server_handshake(&mut Scripted::new(vec![]), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer closed the connection during the handshake"
        );
    }

    /// The bytes a client sends: Hello, then a Proof.
    fn client_bytes(hello: &Hello, proof: [u8; 32]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(&Message::Hello(hello.clone()), &mut out);
        encode_message(&Message::Proof { proof }, &mut out);
        out
    }

    #[test]
    fn a_client_proof_that_fails_is_a_wrong_secret_on_the_server() {
        // A client that skips checking the server's proof and answers with a wrong one.
        let mut io = Scripted::new(client_bytes(&hello(true), [5; 32]));
        let err =
            server_handshake(&mut io, Some(&secret("0123456789abcdef")), |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused the client: wrong secret: the client's proof does not match the server's secret"
        );
        // The client was sent a Challenge and then the Refuse.
        let mut sent = Cursor::new(io.output);
        assert!(matches!(
            read_message(&mut sent, Role::Server, true).unwrap(),
            Message::Challenge { .. }
        ));
        assert_eq!(
            read_message(&mut sent, Role::Server, false).unwrap(),
            Message::Refuse {
                reason: "wrong secret: the client's proof does not match the server's secret"
                    .into()
            }
        );
    }

    #[test]
    fn a_scripted_client_with_the_secret_is_accepted() {
        // The server's nonce fixed, the client's proof computed for it.
        let s = secret("0123456789abcdef");
        let h = hello(true);
        let mut body = Vec::new();
        h.encode_body(&mut body);
        let proof = auth::proof(&s, Role::Client, &body, &[4; 32]);
        let mut io = Scripted::new(client_bytes(&h, proof));
        let (got, resume) = server_handshake_with(&mut io, Some(&s), |_| Ok(8), [4; 32]).unwrap();
        assert_eq!((got, resume), (h, 8));
    }

    #[test]
    fn out_of_turn_and_malformed_messages_name_what_came() {
        let mut input = Vec::new();
        encode_message(&Message::Accept { resume_from: 1 }, &mut input);
        let err = server_handshake(&mut Scripted::new(input), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client sent an Accept message where a Hello message was expected"
        );
        let mut hello_bytes = Vec::new();
        encode_message(&Message::Hello(hello(false)), &mut hello_bytes);
        let mut input = hello_bytes.clone();
        input.extend_from_slice(&[0x01, 0x00, 0x01, 0x00, 0x13]);
        let err = server_handshake(&mut Scripted::new(input), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client sent a malformed handshake message: frame of 65537 bytes exceeds the limit of 65536"
        );
        let mut input = hello_bytes;
        input.extend_from_slice(&[0x21, 0x00, 0x00, 0x00, 0x13, 1, 2, 3]);
        let err = server_handshake(&mut Scripted::new(input), None, |_| Ok(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer closed the connection during the handshake",
            "a Proof cut short"
        );
    }

    proptest! {
        #[test]
        fn random_bytes_into_the_server_fail_or_succeed_without_panic(
            input in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut io = Scripted::new(input);
            let _ = server_handshake_with(&mut io, Some(&secret("0123456789abcdef")), |_| Ok(0), [1; 32]);
            let mut io = Scripted::new(io.input.into_inner());
            let _ = server_handshake_with(&mut io, None, |_| Ok(0), [1; 32]);
        }

        #[test]
        fn random_bytes_into_the_client_fail_or_succeed_without_panic(
            input in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut io = Scripted::new(input.clone());
            let _ = client_handshake_with(&mut io, &hello(true), Some(&secret("0123456789abcdef")), [1; 32]);
            let mut io = Scripted::new(input);
            let _ = client_handshake_with(&mut io, &hello(false), None, [1; 32]);
        }

        #[test]
        fn mutated_handshakes_fail_or_succeed_without_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..5),
            secure in any::<bool>(),
        ) {
            let s = secret("0123456789abcdef");
            let h = Hello { nonce: [1; 32], ..hello(secure) };
            let mut body = Vec::new();
            h.encode_body(&mut body);
            // What a real client sends, and what a real server answers.
            let mut to_server = client_bytes(&h, auth::proof(&s, Role::Client, &body, &[4; 32]));
            let mut to_client = Vec::new();
            encode_message(&Message::Challenge { nonce: [4; 32], proof: auth::proof(&s, Role::Server, &body, &[4; 32]) }, &mut to_client);
            encode_message(&Message::Accept { resume_from: 3 }, &mut to_client);
            for bytes in [&mut to_server, &mut to_client] {
                for (at, byte, how) in &edits {
                    let i = at.index(bytes.len().max(1));
                    match how {
                        0 if i < bytes.len() => bytes[i] = *byte,
                        1 => bytes.insert(i.min(bytes.len()), *byte),
                        _ => bytes.truncate(i),
                    }
                }
            }
            let secret = secure.then_some(&s);
            let server = server_handshake_with(&mut Scripted::new(to_server), secret, |_| Ok(3), [4; 32]);
            let client = client_handshake_with(&mut Scripted::new(to_client), &h, secret, [1; 32]);
            if edits.is_empty() {
                prop_assert_eq!(server.unwrap(), (h.clone(), 3));
                prop_assert_eq!(client.unwrap(), Accept { resume_from: 3 });
            }
        }
    }
}
