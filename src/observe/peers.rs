//! The launchers' observation channel: how one launcher shows the whole application when its
//! processes run on several hosts.
//!
//! Each host's launcher of a multi-host deployment listens on its host's address and
//! *observation port* ([`HostInfo::observe_port`](crate::info::HostInfo::observe_port)); a launcher that
//! serves the live view or the metrics asks every other host's launcher for its view once per
//! interval (`fetch`) and merges what it gets. Hosts not reached show their processes as
//! `unknown`; nothing waits on them for longer than [`PEER_TIMEOUT`].
//!
//! # Protocol
//!
//! Both sides prove they hold the deployment's secret, and the answer is bound to that proof,
//! so a host that does not know the secret can neither ask nor answer, nor alter an answer in
//! transit (the bytes are not encrypted: counters and names, no data of the application):
//!
//! ```text
//! server → client: "IOTSOBS1" | server nonce (32 bytes)
//! client → server: "IOTSOBS1" | client nonce (32) | request (1 byte: 0 = the view) |
//!                  HMAC(secret, CLIENT_LABEL | server nonce | client nonce | request)
//! server → client: length (u32, big-endian, ≤ MAX_ANSWER_BYTES) | JSON of an AppMetrics |
//!                  HMAC(secret, ANSWER_LABEL | server nonce | client nonce | request | length | JSON)
//! ```
//!
//! A client whose proof is wrong gets nothing and the connection is closed (the server logs
//! it once per address). Every read and write is bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::observe::model::AppMetrics;
use crate::transport::tcp::auth::{nonce, tag, verify_tag, Secret};

const MAGIC: &[u8; 8] = b"IOTSOBS1";
const CLIENT_LABEL: &[u8] = b"iotstream observe client v1";
const ANSWER_LABEL: &[u8] = b"iotstream observe answer v1";
/// The request for the host's view.
const REQUEST_VIEW: u8 = 0;

/// The largest answer accepted (a view of a very large graph is a few MiB).
pub const MAX_ANSWER_BYTES: u32 = 64 << 20;

/// How long one exchange may take, each way.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a launcher's view comes from.
pub type ViewFn = Arc<dyn Fn() -> AppMetrics + Send + Sync>;

/// A launcher's observation endpoint; stops when dropped.
pub struct PeerServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerServer {
    /// Listens on `addr` and answers every authenticated request with `view()`.
    pub(crate) fn start(addr: SocketAddr, secret: Secret, view: ViewFn) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("iotstream observe peers".into())
            .spawn(move || {
                let mut warned = std::collections::HashSet::new();
                while !stopped.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            // One at a time: an answer takes milliseconds, and a slow or hostile
                            // client is cut off by the timeouts.
                            if let Err(e) = answer(stream, &secret, &view) {
                                if warned.len() < 1024 && warned.insert(peer.ip()) {
                                    tracing::warn!(
                                        "observation request from {peer} refused: {e} (said once per address)"
                                    );
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            tracing::warn!("observation endpoint {addr}: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(PeerServer {
            stop,
            addr,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream, secret: &Secret, view: &ViewFn) -> Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let server_nonce = nonce().map_err(|e| e.to_string())?;
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&server_nonce);
    stream.write_all(&hello).map_err(|e| e.to_string())?;
    let mut request = [0u8; 8 + 32 + 1 + 32];
    stream
        .read_exact(&mut request)
        .map_err(|e| format!("no complete request: {e}"))?;
    if &request[..8] != MAGIC {
        return Err("not an iotstream launcher (wrong magic)".into());
    }
    let client_nonce = &request[8..40];
    let kind = &request[40..41];
    if !verify_tag(
        secret,
        CLIENT_LABEL,
        &[&server_nonce, client_nonce, kind],
        &request[41..],
    ) {
        return Err("wrong proof: the peer does not hold this deployment's secret".into());
    }
    if kind[0] != REQUEST_VIEW {
        return Err(format!("unknown request {}", kind[0]));
    }
    let json = serde_json::to_vec(&view()).map_err(|e| e.to_string())?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_ANSWER_BYTES)
        .ok_or_else(|| format!("the view is too large to send ({} bytes)", json.len()))?;
    let len = len.to_be_bytes();
    let mac = tag(
        secret,
        ANSWER_LABEL,
        &[&server_nonce, client_nonce, kind, &len, &json],
    );
    let mut out = Vec::with_capacity(4 + json.len() + 32);
    out.extend_from_slice(&len);
    out.extend_from_slice(&json);
    out.extend_from_slice(&mac);
    stream.write_all(&out).map_err(|e| e.to_string())
}

/// Asks the launcher at `addr` for its view. The error says what went wrong, for a line such as
/// "host 'cloud' (10.0.0.2:7399): …".
pub(crate) fn fetch(addr: SocketAddr, secret: &Secret) -> Result<AppMetrics, String> {
    let mut stream = TcpStream::connect_timeout(&addr, PEER_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut hello = [0u8; 40];
    stream
        .read_exact(&mut hello)
        .map_err(|e| format!("no greeting: {e}"))?;
    if &hello[..8] != MAGIC {
        return Err("not an iotstream launcher's observation port (wrong greeting)".into());
    }
    let server_nonce = &hello[8..];
    let client_nonce = nonce().map_err(|e| e.to_string())?;
    let kind = [REQUEST_VIEW];
    let proof = tag(secret, CLIENT_LABEL, &[server_nonce, &client_nonce, &kind]);
    let mut request = Vec::with_capacity(73);
    request.extend_from_slice(MAGIC);
    request.extend_from_slice(&client_nonce);
    request.extend_from_slice(&kind);
    request.extend_from_slice(&proof);
    stream
        .write_all(&request)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| {
        format!("no answer ({e}): does it hold the same secret? its launcher logs a refusal")
    })?;
    let n = u32::from_be_bytes(len);
    if n > MAX_ANSWER_BYTES {
        return Err(format!(
            "an answer of {n} bytes, above the {MAX_ANSWER_BYTES} allowed"
        ));
    }
    let mut json = vec![0u8; n as usize];
    stream
        .read_exact(&mut json)
        .map_err(|e| format!("the answer was cut short: {e}"))?;
    let mut mac = [0u8; 32];
    stream
        .read_exact(&mut mac)
        .map_err(|e| format!("the answer's tag was cut short: {e}"))?;
    if !verify_tag(
        secret,
        ANSWER_LABEL,
        &[server_nonce, &client_nonce, &kind, &len, &json],
        &mac,
    ) {
        return Err("the answer's tag is wrong: it does not come from a holder of the secret, or was altered".into());
    }
    serde_json::from_slice(&json).map_err(|e| format!("the answer is not a view: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::from_bytes(s.as_bytes().to_vec(), "test")
    }

    fn serve(s: &str) -> PeerServer {
        let view: ViewFn = Arc::new(|| AppMetrics {
            app: "quake".into(),
            run: "1-2".into(),
            ..AppMetrics::default()
        });
        PeerServer::start("127.0.0.1:0".parse().unwrap(), secret(s), view).unwrap()
    }

    #[test]
    fn a_holder_of_the_secret_gets_the_view() {
        let server = serve("0123456789abcdef-same");
        let got = fetch(server.addr(), &secret("0123456789abcdef-same")).unwrap();
        assert_eq!((got.app.as_str(), got.run.as_str()), ("quake", "1-2"));
        // And again: the server answers one request after another.
        assert_eq!(
            fetch(server.addr(), &secret("0123456789abcdef-same"))
                .unwrap()
                .app,
            "quake"
        );
    }

    #[test]
    fn a_wrong_secret_gets_nothing() {
        let server = serve("0123456789abcdef-right");
        let e = fetch(server.addr(), &secret("0123456789abcdef-wrong")).unwrap_err();
        assert!(e.contains("same secret"), "{e}");
    }

    #[test]
    fn a_server_without_the_secret_cannot_answer() {
        // A fake server that greets and answers with a view but a tag made with another key.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let sn = [7u8; 32];
            s.write_all(MAGIC).unwrap();
            s.write_all(&sn).unwrap();
            let mut req = [0u8; 73];
            s.read_exact(&mut req).unwrap();
            let json = serde_json::to_vec(&AppMetrics::default()).unwrap();
            let len = (json.len() as u32).to_be_bytes();
            let mac = tag(
                &secret("another-secret-of-16"),
                ANSWER_LABEL,
                &[&sn, &req[8..40], &req[40..41], &len, &json],
            );
            s.write_all(&len).unwrap();
            s.write_all(&json).unwrap();
            s.write_all(&mac).unwrap();
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("tag is wrong"), "{e}");
        fake.join().unwrap();
    }

    #[test]
    fn an_oversized_answer_is_refused_before_reading_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(MAGIC).unwrap();
            s.write_all(&[1u8; 32]).unwrap();
            let mut req = [0u8; 73];
            s.read_exact(&mut req).unwrap();
            s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("above the"), "{e}");
        fake.join().unwrap();
    }

    #[test]
    fn something_else_on_the_port_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n....................");
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("wrong greeting"), "{e}");
        fake.join().unwrap();
    }
}
