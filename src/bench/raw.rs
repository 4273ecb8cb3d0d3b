//! The baselines: the same bytes moved with nothing of iotstream around them, fed the way the
//! pattern feeds the graph (`batch`: a batch per message, publish or write; `single`: one
//! element each), measured in the same run as the graphs.
//!
//! - **crossbeam** (for `thread` and `threads`): source → map → sink on three threads joined by
//!   bounded crossbeam channels (one element per message, or one `Vec` per batch).
//! - **shm ring** (for `processes`): a minimal single-producer single-consumer byte ring in
//!   shared memory (an anonymous shared mapping inherited across `fork`), atomics for the
//!   positions, a futex to sleep on after a short spin; the producer process makes and maps the
//!   elements straight into the ring, the consumer process copies them out and counts.
//! - **raw tcp** (for `tcp`): a writer thread writing the elements' bytes to a loopback socket
//!   (`TCP_NODELAY`), a reader thread reading and counting them. No framing, no
//!   acknowledgements: the floor a link can approach, not reach.
//!
//! Latency: the same ping-pong as the graphs (one element in flight, half the round trip, at
//! the same pace: back to back, or the next ping at the next tick of `--rate`): driver → echo →
//! pong over channels; there and back over two rings; there and back over one socket.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::element::Payload;
use super::{emit, now_ns, percentiles, Pace, Params, Pattern, CLOCK_EVERY, WARM_UP};

/// The source side of a baseline: counts, and knows when its duration (counted from its first
/// element) is over.
struct Clock {
    deadline: Instant,
    start_ns: u64,
    next: u64,
}

impl Clock {
    fn start(duration: Duration) -> Clock {
        Clock {
            start_ns: now_ns(),
            deadline: Instant::now() + duration,
            next: 0,
        }
    }
    fn going(&self) -> bool {
        Instant::now() < self.deadline
    }
    /// For a latency run: waits for the next tick of `pace`, then says whether the duration
    /// still runs.
    fn paced(&self, pace: &mut Pace) -> bool {
        pace.wait();
        self.going()
    }
    /// The next element, mapped as the graphs' map stage maps it.
    fn element<const N: usize>(&mut self) -> Payload<N> {
        let e = Payload::<N>::new(self.next).mapped();
        self.next += 1;
        e
    }
}

fn emit_throughput(sent: u64, start_ns: u64, delivered: u64, end_ns: u64) {
    emit(json!({
        "sent": sent,
        "start_ns": start_ns,
        "delivered": delivered,
        "end_ns": end_ns,
    }));
}

fn emit_latency(sent: u64, mut samples: Vec<u64>) {
    let received = samples.len() as u64;
    if samples.len() > 2 * WARM_UP {
        samples.drain(..WARM_UP);
    }
    let (p50, p99, p999) = percentiles(&mut samples);
    emit(json!({
        "sent": sent,
        "delivered": received,
        "samples": samples.len(),
        "p50_ns": p50,
        "p99_ns": p99,
        "p999_ns": p999,
    }));
}

fn thread_failed(what: &str) -> String {
    format!("the baseline's {what} thread panicked")
}

// ---------------------------------------------------------------------------------------------
// crossbeam

/// source → map → sink over bounded crossbeam channels.
pub(crate) fn crossbeam_throughput<const N: usize>(p: &Params) -> Result<(), String> {
    let duration = p.duration;
    match p.pattern {
        Pattern::Single => {
            let (tx1, rx1) = crossbeam_channel::bounded::<Payload<N>>(p.capacity);
            let (tx2, rx2) = crossbeam_channel::bounded::<Payload<N>>(p.capacity);
            let source = std::thread::spawn(move || {
                let mut c = Clock::start(duration);
                while c.going() {
                    for _ in 0..CLOCK_EVERY {
                        let _ = tx1.send(Payload::new(c.next));
                        c.next += 1;
                    }
                }
                (c.next, c.start_ns)
            });
            let map = std::thread::spawn(move || {
                for e in rx1 {
                    let _ = tx2.send(e.mapped());
                }
            });
            let delivered = rx2.iter().count() as u64;
            let end_ns = now_ns();
            let (sent, start_ns) = source.join().map_err(|_| thread_failed("source"))?;
            map.join().map_err(|_| thread_failed("map"))?;
            emit_throughput(sent, start_ns, delivered, end_ns);
        }
        Pattern::Batch => {
            let slots = (p.capacity / p.batch).max(2);
            let batch = p.batch;
            let (tx1, rx1) = crossbeam_channel::bounded::<Vec<Payload<N>>>(slots);
            let (tx2, rx2) = crossbeam_channel::bounded::<Vec<Payload<N>>>(slots);
            let source = std::thread::spawn(move || {
                let mut c = Clock::start(duration);
                while c.going() {
                    let start = c.next;
                    let v: Vec<Payload<N>> =
                        (start..start + batch as u64).map(Payload::new).collect();
                    c.next += batch as u64;
                    let _ = tx1.send(v);
                }
                (c.next, c.start_ns)
            });
            let map = std::thread::spawn(move || {
                for mut v in rx1 {
                    // Mapped in place and passed on, as a graph's map stage does with a batch
                    // only it holds (`Outputs::forward`).
                    v.iter_mut().for_each(Payload::map_in_place);
                    let _ = tx2.send(v);
                }
            });
            let delivered = rx2.iter().map(|v| v.len() as u64).sum();
            let end_ns = now_ns();
            let (sent, start_ns) = source.join().map_err(|_| thread_failed("source"))?;
            map.join().map_err(|_| thread_failed("map"))?;
            emit_throughput(sent, start_ns, delivered, end_ns);
        }
    }
    Ok(())
}

/// ping → echo → pong over crossbeam channels, the pong thread telling the driver.
pub(crate) fn crossbeam_latency<const N: usize>(p: &Params) -> Result<(), String> {
    let (tx1, rx1) = crossbeam_channel::bounded::<Payload<N>>(1);
    let (tx2, rx2) = crossbeam_channel::bounded::<Payload<N>>(1);
    let (tx3, rx3) = crossbeam_channel::bounded::<()>(1);
    let echo = std::thread::spawn(move || {
        for e in rx1 {
            let _ = tx2.send(e.mapped());
        }
    });
    let pong = std::thread::spawn(move || {
        for _ in rx2 {
            let _ = tx3.send(());
        }
    });
    let mut c = Clock::start(p.duration);
    let mut pace = Pace::new(p.rate);
    let mut samples = Vec::new();
    while c.paced(&mut pace) {
        let t0 = now_ns();
        let e = Payload::<N>::new(c.next);
        c.next += 1;
        tx1.send(e)
            .map_err(|_| "the echo thread is gone".to_string())?;
        rx3.recv()
            .map_err(|_| "the pong thread is gone".to_string())?;
        samples.push(now_ns().saturating_sub(t0) / 2);
    }
    drop(tx1);
    echo.join().map_err(|_| thread_failed("echo"))?;
    pong.join().map_err(|_| thread_failed("pong"))?;
    emit_latency(c.next, samples);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// shared-memory ring

/// One cache line of its own.
#[repr(C, align(64))]
struct Line<T>(T);

/// A futex word and the flag saying that somebody sleeps on it.
#[repr(C)]
struct Wake {
    seq: AtomicU32,
    waiting: AtomicU32,
}

/// The header of a ring: positions in bytes since the start (never wrapped), wake words,
/// the producer's "no more" flag, and the consumer's results.
#[repr(C)]
struct Header {
    head: Line<AtomicU64>,
    tail: Line<AtomicU64>,
    data: Line<Wake>,
    space: Line<Wake>,
    closed: Line<AtomicU32>,
    delivered: Line<AtomicU64>,
    end_ns: AtomicU64,
}

/// Where a ring's data starts after its header.
const DATA_OFFSET: usize = 4096;

/// Spins before sleeping on the futex (as many as the crate's ring).
const SPIN: u32 = 100;

/// A ring in a shared mapping made before `fork`: both processes see the same one.
struct Ring {
    header: *const Header,
    data: *mut u8,
    mask: u64,
}

impl Ring {
    fn header(&self) -> &Header {
        // SAFETY: the header lies at the start of a live shared mapping, zeroed when made
        // (all zeroes is a valid Header: atomics of 0), and is only used through atomics.
        unsafe { &*self.header }
    }
    fn capacity(&self) -> u64 {
        self.mask + 1
    }
}

/// A shared anonymous mapping holding `rings` rings of `capacity` bytes (a power of two),
/// each starting on a page of its own.
struct Mapping {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
    capacity: usize,
    stride: usize,
}

impl Mapping {
    fn new(rings: usize, capacity: usize) -> Result<Mapping, String> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        assert!(capacity.is_power_of_two());
        assert!(std::mem::size_of::<Header>() <= DATA_OFFSET);
        let stride = (DATA_OFFSET + capacity).next_multiple_of(4096);
        let len = rings * stride;
        let size = std::num::NonZeroUsize::new(len).ok_or("an empty ring")?;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }
        .map_err(|e| format!("cannot map {len} bytes of shared memory for the raw ring: {e}"))?;
        Ok(Mapping {
            ptr,
            len,
            capacity,
            stride,
        })
    }

    fn ring(&self, i: usize) -> Ring {
        let base = self.ptr.as_ptr() as *mut u8;
        assert!((i + 1) * self.stride <= self.len, "ring {i} is not mapped");
        // SAFETY: ring `i` lies within the mapping (asserted above), on a page boundary.
        let start = unsafe { base.add(i * self.stride) };
        Ring {
            header: start as *const Header,
            // SAFETY: within the mapping, as above.
            data: unsafe { start.add(DATA_OFFSET) },
            mask: self.capacity as u64 - 1,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing refers to it any more.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    // SAFETY: `word` is a live, aligned u32 in shared memory; `ts` is a valid timespec. Not
    // FUTEX_PRIVATE: the waker is in the other process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Waits until `ready()`: spins, then sleeps on `w` (the event-count handshake: no lost
/// wake-up, see `src/transport/shm/ring.rs`).
fn wait_until(w: &Wake, ready: impl Fn() -> bool) {
    for _ in 0..SPIN {
        if ready() {
            return;
        }
        std::hint::spin_loop();
    }
    loop {
        w.waiting.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let s = w.seq.load(Ordering::Acquire);
        if ready() {
            w.waiting.store(0, Ordering::Relaxed);
            return;
        }
        futex_wait(&w.seq, s);
    }
}

/// Wakes whoever sleeps on `w` (after the caller published what it waits for).
fn wake(w: &Wake) {
    fence(Ordering::SeqCst);
    if w.waiting.load(Ordering::Relaxed) != 0 {
        w.waiting.store(0, Ordering::Relaxed);
        w.seq.fetch_add(1, Ordering::Release);
        futex_wake(&w.seq);
    }
}

impl Ring {
    /// Writes `count` elements made by `make`, waiting for room for all of them, then
    /// publishes them at once.
    fn write<const N: usize>(&self, count: usize, mut make: impl FnMut() -> Payload<N>) {
        let h = self.header();
        let need = (count * N) as u64;
        let head = h.head.0.load(Ordering::Relaxed);
        let cap = self.capacity();
        wait_until(&h.space.0, || {
            head + need - h.tail.0.load(Ordering::Acquire) <= cap
        });
        for k in 0..count as u64 {
            let at = ((head + k * N as u64) & self.mask) as usize;
            // SAFETY: `at + N <= capacity` (N divides the power-of-two capacity and positions
            // are multiples of N), the space is free (the consumer released it), and only this
            // process writes it until it is published.
            unsafe { std::ptr::write_unaligned(self.data.add(at) as *mut Payload<N>, make()) };
        }
        h.head.0.store(head + need, Ordering::Release);
        wake(&h.data.0);
    }

    /// Ends the stream.
    fn close(&self) {
        let h = self.header();
        h.closed.0.store(1, Ordering::Release);
        wake(&h.data.0);
    }

    /// Waits for data; copies what is there (at most `buf.len()` bytes) into `buf` and
    /// releases it. Returns the bytes copied, 0 at the end of the stream.
    fn read(&self, buf: &mut [u8]) -> usize {
        let h = self.header();
        let tail = h.tail.0.load(Ordering::Relaxed);
        wait_until(&h.data.0, || {
            h.head.0.load(Ordering::Acquire) > tail || h.closed.0.load(Ordering::Acquire) != 0
        });
        let head = h.head.0.load(Ordering::Acquire);
        let n = ((head - tail) as usize).min(buf.len());
        let at = (tail & self.mask) as usize;
        let first = n.min(self.capacity() as usize - at);
        // SAFETY: bytes [tail, tail + n) were published by the producer (Acquire above) and
        // are not reused before we release them; the two pieces lie within the data area.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(at), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, buf.as_mut_ptr().add(first), n - first);
        }
        h.tail.0.store(tail + n as u64, Ordering::Release);
        wake(&h.space.0);
        n
    }
}

/// The child side of a forked baseline: dies with its parent, runs `f`, exits at once.
fn in_child(f: impl FnOnce()) -> ! {
    // SAFETY: prctl with constant arguments; _exit ends the child without running the
    // parent's atexit handlers or flushing its buffers twice.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
}

/// Forks; the child runs `child`. The caller must be single-threaded (a cell process is).
fn fork_child(child: impl FnOnce()) -> Result<nix::unistd::Pid, String> {
    // SAFETY: the cell process has no other thread at this point, so the child's copy of the
    // address space is consistent; the child only uses the shared mapping, atomics, the
    // futex and its own stack and heap, then _exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => in_child(child),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
        Err(e) => Err(format!("cannot fork the raw ring's consumer: {e}")),
    }
}

fn reap(child: nix::unistd::Pid, what: &str) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(status) => Err(format!(
            "the raw ring's {what} process ended with {status:?}"
        )),
        Err(e) => Err(format!("waiting for the raw ring's {what} process: {e}")),
    }
}

/// Ring bytes for a cell: its capacity in bytes, a power of two, at least two batches.
fn ring_bytes<const N: usize>(p: &Params) -> usize {
    (p.capacity * N).max(2 * p.batch * N).next_power_of_two()
}

/// The producer (this process) makes and maps elements into the ring; the consumer (a forked
/// process) copies them out and counts.
pub(crate) fn ring_throughput<const N: usize>(p: &Params) -> Result<(), String> {
    let mapping = Mapping::new(1, ring_bytes::<N>(p))?;
    let ring = mapping.ring(0);
    let chunk = N * p.batch.max(1);
    let child = fork_child(|| {
        let mut buf = vec![0u8; chunk];
        let mut bytes = 0u64;
        loop {
            let n = ring.read(&mut buf);
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        let h = ring.header();
        h.end_ns.store(now_ns(), Ordering::Relaxed);
        h.delivered.0.store(bytes / N as u64, Ordering::Release);
    })?;
    let per_write = match p.pattern {
        Pattern::Batch => p.batch,
        Pattern::Single => 1,
    };
    let mut c = Clock::start(p.duration);
    while c.going() {
        for _ in 0..CLOCK_EVERY.div_ceil(per_write) {
            ring.write::<N>(per_write, || c.element::<N>());
        }
    }
    ring.close();
    reap(child, "consumer")?;
    let h = ring.header();
    emit_throughput(
        c.next,
        c.start_ns,
        h.delivered.0.load(Ordering::Acquire),
        h.end_ns.load(Ordering::Relaxed),
    );
    Ok(())
}

/// There (ring 0) and back (ring 1): a forked process echoes each element.
pub(crate) fn ring_latency<const N: usize>(p: &Params) -> Result<(), String> {
    let mapping = Mapping::new(2, (4 * N).next_power_of_two())?;
    let (there, back) = (mapping.ring(0), mapping.ring(1));
    let child = fork_child(|| {
        let mut buf = vec![0u8; N];
        loop {
            let mut got = 0;
            while got < N {
                let n = there.read(&mut buf[got..]);
                if n == 0 {
                    back.close();
                    return;
                }
                got += n;
            }
            let e: Payload<N> = bytemuck::pod_read_unaligned(&buf);
            back.write::<N>(1, || e.mapped());
        }
    })?;
    let mut c = Clock::start(p.duration);
    let mut pace = Pace::new(p.rate);
    let mut samples = Vec::new();
    let mut buf = vec![0u8; N];
    while c.paced(&mut pace) {
        let t0 = now_ns();
        let e = Payload::<N>::new(c.next);
        c.next += 1;
        there.write::<N>(1, || e);
        let mut got = 0;
        while got < N {
            let n = back.read(&mut buf[got..]);
            if n == 0 {
                return Err("the raw ring's echo process ended early".into());
            }
            got += n;
        }
        samples.push(now_ns().saturating_sub(t0) / 2);
    }
    there.close();
    reap(child, "echo")?;
    emit_latency(c.next, samples);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// raw TCP

fn loopback_pair() -> Result<(TcpStream, TcpStream), String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("raw tcp: bind 127.0.0.1: {e}"))?;
    let at = listener
        .local_addr()
        .map_err(|e| format!("raw tcp: the listener's address: {e}"))?;
    let writer = TcpStream::connect(at).map_err(|e| format!("raw tcp: connect to {at}: {e}"))?;
    let (reader, _) = listener
        .accept()
        .map_err(|e| format!("raw tcp: accept on {at}: {e}"))?;
    for s in [&writer, &reader] {
        s.set_nodelay(true)
            .map_err(|e| format!("raw tcp: TCP_NODELAY: {e}"))?;
    }
    Ok((writer, reader))
}

/// A writer (this thread) and a reader thread on one loopback connection.
pub(crate) fn tcp_throughput<const N: usize>(p: &Params) -> Result<(), String> {
    let (mut writer, mut reader) = loopback_pair()?;
    let chunk = N * p.batch.max(1);
    let read = std::thread::spawn(move || -> Result<(u64, u64), String> {
        let mut buf = vec![0u8; chunk.max(256 << 10)];
        let mut bytes = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("raw tcp reader: {e}")),
            }
        }
        Ok((bytes, now_ns()))
    });
    let per_write = match p.pattern {
        Pattern::Batch => p.batch,
        Pattern::Single => 1,
    };
    let mut c = Clock::start(p.duration);
    let mut buf: Vec<u8> = Vec::with_capacity(per_write * N);
    while c.going() {
        for _ in 0..CLOCK_EVERY.div_ceil(per_write) {
            buf.clear();
            for _ in 0..per_write {
                buf.extend_from_slice(&c.element::<N>().0);
            }
            writer
                .write_all(&buf)
                .map_err(|e| format!("raw tcp writer: {e}"))?;
        }
    }
    drop(writer);
    let (bytes, end_ns) = read.join().map_err(|_| thread_failed("reader"))??;
    if bytes % N as u64 != 0 {
        return Err(format!(
            "raw tcp: the reader got {bytes} bytes, not a whole number of {N}-byte elements"
        ));
    }
    emit_throughput(c.next, c.start_ns, bytes / N as u64, end_ns);
    Ok(())
}

/// There and back on one loopback connection: an echo thread writes back what it reads.
pub(crate) fn tcp_latency<const N: usize>(p: &Params) -> Result<(), String> {
    let (mut ping, mut echo) = loopback_pair()?;
    let echoer = std::thread::spawn(move || {
        let mut buf = vec![0u8; N];
        while echo.read_exact(&mut buf).is_ok() {
            let e: Payload<N> = bytemuck::pod_read_unaligned(&buf);
            if echo.write_all(&e.mapped().0).is_err() {
                break;
            }
        }
    });
    let mut c = Clock::start(p.duration);
    let mut pace = Pace::new(p.rate);
    let mut samples = Vec::new();
    let mut buf = vec![0u8; N];
    while c.paced(&mut pace) {
        let t0 = now_ns();
        let e = Payload::<N>::new(c.next);
        c.next += 1;
        ping.write_all(&e.0)
            .map_err(|e| format!("raw tcp ping: {e}"))?;
        ping.read_exact(&mut buf)
            .map_err(|e| format!("raw tcp pong: {e}"))?;
        samples.push(now_ns().saturating_sub(t0) / 2);
    }
    drop(ping);
    echoer.join().map_err(|_| thread_failed("echo"))?;
    emit_latency(c.next, samples);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The `broker` mode's baseline: async-nats on the same JetStream server, no iotstream between

/// A small runtime of the cell's own for the raw NATS baseline.
fn nats_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("raw nats: no runtime: {e}"))
}

/// A JetStream stream of its own (work-queue retention, as the broker links make theirs) and a
/// durable pull consumer on it, named after this process and `what`.
async fn nats_queue(
    js: &async_nats::jetstream::Context,
    what: &str,
) -> Result<
    (
        String,
        async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>,
    ),
    String,
> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    let id = std::process::id();
    let subject = format!("iotstream.bench_raw.{what}.{id}");
    let name = format!("IOTSTREAM_BENCH_RAW_{what}_{id}");
    let stream = js
        .get_or_create_stream(Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_bytes: 256 << 20,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("raw nats: cannot create stream {name}: {e}"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("raw nats: cannot create a consumer of {name}: {e}"))?;
    Ok((subject, consumer))
}

/// The NATS server of the raw baseline, connected.
async fn nats_connect(p: &Params) -> Result<async_nats::jetstream::Context, String> {
    let url = p
        .nats
        .clone()
        .ok_or("the raw-nats baseline needs a NATS server: --nats nats://host:4222")?;
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|e| format!("raw nats: cannot connect to {url}: {e}"))?;
    Ok(async_nats::jetstream::new(client))
}

/// How long [`check_nats`] waits for the server to answer.
const NATS_CHECK: Duration = Duration::from_secs(5);

/// The server `url` names, connected within [`NATS_CHECK`].
async fn nats_client(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(NATS_CHECK)
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach the NATS server: {e}"))
}

/// Checks `url` (`--nats`) before anything runs: a well-formed URL (said without showing a
/// password it may hold), a server that answers within 5 s (`NATS_CHECK`), with JetStream. A
/// broker cell would otherwise wait a minute for the server (its `connect_wait_ms`) and say
/// only that its pong did not come back.
pub fn check_nats(url: &str) -> Result<(), String> {
    if let Some(problem) = crate::transport::broker::url_problem(url) {
        return Err(format!("--nats: the URL {problem}"));
    }
    let rt = nats_runtime()?;
    rt.block_on(async {
        let client = nats_client(url).await.map_err(|e| format!("--nats: {e}"))?;
        // JetStream's account information, read as plain JSON: the client's own type wants
        // fields older servers do not send.
        let no_jetstream = |why: String| {
            format!("--nats: the server has no JetStream ({why}): start it with `nats-server -js`")
        };
        let answer = tokio::time::timeout(NATS_CHECK, client.request("$JS.API.INFO", "".into()))
            .await
            .map_err(|_| {
                format!(
                    "--nats: the server did not answer a JetStream request within {NATS_CHECK:?}"
                )
            })?
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    no_jetstream("nothing answers JetStream requests".into())
                }
                _ => no_jetstream(e.to_string()),
            })?;
        let info: serde_json::Value = serde_json::from_slice(&answer.payload)
            .map_err(|e| no_jetstream(format!("its answer is not JSON: {e}")))?;
        match info.get("error") {
            None => Ok(()),
            Some(error) => Err(no_jetstream(
                error
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("an error")
                    .to_string(),
            )),
        }
    })
}

/// Deletes the JetStream streams whose names start with one of `prefixes` (a broker cell's,
/// which the server keeps otherwise); how many.
pub(crate) fn delete_nats_streams(url: &str, prefixes: &[String]) -> Result<usize, String> {
    use futures_util::StreamExt as _;
    let rt = nats_runtime()?;
    rt.block_on(async {
        let js = async_nats::jetstream::new(nats_client(url).await?);
        let mut names = js.stream_names();
        let mut doomed = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| format!("cannot list the streams: {e}"))?;
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                doomed.push(name);
            }
        }
        for name in &doomed {
            js.delete_stream(name)
                .await
                .map_err(|e| format!("cannot delete stream {name}: {e}"))?;
        }
        Ok(doomed.len())
    })
}

/// Removes the baseline's streams (the server keeps them otherwise).
async fn nats_clean(js: &async_nats::jetstream::Context, what: &[&str]) {
    for w in what {
        let _ = js
            .delete_stream(format!("IOTSTREAM_BENCH_RAW_{w}_{}", std::process::id()))
            .await;
    }
}

/// Messages of `batch` elements (one for `single`) published with at most 64 awaiting their
/// PubAck, as the broker links publish, and at most the connection's capacity in bytes not yet
/// received (the links' credit: without it the publisher ran ahead of the reader by the
/// stream's 256 MiB, and the stream discarded what the reader had not read); a pull
/// subscriber acknowledges each and counts bytes.
pub(crate) fn nats_throughput<const N: usize>(p: &Params) -> Result<(), String> {
    use futures_util::StreamExt;
    let rt = nats_runtime()?;
    rt.block_on(async {
        let js = nats_connect(p).await?;
        let (subject, consumer) = nats_queue(&js, "tput").await?;
        // Bytes the reader got, and a wake-up for a publisher waiting for them.
        let received = std::sync::Arc::new((AtomicU64::new(0), tokio::sync::Notify::new()));
        let window = (p.capacity * N) as u64;
        let got = std::sync::Arc::clone(&received);
        let reader = tokio::spawn(async move {
            let mut msgs = consumer
                .stream()
                .max_messages_per_batch(64)
                // As the broker links: 64 messages of 1 MiB would pass the client's 64 MiB
                // of pending messages, and the server would drop some (a slow consumer).
                .max_bytes_per_batch(32 << 20)
                .messages()
                .await
                .map_err(|e| format!("raw nats: cannot pull: {e}"))?;
            let (mut bytes, mut end_ns) = (0u64, 0u64);
            while let Some(m) = msgs.next().await {
                let m = m.map_err(|e| format!("raw nats: pull: {e}"))?;
                let len = m.payload.len() as u64;
                let _ = m.ack().await;
                if len == 0 {
                    break;
                }
                bytes += len;
                end_ns = now_ns();
                got.0.store(bytes, Ordering::Release);
                got.1.notify_one();
            }
            Ok::<_, String>((bytes, end_ns))
        });
        let per_write = match p.pattern {
            Pattern::Batch => p.batch,
            Pattern::Single => 1,
        };
        let mut c = Clock::start(p.duration);
        let mut sent = 0u64;
        let mut in_flight = std::collections::VecDeque::new();
        let publish_error = |e: &dyn std::fmt::Display| format!("raw nats: publish: {e}");
        while c.going() {
            for _ in 0..CLOCK_EVERY.div_ceil(per_write) {
                let mut buf: Vec<u8> = Vec::with_capacity(per_write * N);
                for _ in 0..per_write {
                    buf.extend_from_slice(&c.element::<N>().0);
                }
                sent += buf.len() as u64;
                // Wait while more than the window would be on its way (one message always
                // may be).
                let limit = window.max(buf.len() as u64);
                while sent.saturating_sub(received.0.load(Ordering::Acquire)) > limit {
                    received.1.notified().await;
                }
                if in_flight.len() >= 64 {
                    let ack: async_nats::jetstream::context::PublishAckFuture =
                        in_flight.pop_front().expect("64 in flight");
                    ack.await.map_err(|e| publish_error(&e))?;
                }
                let ack = js
                    .publish(subject.clone(), buf.into())
                    .await
                    .map_err(|e| publish_error(&e))?;
                in_flight.push_back(ack);
            }
        }
        for ack in in_flight {
            ack.await.map_err(|e| publish_error(&e))?;
        }
        js.publish(subject.clone(), bytes::Bytes::new())
            .await
            .map_err(|e| publish_error(&e))?
            .await
            .map_err(|e| publish_error(&e))?;
        let (bytes, end_ns) = reader.await.map_err(|_| thread_failed("reader"))??;
        nats_clean(&js, &["tput"]).await;
        if bytes % N as u64 != 0 {
            return Err(format!(
                "raw nats: the reader got {bytes} bytes, not a whole number of {N}-byte elements"
            ));
        }
        emit_throughput(c.next, c.start_ns, bytes / N as u64, end_ns);
        Ok(())
    })
}

/// There and back through two JetStream streams: an echo task pulls each ping, acknowledges
/// it and publishes the pong; the pinger pulls the pong.
pub(crate) fn nats_latency<const N: usize>(p: &Params) -> Result<(), String> {
    use futures_util::StreamExt;
    let rt = nats_runtime()?;
    rt.block_on(async {
        let js = nats_connect(p).await?;
        let (ping_subject, ping_consumer) = nats_queue(&js, "ping").await?;
        let (pong_subject, pong_consumer) = nats_queue(&js, "pong").await?;
        let echo_js = js.clone();
        let echo = tokio::spawn(async move {
            let mut pings = ping_consumer
                .stream()
                .max_messages_per_batch(64)
                // As the broker links: 64 messages of 1 MiB would pass the client's 64 MiB
                // of pending messages, and the server would drop some (a slow consumer).
                .max_bytes_per_batch(32 << 20)
                .messages()
                .await
                .map_err(|e| format!("raw nats echo: cannot pull: {e}"))?;
            while let Some(m) = pings.next().await {
                let m = m.map_err(|e| format!("raw nats echo: {e}"))?;
                let _ = m.ack().await;
                if m.payload.len() != N {
                    break;
                }
                let e: Payload<N> = bytemuck::pod_read_unaligned(&m.payload);
                echo_js
                    .publish(pong_subject.clone(), e.mapped().0.to_vec().into())
                    .await
                    .map_err(|e| format!("raw nats echo: publish: {e}"))?;
            }
            Ok::<_, String>(())
        });
        let mut pongs = pong_consumer
            .stream()
            .max_messages_per_batch(64)
            .messages()
            .await
            .map_err(|e| format!("raw nats pong: cannot pull: {e}"))?;
        let mut c = Clock::start(p.duration);
        let mut pace = Pace::new(p.rate);
        let mut samples = Vec::new();
        while c.paced(&mut pace) {
            let t0 = now_ns();
            let e = Payload::<N>::new(c.next);
            c.next += 1;
            js.publish(ping_subject.clone(), e.0.to_vec().into())
                .await
                .map_err(|e| format!("raw nats ping: {e}"))?;
            let pong = pongs
                .next()
                .await
                .ok_or("raw nats pong: the pull ended")?
                .map_err(|e| format!("raw nats pong: {e}"))?;
            let _ = pong.ack().await;
            samples.push(now_ns().saturating_sub(t0) / 2);
        }
        js.publish(ping_subject.clone(), bytes::Bytes::new())
            .await
            .map_err(|e| format!("raw nats ping: {e}"))?;
        echo.await.map_err(|_| thread_failed("echo"))??;
        nats_clean(&js, &["ping", "pong"]).await;
        emit_latency(c.next, samples);
        Ok(())
    })
}
