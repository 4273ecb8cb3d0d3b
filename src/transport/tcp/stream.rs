//! The connection under a TCP link: one type over the ways bytes can travel (plain TCP, or
//! TLS over it: [`super::tls`]), with the two things a link does with it: a blocking handshake over the whole
//! connection ([`Conn`] is `Read + Write`), then a split into a reading half and a writing
//! half that two threads own ([`Conn::split`]), plus a [`Cutter`] that any thread may use to
//! cut the connection, which wakes both halves out of a blocked read or write.
//!
//! Each way is a variant of the private enums here; the link code above sees only [`Conn`], [`ConnRead`], [`ConnWrite`] and
//! [`Cutter`]. The [`Cutter`] always holds the raw socket, whatever runs over it: shutting a
//! socket down is how a stuck half is woken, encrypted or not.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::tls::{self, TlsConfig, TlsError, TlsReader, TlsStream, TlsWriter};

/// How a connection's bytes travel.
enum Inner {
    /// Plain TCP: bytes as they are.
    Plain(TcpStream),
    /// TLS 1.3 over TCP (mutual certificates).
    Tls(Box<TlsStream>),
}

/// One established TCP connection of a link, before it is split.
pub(crate) struct Conn {
    inner: Inner,
}

impl Conn {
    /// A plain TCP connection; sets `TCP_NODELAY` (frames go out as soon as they are written:
    /// the link batches them itself).
    pub(crate) fn plain(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        Ok(Conn {
            inner: Inner::Plain(stream),
        })
    }

    /// The connecting side of a link: TLS when `tls` is set (the server's certificate must
    /// name `server_name`, the address it was dialled at), else plain. `timeout` bounds each
    /// read and write of the TLS handshake.
    pub(crate) fn client(
        stream: TcpStream,
        tls: Option<&TlsConfig>,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Conn, TlsError> {
        let Some(cfg) = tls else {
            return Conn::plain(stream).map_err(|e| TlsError::Io(e.to_string()));
        };
        Conn::tls(stream, timeout, |s| tls::client(s, cfg, server_name))
    }

    /// The listening side of a link: TLS when `tls` is set, else plain.
    pub(crate) fn server(
        stream: TcpStream,
        tls: Option<&TlsConfig>,
        timeout: Duration,
    ) -> Result<Conn, TlsError> {
        let Some(cfg) = tls else {
            return Conn::plain(stream).map_err(|e| TlsError::Io(e.to_string()));
        };
        Conn::tls(stream, timeout, |s| tls::server(s, cfg))
    }

    fn tls(
        stream: TcpStream,
        timeout: Duration,
        handshake: impl FnOnce(TcpStream) -> Result<TlsStream, TlsError>,
    ) -> Result<Conn, TlsError> {
        let io = |e: io::Error| TlsError::Io(e.to_string());
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let tls = handshake(stream)?;
        Ok(Conn {
            inner: Inner::Tls(Box::new(tls)),
        })
    }

    /// Sets how long one read and one write may block (`None`: forever); both halves share it.
    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> io::Result<()> {
        let s = self.tcp();
        s.set_read_timeout(read)?;
        s.set_write_timeout(write)
    }

    /// A handle that cuts this connection from any thread.
    pub(crate) fn cutter(&self) -> io::Result<Cutter> {
        Ok(Cutter(self.tcp().try_clone()?))
    }

    /// The socket under whatever runs over it.
    fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(s) => s,
            Inner::Tls(t) => t.tcp(),
        }
    }

    /// The reading and writing halves, for two threads.
    pub(crate) fn split(self) -> io::Result<(ConnRead, ConnWrite)> {
        match self.inner {
            Inner::Plain(s) => {
                let r = s.try_clone()?;
                Ok((
                    ConnRead(ReadInner::Plain(r)),
                    ConnWrite(WriteInner::Plain(s)),
                ))
            }
            Inner::Tls(t) => {
                let (r, w) = t.split()?;
                Ok((
                    ConnRead(ReadInner::Tls(Box::new(r))),
                    ConnWrite(WriteInner::Tls(Box::new(w))),
                ))
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.read(buf),
            Inner::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.write(buf),
            Inner::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(s) => s.flush(),
            Inner::Tls(t) => t.flush(),
        }
    }
}

enum ReadInner {
    Plain(TcpStream),
    Tls(Box<TlsReader>),
}

/// The reading half of a [`Conn`].
pub(crate) struct ConnRead(ReadInner);

impl ConnRead {
    /// Whether bytes wait to be read now (a read would not block). Plain TCP only: under TLS
    /// the socket's bytes may hold no complete record, so this says false.
    pub(crate) fn readable_now(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let ReadInner::Plain(s) = &self.0 else {
            return false;
        };
        let mut byte = [0u8; 1];
        matches!(
            recv(
                s.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
            ),
            Ok(1)
        )
    }
}

impl Read for ConnRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            ReadInner::Plain(s) => s.read(buf),
            ReadInner::Tls(t) => t.read(buf),
        }
    }
}

enum WriteInner {
    Plain(TcpStream),
    Tls(Box<TlsWriter>),
}

/// The writing half of a [`Conn`].
pub(crate) struct ConnWrite(WriteInner);

impl Write for ConnWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            WriteInner::Plain(s) => s.write(buf),
            WriteInner::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            WriteInner::Plain(s) => s.flush(),
            WriteInner::Tls(t) => t.flush(),
        }
    }
}

/// Frames up to this size are copied into one buffer and written together under TLS (each
/// write is a record); larger ones are written on their own.
const COALESCE_BYTES: usize = 64 << 10;

/// The most buffers one `writev` is given: Linux's `IOV_MAX`, so that a round of small
/// frames (a stream that the I/O thread keeps up with sends frames of a few elements) takes
/// about as few system calls as when they were copied into one buffer.
const GATHER_PIECES: usize = 1024;

impl ConnWrite {
    /// Writes every piece, in order and whole (an error as `write_all` has them). Plain TCP
    /// hands up to 1,024 pieces to each system call (`writev`) and copies nothing; TLS copies
    /// pieces up to 64 KiB into `scratch` and writes them together (a record each write),
    /// larger ones on their own. Does not flush.
    pub(crate) fn write_pieces<'a>(
        &mut self,
        pieces: impl IntoIterator<Item = &'a [u8]>,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        match &mut self.0 {
            WriteInner::Plain(s) => write_gathered(s, pieces),
            WriteInner::Tls(t) => write_coalesced(t.as_mut(), pieces, scratch),
        }
    }
}

/// [`ConnWrite::write_pieces`] over plain TCP.
fn write_gathered<'a>(
    s: &mut TcpStream,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<()> {
    let mut pieces = pieces.into_iter().filter(|p| !p.is_empty());
    // Ends: each pass writes up to GATHER_PIECES pieces of the finite iterator.
    loop {
        let mut slices = [IoSlice::new(&[]); GATHER_PIECES];
        let mut n = 0;
        for p in pieces.by_ref().take(GATHER_PIECES) {
            slices[n] = IoSlice::new(p);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        let mut bufs = &mut slices[..n];
        // Ends: each pass writes at least a byte, or returns.
        while !bufs.is_empty() {
            match s.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut bufs, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// [`ConnWrite::write_pieces`] under TLS.
fn write_coalesced<'a>(
    w: &mut impl Write,
    pieces: impl IntoIterator<Item = &'a [u8]>,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    scratch.clear();
    for p in pieces {
        if p.len() <= COALESCE_BYTES {
            scratch.extend_from_slice(p);
            continue;
        }
        if !scratch.is_empty() {
            w.write_all(scratch)?;
            scratch.clear();
        }
        w.write_all(p)?;
    }
    if !scratch.is_empty() {
        w.write_all(scratch)?;
        scratch.clear();
    }
    Ok(())
}

/// Cuts a connection: both directions shut down, so that a read or write blocked in another
/// thread returns at once. Cutting twice is harmless.
pub(crate) struct Cutter(TcpStream);

impl Cutter {
    /// Shuts the connection down both ways.
    pub(crate) fn cut(&self) {
        // Already shut down or reset: the connection is cut either way.
        let _ = self.0.shutdown(Shutdown::Both);
    }

    /// Shuts the writing direction down (the peer reads the end of the stream after what was
    /// written); reading goes on.
    pub(crate) fn close_writes(&self) {
        // Already shut down or reset: nothing more can be written either way.
        let _ = self.0.shutdown(Shutdown::Write);
    }
}

/// Cuts a connection once its handshake has taken `within`, unless dropped first: bounds the
/// whole handshake (TLS and iotstream's), which the sockets' timeouts cannot, as they bound
/// one read or write each (a peer sending a byte every few seconds never lets one expire).
/// One thread, which sleeps until the deadline or the drop.
pub(crate) struct HandshakeDeadline {
    /// Dropped to end the watch.
    done: Option<std::sync::mpsc::Sender<()>>,
    expired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HandshakeDeadline {
    /// Watches `socket` (a clone of it is cut at the deadline).
    pub(crate) fn start(socket: &TcpStream, within: Duration) -> io::Result<HandshakeDeadline> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cutter = Cutter(socket.try_clone()?);
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let expired = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&expired);
        let thread = std::thread::Builder::new()
            .name("tcp handshake deadline".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(within)
                {
                    flag.store(true, Ordering::SeqCst);
                    cutter.cut();
                }
            })?;
        Ok(HandshakeDeadline {
            done: Some(done),
            expired,
            thread: Some(thread),
        })
    }

    /// Ends the watch; whether the deadline had passed (the connection was cut) first.
    pub(crate) fn finish(mut self) -> bool {
        self.stop();
        self.expired.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn stop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            // The thread returns as soon as its channel is closed.
            let _ = t.join();
        }
    }
}

impl Drop for HandshakeDeadline {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The writing half of a client and the reading half of its server, over loopback, TLS
    /// when `tls` is set.
    fn halves(tls: Option<&TlsConfig>) -> (ConnWrite, ConnRead) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let wait = Duration::from_secs(20);
        let server_tls = tls.cloned();
        let server = std::thread::spawn(move || Conn::server(server, server_tls.as_ref(), wait));
        let client = Conn::client(client, tls, "127.0.0.1", wait).unwrap();
        let server = server.join().unwrap().unwrap();
        for c in [&client, &server] {
            c.set_timeouts(Some(wait), Some(wait)).unwrap();
        }
        (client.split().unwrap().1, server.split().unwrap().0)
    }

    /// Pieces of every size the writer hands over (empty ones, frames smaller and larger than
    /// what is coalesced, more pieces than one `writev` takes), written by `write_pieces` and
    /// read back in order.
    fn pieces_arrive_whole_and_in_order(tls: Option<&TlsConfig>) {
        let sizes = [0, 1, 7, 100, 4096, 3];
        let pieces: Vec<Vec<u8>> = (0..GATHER_PIECES + 100)
            .map(|k| {
                let len = match k {
                    _ if k % 100 == 99 => 300_000,
                    _ if k % 50 == 49 => 70_000,
                    _ => sizes[k % sizes.len()],
                };
                (0..len)
                    .map(|i| (i as u8) ^ (k as u8).wrapping_mul(31))
                    .collect()
            })
            .collect();
        let expected: Vec<u8> = pieces.concat();
        let (mut w, mut r) = halves(tls);
        let total = expected.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; total];
            r.read_exact(&mut got).unwrap();
            got
        });
        let mut scratch = Vec::new();
        w.write_pieces(pieces.iter().map(|p| p.as_slice()), &mut scratch)
            .unwrap();
        w.flush().unwrap();
        let got = reader.join().unwrap();
        let first_wrong = (0..total).find(|&i| got[i] != expected[i]);
        assert_eq!(
            first_wrong, None,
            "the bytes arrived altered ({total} bytes)"
        );
    }

    #[test]
    fn pieces_arrive_whole_and_in_order_over_plain_tcp() {
        pieces_arrive_whole_and_in_order(None);
    }

    #[test]
    fn pieces_arrive_whole_and_in_order_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls::tests::loopback_config(dir.path());
        pieces_arrive_whole_and_in_order(Some(&tls));
    }
}
