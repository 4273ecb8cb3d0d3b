//! POSIX shared-memory objects holding one ring each.
//!
//! A [`Segment`] is one mapping of a shared-memory object (`/dev/shm/<name>` on Linux) laid out
//! as a ring: the [`Header`] (384 bytes), then `capacity` data bytes. The creator
//! ([`Segment::create`]) sizes the object and writes the header; the other process maps the same
//! object with [`Segment::open`], which checks the header against the object's size. Each side
//! then builds its end on its own mapping: `Producer::new(segment)` or
//! `Consumer::new(segment)` ([`Producer`](super::ring::Producer),
//! [`Consumer`](super::ring::Consumer)).
//!
//! Dropping a `Segment` unmaps it; the object itself lives until [`unlink`] (the names stay in
//! `/dev/shm` until then, even after every process has exited). [`UnlinkGuard`] unlinks on drop,
//! for the process that owns the object's life.
//!
//! # Names
//!
//! `/iotstream.<app>.<run>.<edge>`, built by [`segment_name`]: `<app>` is the application's
//! name with every character other than ASCII letters, digits, `_` and `-` replaced by `_`
//! ([`sanitize_app`]), `<run>` identifies the run (its owner's pid and a nonce) and `<edge>` the
//! connection. No part contains `.` or `/`, so a sweeper can split a name into its parts, and
//! [`list_segments`] lists the objects whose names start with a prefix.

use std::ffi::c_void;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{mmap, munmap, shm_open, shm_unlink, MapFlags, ProtFlags};
use nix::sys::stat::{fstat, Mode};

use super::ring::{check_capacity, Header, RingMemory, MAX_CAPACITY, MIN_CAPACITY};
use super::sync::Shadow;

/// Bytes before the data area: the ring's header.
pub(crate) const HEADER_SIZE: usize = std::mem::size_of::<Header>();

// The layout the ring's documentation promises, checked at compile time (real atomics only:
// loom's are larger).
#[cfg(not(all(iotstream_loom, test)))]
const _: () = {
    use super::ring::{Identity, WakeWord};
    use std::mem::offset_of;
    assert!(HEADER_SIZE == 384);
    assert!(offset_of!(Header, id) + offset_of!(Identity, magic) == 0);
    assert!(offset_of!(Header, id) + offset_of!(Identity, version) == 8);
    assert!(offset_of!(Header, id) + offset_of!(Identity, header_size) == 12);
    assert!(offset_of!(Header, id) + offset_of!(Identity, capacity) == 16);
    assert!(offset_of!(Header, id) + offset_of!(Identity, producer) == 24);
    assert!(offset_of!(Header, id) + offset_of!(Identity, consumer) == 32);
    assert!(offset_of!(Header, id) + offset_of!(Identity, closed) == 40);
    assert!(offset_of!(Header, id) + offset_of!(Identity, reader_failed) == 44);
    assert!(offset_of!(Header, id) + offset_of!(Identity, stashed) == 48);
    assert!(offset_of!(Header, head) == 64);
    assert!(offset_of!(Header, tail) == 128);
    assert!(offset_of!(Header, data_wake) + offset_of!(WakeWord, seq) == 192);
    assert!(offset_of!(Header, data_wake) + offset_of!(WakeWord, waiting) == 196);
    assert!(offset_of!(Header, space_wake) + offset_of!(WakeWord, seq) == 256);
    assert!(offset_of!(Header, space_wake) + offset_of!(WakeWord, waiting) == 260);
    assert!(offset_of!(Header, consumed) == 320);
};

/// The first part of every segment name.
pub(crate) const NAME_PREFIX: &str = "/iotstream.";

/// The longest name, leading `/` included (`NAME_MAX` of a file in `/dev/shm`, plus the `/`).
pub(crate) const NAME_MAX: usize = 255;

/// Where Linux keeps shared-memory objects.
const SHM_DIR: &str = "/dev/shm";

/// Why a shared-memory operation failed; every variant names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SegmentError {
    /// The name is not a valid shared-memory object name.
    #[error("invalid shared-memory object name '{name}': {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call failed.
    #[error("shared-memory object '{name}': {op} failed: {errno}")]
    Os {
        /// The object's name.
        name: String,
        /// The call (`shm_open`, `ftruncate`, ...).
        op: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// The file system of shared-memory objects has no room (or the process no memory) for
    /// the object's pages.
    #[error(
        "no room in {SHM_DIR} for shared-memory object '{name}': it needs {needed} bytes and \
         {SHM_DIR} has {free} bytes free ({errno})"
    )]
    NoRoom {
        /// The object's name.
        name: String,
        /// Bytes the object needs.
        needed: usize,
        /// Bytes free in [`SHM_DIR`] when it failed (0 if they could not be read).
        free: u64,
        /// What reserving its pages said: `ENOSPC` (the file system is full) or `ENOMEM`.
        errno: Errno,
    },
    /// The object exists but is not a usable ring (wrong size, header, version, ...).
    #[error("shared-memory object '{name}' is not a usable ring: {reason}")]
    Invalid {
        /// The object's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One mapping of a shared-memory object holding a ring. Unmapped on drop (not unlinked).
pub(crate) struct Segment {
    name: String,
    base: NonNull<c_void>,
    /// Bytes mapped: `HEADER_SIZE + capacity`.
    map_len: usize,
    capacity: usize,
    shadow: Shadow,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish()
    }
}

// SAFETY: a mapping belongs to the process, not to a thread; the header is atomics and the data
// bytes are accessed only through the ring protocol, which orders every access (see `HeapRing`'s
// `Sync` in ring.rs).
unsafe impl Send for Segment {}
// SAFETY: as for `Send`; `&Segment` only gives out the header (atomics) and the data pointer.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates the object `name` (which must not exist), sized for a ring of `capacity` data
    /// bytes (a power of two from 64 bytes to 4 GiB), readable and writable by this user only,
    /// maps it and writes an empty ring's header. If anything fails, the object is removed again.
    pub(crate) fn create(name: &str, capacity: usize) -> Result<Segment, SegmentError> {
        check_name(name)?;
        check_capacity(capacity).map_err(|e| invalid(name, e))?;
        let fd = shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|errno| os(name, "shm_open (create)", errno))?;
        // The object exists from here on: remove it if we cannot finish.
        let guard = UnlinkGuard::new(name);
        let map_len = HEADER_SIZE + capacity;
        let size = libc::off_t::try_from(map_len)
            .map_err(|_| invalid(name, format_args!("{map_len} bytes do not fit in an off_t")))?;
        nix::unistd::ftruncate(&fd, size).map_err(|errno| os(name, "ftruncate", errno))?;
        reserve(name, &fd, size)?;
        let segment = Segment::map(name, &fd, map_len)?;
        segment
            .header()
            .init(capacity)
            .map_err(|e| invalid(name, e))?;
        guard.disarm();
        Ok(segment)
    }

    /// Maps the existing object `name` and checks that it holds a ring that fits its size
    /// (magic, layout version, header size, capacity). A missing, truncated or foreign object
    /// is an error naming it.
    pub(crate) fn open(name: &str) -> Result<Segment, SegmentError> {
        check_name(name)?;
        let fd = shm_open(name, OFlag::O_RDWR, Mode::empty())
            .map_err(|errno| os(name, "shm_open", errno))?;
        let stat = fstat(&fd).map_err(|errno| os(name, "fstat", errno))?;
        // `off_t` is 32 bits wide on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let size = i64::from(stat.st_size);
        let smallest = (HEADER_SIZE + MIN_CAPACITY) as i64;
        let largest = (HEADER_SIZE + MAX_CAPACITY) as i64;
        if !(smallest..=largest).contains(&size) {
            return Err(invalid(
                name,
                format_args!(
                    "it is {size} bytes; a ring takes {HEADER_SIZE} header bytes plus \
                     {MIN_CAPACITY} to {MAX_CAPACITY} data bytes"
                ),
            ));
        }
        let map_len = size as usize;
        let segment = Segment::map(name, &fd, map_len)?;
        segment
            .header()
            .check(segment.capacity)
            .map_err(|e| invalid(name, e))?;
        Ok(segment)
    }

    /// Maps `map_len` bytes of `fd`, shared and writable.
    fn map(name: &str, fd: &OwnedFd, map_len: usize) -> Result<Segment, SegmentError> {
        let len = NonZeroUsize::new(map_len).ok_or_else(|| invalid(name, "it is empty"))?;
        // SAFETY: a new mapping at an address the kernel chooses (no address given, no
        // MAP_FIXED), so no existing memory of this process is affected; `fd` is open.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|errno| os(name, "mmap", errno))?;
        Ok(Segment {
            name: name.to_string(),
            base,
            map_len,
            capacity: map_len - HEADER_SIZE,
            shadow: Shadow::new(map_len - HEADER_SIZE),
        })
    }

    /// The object's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Data bytes of the ring.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly the mapping made in `map`, unmapped only here;
        // every reference into it borrows `self`, so none outlives this call.
        if let Err(errno) = unsafe { munmap(self.base, self.map_len) } {
            tracing::warn!(segment = %self.name, %errno, "munmap failed");
        }
    }
}

// SAFETY: the mapping is `HEADER_SIZE + capacity` bytes, page-aligned, readable and writable, and
// lives until `drop`. The header is at its start (page alignment satisfies `Header`'s 64), and
// `Header` is only atomics, valid for any bytes and shared by design. The data area starts at
// `HEADER_SIZE` (384, a multiple of 64), `capacity` bytes, touched in this process only by the
// ring ends built on segments of this object.
unsafe impl RingMemory for Segment {
    fn header(&self) -> &Header {
        // SAFETY: see the impl's comment.
        unsafe { self.base.cast::<Header>().as_ref() }
    }
    fn data(&self) -> NonNull<u8> {
        // SAFETY: `HEADER_SIZE < map_len`, so the result is inside the mapping, not null.
        unsafe { self.base.cast::<u8>().add(HEADER_SIZE) }
    }
    fn data_len(&self) -> usize {
        self.capacity
    }
    fn shadow(&self) -> &Shadow {
        &self.shadow
    }
}

/// Removes the object `name`: it disappears from `/dev/shm`; mappings stay valid until unmapped.
pub(crate) fn unlink(name: &str) -> Result<(), SegmentError> {
    check_name(name)?;
    shm_unlink(name).map_err(|errno| os(name, "shm_unlink", errno))
}

/// Unlinks a shared-memory object when dropped (errors ignored: it may already be gone), unless
/// [`disarm`](Self::disarm)ed. Tests use it so that no object outlives a failing test.
#[derive(Debug)]
pub(crate) struct UnlinkGuard {
    name: Option<String>,
}

impl UnlinkGuard {
    /// Unlinks `name` on drop.
    pub(crate) fn new(name: &str) -> UnlinkGuard {
        UnlinkGuard {
            name: Some(name.to_string()),
        }
    }

    /// Keeps the object: nothing happens on drop.
    pub(crate) fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for UnlinkGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = shm_unlink(name.as_str());
        }
    }
}

/// `app` with every character other than ASCII letters, digits, `_` and `-` replaced by `_`,
/// cut to 64 characters; `"app"` if empty.
pub(crate) fn sanitize_app(app: &str) -> String {
    let s: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "app".to_string()
    } else {
        s
    }
}

/// The name of the object of connection `edge` in run `run` of application `app`:
/// `/iotstream.<app>.<run>.<edge>`, `app` sanitized ([`sanitize_app`]). `run` and `edge` must
/// be non-empty ASCII letters, digits, `_` and `-` (no `.` or `/`), and the whole name at most
/// [`NAME_MAX`] bytes.
pub(crate) fn segment_name(app: &str, run: &str, edge: &str) -> Result<String, SegmentError> {
    let name = format!("{NAME_PREFIX}{}.{run}.{edge}", sanitize_app(app));
    for (what, part) in [("run", run), ("edge", edge)] {
        if part.is_empty() {
            return Err(bad_name(&name, format_args!("the {what} part is empty")));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(bad_name(
                &name,
                format_args!(
                    "the {what} part '{part}' contains {c:?} (only ASCII letters, digits, \
                     '_' and '-')"
                ),
            ));
        }
    }
    check_name(&name)?;
    Ok(name)
}

/// Checks a POSIX shared-memory object name: `/` then 1 to 254 bytes, none of them `/` or NUL.
pub(crate) fn check_name(name: &str) -> Result<(), SegmentError> {
    let Some(rest) = name.strip_prefix('/') else {
        return Err(bad_name(name, "it must start with '/'"));
    };
    if rest.is_empty() {
        return Err(bad_name(name, "it is empty after the '/'"));
    }
    if name.len() > NAME_MAX {
        return Err(bad_name(
            name,
            format_args!("it is {} bytes, at most {NAME_MAX}", name.len()),
        ));
    }
    if rest.contains(['/', '\0']) {
        return Err(bad_name(name, "it contains '/' or NUL after the first '/'"));
    }
    if rest == "." || rest == ".." {
        return Err(bad_name(name, "it is '.' or '..'"));
    }
    Ok(())
}

/// The names (with their leading `/`) of the shared-memory objects whose names start with
/// `prefix` (with or without its leading `/`), sorted; empty if `/dev/shm` cannot be read.
pub(crate) fn list_segments(prefix: &str) -> Vec<String> {
    let prefix = prefix.strip_prefix('/').unwrap_or(prefix);
    let Ok(dir) = std::fs::read_dir(SHM_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .map(|name| format!("/{name}"))
        .collect();
    names.sort();
    names
}

/// Reserves the pages of the object `fd` (`size` bytes) now, so that a full `/dev/shm` (a
/// container's 64 MiB, say) is an error when the object is made and not a `SIGBUS` in whichever
/// process first touches a page that finds no room. A file system that cannot reserve
/// (`EOPNOTSUPP`) leaves the pages to be allocated as they are touched, as before.
fn reserve(name: &str, fd: &OwnedFd, size: libc::off_t) -> Result<(), SegmentError> {
    use nix::fcntl::{fallocate, FallocateFlags};
    match fallocate(fd, FallocateFlags::empty(), 0, size) {
        Ok(()) | Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => Ok(()),
        Err(errno @ (Errno::ENOSPC | Errno::ENOMEM)) => Err(SegmentError::NoRoom {
            name: name.to_string(),
            needed: size as usize,
            free: nix::sys::statvfs::statvfs(SHM_DIR)
                .map(|v| {
                    // Both are 32 bits wide on 32-bit targets.
                    #[allow(clippy::useless_conversion)]
                    u64::from(v.blocks_available()).saturating_mul(u64::from(v.fragment_size()))
                })
                .unwrap_or(0),
            errno,
        }),
        Err(errno) => Err(os(name, "fallocate", errno)),
    }
}

fn os(name: &str, op: &'static str, errno: Errno) -> SegmentError {
    SegmentError::Os {
        name: name.to_string(),
        op,
        errno,
    }
}

fn invalid(name: &str, reason: impl fmt::Display) -> SegmentError {
    SegmentError::Invalid {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

fn bad_name(name: &str, reason: impl fmt::Display) -> SegmentError {
    SegmentError::Name {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(all(test, not(iotstream_loom)))]
mod tests {
    use super::*;
    use crate::transport::shm::ring::{Consumer, Holder, PayloadMut, Producer, RingError, Wait};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{fork, ForkResult, Pid};
    use std::time::Duration;

    /// A name unique to this test process and `test`.
    fn test_name(test: &str) -> String {
        segment_name(
            "iotstream-unit-tests",
            &std::process::id().to_string(),
            test,
        )
        .unwrap()
    }

    /// u64 values `0..n` in frames of `per_frame`, `frames_per_batch` frames per publish; then
    /// close. Waits for space in bounded waits, giving up if the consumer's process is gone.
    /// Allocates nothing and never panics on its own (it runs in a forked child).
    fn produce(
        p: &mut Producer<Segment>,
        n: u64,
        per_frame: u64,
        frames_per_batch: u32,
    ) -> Result<(), RingError> {
        let mut next = 0u64;
        let mut in_batch = 0;
        while next < n {
            let count = per_frame.min(n - next);
            let len = (count * 8) as usize;
            let fill = |buf: &mut PayloadMut<'_>| {
                for i in 0..count {
                    buf.write_at(8 * i as usize, &(next + i).to_ne_bytes());
                }
            };
            if p.try_write(len, fill)? {
                next += count;
                in_batch += 1;
                if in_batch == frames_per_batch {
                    p.publish();
                    in_batch = 0;
                }
                continue;
            }
            p.publish();
            in_batch = 0;
            while p.wait_for_space(len, Duration::from_millis(100))? == Wait::TimedOut {
                if !p.consumer().is_some_and(crate::transport::holder_alive) {
                    return Err(RingError::Closed);
                }
            }
        }
        p.close();
        Ok(())
    }

    /// Reads u64 values until the end of the stream and checks they are `0, 1, 2, ...`;
    /// returns their count and sum. `producer_gone` is asked after every timed-out wait.
    fn consume(
        c: &mut Consumer<Segment>,
        mut producer_gone: impl FnMut() -> bool,
    ) -> Result<(u64, u64), String> {
        let (mut count, mut sum) = (0u64, 0u64);
        loop {
            for _ in 0..8 {
                let frame = c
                    .try_read(|payload| {
                        let bytes = payload.to_vec();
                        if bytes.len() % 8 != 0 {
                            return Err(format!("a payload of {} bytes", bytes.len()));
                        }
                        let values = bytes
                            .chunks_exact(8)
                            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
                        for v in values {
                            if v != count {
                                return Err(format!("expected {count}, read {v}"));
                            }
                            count += 1;
                            sum = sum.wrapping_add(v);
                        }
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                match frame {
                    Some(checked) => checked?,
                    None => break,
                }
            }
            c.release().map_err(|e| e.to_string())?;
            if c.is_closed().map_err(|e| e.to_string())? {
                return Ok((count, sum));
            }
            if c.wait_for_data(Duration::from_millis(100))
                .map_err(|e| e.to_string())?
                == Wait::TimedOut
                && producer_gone()
                && !c.is_closed().map_err(|e| e.to_string())?
                && c.wait_for_data(Duration::ZERO).map_err(|e| e.to_string())? == Wait::TimedOut
            {
                return Err(format!("the producer died after {count} values"));
            }
        }
    }

    #[test]
    fn names_are_built_sanitized_and_checked() {
        assert_eq!(
            segment_name("quake detector/v2", "1234-ab", "e3").unwrap(),
            "/iotstream.quake_detector_v2.1234-ab.e3"
        );
        assert_eq!(segment_name("", "1", "e0").unwrap(), "/iotstream.app.1.e0");
        assert_eq!(sanitize_app("ä.b").len(), 3);
        assert_eq!(sanitize_app(&"x".repeat(300)).len(), 64);
        for (run, edge) in [("", "e0"), ("1.2", "e0"), ("1", "a/b"), ("1", "")] {
            let err = segment_name("app", run, edge).unwrap_err();
            assert!(matches!(err, SegmentError::Name { .. }), "{err}");
        }
        let long = "r".repeat(300);
        let err = segment_name("app", &long, "e0").unwrap_err().to_string();
        assert!(err.contains("at most 255"), "{err}");
        for bad in ["", "/", "noslash", "/a/b", "/a\0b", "/.."] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("/iotstream.a.1.e0").unwrap();
        check_name(&format!("/{}", "n".repeat(254))).unwrap();
        assert!(check_name(&format!("/{}", "n".repeat(255))).is_err());
    }

    #[test]
    fn create_open_list_and_unlink() {
        let name = test_name("lifecycle");
        let _guard = UnlinkGuard::new(&name);
        let created = Segment::create(&name, 4096).unwrap();
        assert_eq!(created.name(), name);
        assert_eq!(created.capacity(), 4096);
        let opened = Segment::open(&name).unwrap();
        assert_eq!(opened.capacity(), 4096);
        assert_eq!(list_segments(&name), vec![name.clone()]);
        assert_eq!(
            list_segments(&name[1..]),
            vec![name.clone()],
            "prefix without '/'"
        );
        // Two mappings, one ring: what one writes, the other reads.
        let mut p = Producer::new(created).unwrap();
        let mut c = Consumer::new(opened).unwrap();
        assert!(p.try_write(5, |b| b.copy_from_slice(b"hello")).unwrap());
        p.publish();
        assert_eq!(
            c.try_read(|b| b.to_vec()).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        unlink(&name).unwrap();
        assert!(list_segments(&name).is_empty());
        // Mappings outlive the name.
        assert!(p.try_write(3, |b| b.copy_from_slice(b"bye")).unwrap());
        p.publish();
        assert_eq!(
            c.try_read(|b| b.to_vec()).unwrap().as_deref(),
            Some(&b"bye"[..])
        );
        let err = unlink(&name).unwrap_err();
        assert_eq!(
            err,
            SegmentError::Os {
                name: name.clone(),
                op: "shm_unlink",
                errno: Errno::ENOENT
            }
        );
    }

    #[test]
    fn create_and_open_errors_name_the_object() {
        let name = test_name("errors");
        let _guard = UnlinkGuard::new(&name);
        let err = Segment::open(&name).unwrap_err();
        assert!(
            matches!(&err, SegmentError::Os { errno: Errno::ENOENT, name: n, .. } if *n == name),
            "{err}"
        );
        let err = Segment::create(&name, 100).unwrap_err();
        assert!(err.to_string().contains(&name) && err.to_string().contains("power of two"));
        assert!(
            list_segments(&name).is_empty(),
            "a refused create leaves nothing"
        );
        let _seg = Segment::create(&name, 64).unwrap();
        let err = Segment::create(&name, 64).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::Os {
                    errno: Errno::EEXIST,
                    ..
                }
            ),
            "{err}"
        );
        let err = Segment::create("no-slash", 64).unwrap_err();
        assert!(matches!(err, SegmentError::Name { .. }), "{err}");
    }

    /// Creates `name` by hand with `size` bytes, the first of which are `bytes`.
    fn raw_object(name: &str, size: usize, bytes: &[u8]) {
        let fd = shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        nix::unistd::ftruncate(&fd, size as libc::off_t).unwrap();
        nix::unistd::write(&fd, bytes).unwrap();
    }

    #[test]
    fn open_refuses_truncated_and_foreign_objects() {
        let cases: [(&str, usize, Vec<u8>, &str); 4] = [
            ("truncated", 100, vec![], "it is 100 bytes"),
            ("foreign", 4096, b"#!/bin/sh\n".to_vec(), "magic"),
            ("zeroed", HEADER_SIZE + 64, vec![], "not initialised yet"),
            ("other-size", HEADER_SIZE + 128, vec![], ""),
        ];
        for (test, size, bytes, needle) in cases {
            let name = test_name(test);
            let _guard = UnlinkGuard::new(&name);
            if test == "other-size" {
                // A real ring header claiming 64 data bytes, in an object of 128.
                let seg = Segment::create(&name, 64).unwrap();
                drop(seg);
                let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).unwrap();
                nix::unistd::ftruncate(&fd, size as libc::off_t).unwrap();
            } else {
                raw_object(&name, size, &bytes);
            }
            let err = Segment::open(&name).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, SegmentError::Invalid { .. }),
                "{test}: {text}"
            );
            assert!(text.contains(&name), "{test}: {text}");
            let needle = if needle.is_empty() {
                "capacity is 64"
            } else {
                needle
            };
            assert!(text.contains(needle), "{test}: {text}");
        }
    }

    #[test]
    fn two_threads_move_10m_u64_through_a_4_kib_segment() {
        const N: u64 = 10_000_000;
        let name = test_name("threads");
        let _guard = UnlinkGuard::new(&name);
        let mut c = Consumer::new(Segment::create(&name, 4096).unwrap()).unwrap();
        let mut p = Producer::new(Segment::open(&name).unwrap()).unwrap();
        let (count, sum) = std::thread::scope(|s| {
            let producer = s.spawn(move || produce(&mut p, N, 128, 3));
            let got = consume(&mut c, || producer.is_finished());
            producer.join().unwrap().unwrap();
            got.unwrap()
        });
        assert_eq!(count, N);
        assert_eq!(sum, N * (N - 1) / 2);
    }

    /// Kills and reaps the child if the test fails before reaping it.
    struct Reap(Option<Pid>);

    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(pid) = self.0.take() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
        }
    }

    #[test]
    fn two_processes_move_10m_u64_through_a_4_kib_segment() {
        const N: u64 = 10_000_000;
        let name = test_name("processes");
        let _guard = UnlinkGuard::new(&name);
        let consumer_side = Segment::create(&name, 4096).unwrap();
        let producer_side = Segment::open(&name).unwrap();
        // SAFETY: the child only uses memory mapped before the fork, atomics, the futex and
        // getpid/kill system calls, and reads its start stamp from `/proc` into stack buffers
        // (`process::own_start_stamp`; `produce` allocates nothing), catches any panic, and ends
        // with `_exit`, so it neither needs locks other threads of the test harness may hold,
        // nor runs their code or destructors.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match Producer::new(
                        producer_side,
                    ) {
                        Ok(mut p) => match produce(&mut p, N, 200, 2) {
                            Ok(()) => 0,
                            Err(_) => 2,
                        },
                        Err(_) => 3,
                    }))
                    .unwrap_or(4);
                // SAFETY: ends the child at once, as the comment on `fork` says.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(producer_side);
                let mut reap = Reap(Some(child));
                // The child's own start, read while it runs (10 M elements take a while).
                let child_started = crate::transport::process::start_stamp(child.as_raw() as u32);
                let mut c = Consumer::new(consumer_side).unwrap();
                let mut exited = None;
                let got = consume(&mut c, || {
                    if exited.is_none() {
                        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) => {}
                            status => exited = Some(status),
                        }
                    }
                    exited.is_some()
                });
                let status = match exited {
                    Some(status) => status,
                    None => waitpid(child, None),
                };
                reap.0 = None;
                assert_eq!(status, Ok(WaitStatus::Exited(child, 0)));
                // The child recorded itself: its pid and its own start, not the stamp of its
                // parent that it inherited in memory.
                let child_started = child_started.expect("the child's /proc entry");
                assert_eq!(
                    c.producer(),
                    Some(Holder::new(child.as_raw() as u32, child_started))
                );
                let (count, sum) = got.unwrap();
                assert_eq!(count, N);
                assert_eq!(sum, N * (N - 1) / 2);
            }
        }
    }
}
