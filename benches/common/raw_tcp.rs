//! The raw TCP baseline of the TCP benches: the bytes a TCP link of `u64` moves, with nothing of
//! iotstream around them.
//!
//! One writer thread makes `n` numbers (`i * 7`, what the benches' map computes) in batches of
//! `batch` elements and writes each batch as one length-prefixed buffer (a little-endian `u32`
//! byte count, then the elements' little-endian bytes) with `TCP_NODELAY`; one reader thread
//! reads each batch whole and sums it. No acknowledgements, no sequence numbers, no handshake,
//! no back-pressure beyond the socket's own: the floor a link can approach, not reach.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

/// Moves `0..n` (times 7) in batches of `batch` from a writer thread to a reader thread over a
/// connection to `listen_ip` (a loopback address), and checks that the reader got every element
/// (count and sum). Panics on any socket error or a wrong count: a baseline that fails is no
/// baseline.
pub fn raw_tcp_run(n: u64, batch: usize, listen_ip: &str) {
    assert!(batch > 0, "batch must be at least one element");
    let listener = TcpListener::bind((listen_ip, 0)).expect("bind the raw reader");
    let at = listener.local_addr().expect("the raw reader's address");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept the raw writer");
        s.set_nodelay(true).expect("TCP_NODELAY");
        let (mut count, mut sum) = (0u64, 0u64);
        let mut buf = vec![0u8; batch * 8];
        let mut len = [0u8; 4];
        loop {
            match s.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("raw reader: {e}"),
            }
            let bytes = u32::from_le_bytes(len) as usize;
            assert!(
                bytes <= buf.len() && bytes % 8 == 0,
                "raw reader: bad length {bytes}"
            );
            s.read_exact(&mut buf[..bytes])
                .expect("raw reader: a batch");
            for v in buf[..bytes].chunks_exact(8) {
                sum = sum.wrapping_add(u64::from_le_bytes(v.try_into().expect("8 bytes")));
            }
            count += (bytes / 8) as u64;
        }
        (count, sum)
    });
    let writer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(at).expect("connect to the raw reader");
        s.set_nodelay(true).expect("TCP_NODELAY");
        let mut buf = Vec::with_capacity(4 + batch * 8);
        let mut next = 0u64;
        while next < n {
            let end = (next + batch as u64).min(n);
            buf.clear();
            buf.extend_from_slice(&(((end - next) * 8) as u32).to_le_bytes());
            for v in next..end {
                buf.extend_from_slice(&v.wrapping_mul(7).to_le_bytes());
            }
            s.write_all(&buf).expect("raw writer: a batch");
            next = end;
        }
        // Dropping the stream closes it: the reader sees the end.
    });
    writer.join().expect("the raw writer thread");
    let (count, sum) = reader.join().expect("the raw reader thread");
    // 7 · n(n-1)/2, modulo 2^64 as the wrapping sums are.
    let want = (7 * (n as u128) * (n as u128).saturating_sub(1) / 2) as u64;
    assert_eq!(count, n, "the raw reader got {count} of {n} elements");
    assert_eq!(sum, want, "the raw reader's sum");
}
