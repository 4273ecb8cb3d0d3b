//! The connection under a TCP link: one type over the ways bytes can travel (plain TCP, or
//! TLS over it: [`super::tls`]), with the two things a link does with it: a blocking handshake over the whole
//! connection ([`Conn`] is `Read + Write`), then a split into a reading half and a writing
//! half that two threads own ([`Conn::split`]), plus a [`Cutter`] that any thread may use to
//! cut the connection, which wakes both halves out of a blocked read or write.
//!
//! Each way is a variant of the private enums here; the link code above sees only [`Conn`], [`ConnRead`], [`ConnWrite`] and
//! [`Cutter`]. The [`Cutter`] always holds the raw socket, whatever runs over it: shutting a
//! socket down is how a stuck half is woken, encrypted or not.

use std::io::{self, Read, Write};
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
