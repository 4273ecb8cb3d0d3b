//! The connection under a TCP link: one type over the ways bytes can travel (plain TCP now,
//! TLS later), with the two things a link does with it: a blocking handshake over the whole
//! connection ([`Conn`] is `Read + Write`), then a split into a reading half and a writing
//! half that two threads own ([`Conn::split`]), plus a [`Cutter`] that any thread may use to
//! cut the connection, which wakes both halves out of a blocked read or write.
//!
//! A new transport (TLS: rustls over the same `TcpStream`) adds a variant to the private
//! enums here; the link code above sees only [`Conn`], [`ConnRead`], [`ConnWrite`] and
//! [`Cutter`]. The [`Cutter`] always holds the raw socket, whatever runs over it: shutting a
//! socket down is how a stuck half is woken, encrypted or not.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How a connection's bytes travel.
enum Inner {
    /// Plain TCP: bytes as they are.
    Plain(TcpStream),
}

/// One established TCP connection of a link, before it is split.
pub(crate) struct Conn {
    inner: Inner,
    peer: SocketAddr,
}

impl Conn {
    /// A plain TCP connection; sets `TCP_NODELAY` (frames go out as soon as they are written:
    /// the link batches them itself).
    pub(crate) fn plain(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(Conn {
            inner: Inner::Plain(stream),
            peer,
        })
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sets how long one read and one write may block (`None`: forever); both halves share it.
    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> io::Result<()> {
        match &self.inner {
            Inner::Plain(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    /// A handle that cuts this connection from any thread.
    pub(crate) fn cutter(&self) -> io::Result<Cutter> {
        match &self.inner {
            Inner::Plain(s) => Ok(Cutter(s.try_clone()?)),
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
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(s) => s.flush(),
        }
    }
}

enum ReadInner {
    Plain(TcpStream),
}

/// The reading half of a [`Conn`].
pub(crate) struct ConnRead(ReadInner);

impl Read for ConnRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            ReadInner::Plain(s) => s.read(buf),
        }
    }
}

enum WriteInner {
    Plain(TcpStream),
}

/// The writing half of a [`Conn`].
pub(crate) struct ConnWrite(WriteInner);

impl Write for ConnWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            WriteInner::Plain(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            WriteInner::Plain(s) => s.flush(),
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
