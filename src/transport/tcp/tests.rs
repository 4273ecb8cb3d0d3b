//! The TCP link over real loopback sockets: a [`TcpSender`] writing to a feeder from
//! [`spawn_tcp_feeder`], each with its own [`TestRun`] (as if on two hosts), the reading host a
//! [`Sink`] that consumes (returns credit for) what it gets, up to a limit the test sets.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::feeder::{spawn_probed, FeederProbe};
use super::*;
use crate::error::Error;
use crate::metrics::LinkCounters;
use crate::stream::{Element, Mark};
use crate::transport::mailbox::{Envelope, Mailbox, Run, RunContext};
use crate::transport::testutil::TestRun;

const LABEL: &str = "sensor.out -> detector.in";
const READER_HOST: &str = "server";
const WRITER_HOST: &str = "pi";

/// How long any wait of a test lasts before it fails instead of hanging.
const GUARD: Duration = Duration::from_secs(60);

fn secret(s: &str) -> Option<Arc<auth::Secret>> {
    Some(Arc::new(auth::Secret::from_bytes(
        s.as_bytes().to_vec(),
        "test",
    )))
}

fn settings() -> TcpSettings {
    TcpSettings {
        secret: secret("0123456789abcdef-shared"),
        tls: None,
        connect_wait: Duration::from_secs(10),
        heartbeat: Duration::from_millis(100),
        peer_timeout: Duration::from_secs(2),
        reconnect_limit: Duration::from_secs(10),
        max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
        unacked_bytes: 1 << 20,
    }
}

fn identity<T: Element>() -> LinkIdentity {
    LinkIdentity::new::<T>("plant", [7; 32], 3, LABEL)
}

/// Ends the runs when the test ends, passed or not: every link thread ends within a slice.
struct Ends(Vec<Arc<TestRun>>);

impl Drop for Ends {
    fn drop(&mut self) {
        for r in &self.0 {
            r.end();
        }
    }
}

fn run() -> Arc<TestRun> {
    Arc::new(TestRun::default())
}

/// Polls `f` until it holds, failing after [`GUARD`].
fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < GUARD, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the reading host received.
struct Seen<T> {
    items: Vec<T>,
    /// Each mark, with the number of elements received before it.
    marks: Vec<(usize, Mark)>,
    consumed: usize,
    eos: bool,
}

/// The reading host: records every batch and the end of stream, and consumes (credits back)
/// what it received, up to `limit` elements in all.
struct Sink<T> {
    seen: Mutex<Seen<T>>,
    cond: Condvar,
    credit_to: OnceLock<Arc<dyn Mailbox>>,
    limit: AtomicUsize,
}

impl<T: Element> Sink<T> {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Sink {
            seen: Mutex::new(Seen {
                items: Vec::new(),
                marks: Vec::new(),
                consumed: 0,
                eos: false,
            }),
            cond: Condvar::new(),
            credit_to: OnceLock::new(),
            limit: AtomicUsize::new(limit),
        })
    }

    fn consume(&self, seen: &mut Seen<T>) {
        let upto = seen.items.len().min(self.limit.load(Ordering::SeqCst));
        if upto > seen.consumed {
            let n = upto - seen.consumed;
            seen.consumed = upto;
            if let Some(m) = self.credit_to.get() {
                m.post(Envelope::Credit {
                    output: 0,
                    link: 0,
                    n,
                });
            }
        }
    }

    fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::SeqCst);
        let mut seen = self.seen.lock().unwrap();
        self.consume(&mut seen);
    }

    fn wait(&self, what: &str, done: impl Fn(&Seen<T>) -> bool) {
        let start = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        while !done(&seen) {
            assert!(start.elapsed() < GUARD, "never: {what}");
            seen = self
                .cond
                .wait_timeout(seen, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    fn items(&self) -> Vec<T> {
        self.seen.lock().unwrap().items.clone()
    }
}

impl<T: Element> Mailbox for Sink<T> {
    fn post(&self, env: Envelope) {
        let mut seen = self.seen.lock().unwrap();
        match env {
            Envelope::Data { batch, .. } => {
                let batch = batch.downcast::<T>().unwrap();
                assert!(!seen.eos, "data after the end of stream");
                seen.items.extend_from_slice(batch.as_slice());
                self.consume(&mut seen);
            }
            Envelope::Mark { mark, .. } => {
                assert!(!seen.eos, "a mark after the end of stream");
                let at = seen.items.len();
                seen.marks.push((at, mark));
            }
            Envelope::Eos { .. } => seen.eos = true,
            _ => {}
        }
        self.cond.notify_all();
    }
}

/// The writing host's mailbox: counts the credit envelopes the link posts.
#[derive(Default)]
struct Wake {
    credits: Mutex<usize>,
    cond: Condvar,
}

impl Mailbox for Wake {
    fn post(&self, env: Envelope) {
        if let Envelope::Credit { .. } = env {
            *self.credits.lock().unwrap() += 1;
            self.cond.notify_all();
        }
    }
}

impl Wake {
    fn credits(&self) -> usize {
        *self.credits.lock().unwrap()
    }

    /// Waits a little for a credit envelope (the link posts one when room comes).
    fn nap(&self) {
        let c = self.credits.lock().unwrap();
        let _ = self
            .cond
            .wait_timeout(c, Duration::from_millis(50))
            .unwrap();
    }
}

/// Records the hosts a stop hook was called with.
fn stop_recorder() -> (StopHook, Arc<Mutex<Vec<String>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::clone(&calls);
    (Arc::new(move |host| c.lock().unwrap().push(host)), calls)
}

struct Reader<T> {
    sink: Arc<Sink<T>>,
    probe: FeederProbe,
    counters: Arc<LinkCounters>,
    stops: Arc<Mutex<Vec<String>>>,
}

/// A feeder listening on `listen`, delivering to a sink that consumes up to `limit` elements.
fn reader<T: Element>(
    listen: &str,
    run: &Arc<TestRun>,
    settings: TcpSettings,
    capacity: usize,
    limit: usize,
) -> Reader<T> {
    let sink = Sink::<T>::new(limit);
    let counters = Arc::new(LinkCounters::default());
    let (hook, stops) = stop_recorder();
    let spec = TcpFeederSpec {
        id: identity::<T>(),
        peer_host: WRITER_HOST.into(),
        listen: listen.into(),
        settings: Arc::new(settings),
        target: Arc::clone(&sink) as Arc<dyn Mailbox>,
        input: 0,
        capacity,
        counters: Arc::clone(&counters),
        count_traffic: true,
        label: LABEL.into(),
        run: Arc::clone(run) as Run,
        on_peer_stop: hook,
    };
    let (credit, probe) = spawn_probed::<T>(spec).unwrap();
    let _ = sink.credit_to.set(credit);
    Reader {
        sink,
        probe,
        counters,
        stops,
    }
}

struct Writer<T> {
    tx: TcpSender<T>,
    wake: Arc<Wake>,
    counters: Arc<LinkCounters>,
    stops: Arc<Mutex<Vec<String>>>,
    run: Arc<TestRun>,
}

/// What a writer to `addr` needs, and where its stop hook records the hosts it was called
/// with.
fn writer_spec(
    id: LinkIdentity,
    addr: SocketAddr,
    settings: TcpSettings,
    counters: &Arc<LinkCounters>,
) -> (TcpWriterSpec, Arc<Mutex<Vec<String>>>) {
    let (hook, stops) = stop_recorder();
    let spec = TcpWriterSpec {
        id,
        peer_host: READER_HOST.into(),
        connect_to: addr.to_string(),
        settings: Arc::new(settings),
        counters: Arc::clone(counters),
        on_peer_stop: hook,
    };
    (spec, stops)
}

fn writer_with<T: Element>(
    id: LinkIdentity,
    addr: SocketAddr,
    run: &Arc<TestRun>,
    settings: TcpSettings,
) -> Writer<T> {
    let wake = Arc::new(Wake::default());
    let counters = Arc::new(LinkCounters::default());
    let (spec, stops) = writer_spec(id, addr, settings, &counters);
    let tx = TcpSender::<T>::open(
        spec,
        Arc::clone(&wake) as Arc<dyn Mailbox>,
        0,
        0,
        Arc::clone(run) as Run,
    )
    .unwrap();
    Writer {
        tx,
        wake,
        counters,
        stops,
        run: Arc::clone(run),
    }
}

fn writer<T: Element>(addr: SocketAddr, run: &Arc<TestRun>, settings: TcpSettings) -> Writer<T> {
    writer_with(identity::<T>(), addr, run, settings)
}

impl<T: Element> Writer<T> {
    /// Writes `items` in batches of `batch`, waiting for room as a host would; `each` runs after
    /// every batch with its index.
    fn send(&mut self, items: &[T], batch: usize, mut each: impl FnMut(usize)) {
        let start = Instant::now();
        for (i, chunk) in items.chunks(batch).enumerate() {
            let mut done = 0;
            while done < chunk.len() {
                let n = self.tx.write(&chunk[done..]).unwrap();
                done += n;
                if n == 0 {
                    assert!(self.run.failure().is_none(), "{:?}", self.run.failure());
                    assert!(start.elapsed() < GUARD, "the writer never had room");
                    self.wake.nap();
                }
            }
            each(i);
        }
    }

    /// Queues `mark`, waiting for room as a host would.
    fn mark(&mut self, mark: Mark) {
        let start = Instant::now();
        while !self.tx.write_mark(mark).unwrap() {
            assert!(self.run.failure().is_none(), "{:?}", self.run.failure());
            assert!(start.elapsed() < GUARD, "the writer never had room");
            self.wake.nap();
        }
    }

    /// Closes the stream and waits until the reader consumed all of it.
    fn finish(&mut self) {
        self.tx.close();
        let run = Arc::clone(&self.run);
        poll("the End acknowledged", || {
            assert!(run.failure().is_none(), "{:?}", run.failure());
            self.tx.finished()
        });
    }
}

fn failure_of(run: &TestRun) -> String {
    poll("the run fails", || run.failure().is_some());
    run.failure().unwrap()
}

/// A mailbox that panics at the first data posted to it: a defect of whatever the feeder
/// steps there.
struct PanicsAtData;

impl Mailbox for PanicsAtData {
    fn post(&self, env: Envelope) {
        if let Envelope::Data { .. } = env {
            panic!("a defect where the data went");
        }
    }
}

/// A panic on one of the reader's threads fails the run, naming the connection and the
/// thread, where the thread died alone before and the run waited for ever.
#[test]
fn a_panic_on_a_readers_thread_fails_the_run_naming_the_connection() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let (hook, _stops) = stop_recorder();
    let spec = TcpFeederSpec {
        id: identity::<u64>(),
        peer_host: WRITER_HOST.into(),
        listen: "127.0.0.1:0".into(),
        settings: Arc::new(settings()),
        target: Arc::new(PanicsAtData),
        input: 0,
        capacity: 64,
        counters: Arc::default(),
        count_traffic: true,
        label: LABEL.into(),
        run: Arc::clone(&rrun) as Run,
        on_peer_stop: hook,
    };
    let (_credit, probe) = spawn_probed::<u64>(spec).unwrap();
    let mut w = writer::<u64>(probe.addr(), &wrun, settings());
    w.send(&[1, 2, 3], 3, |_| {});
    let failure = failure_of(&rrun);
    assert!(
        failure.contains(&format!("connection {LABEL}: its "))
            && failure.contains("thread panicked: a defect where the data went"),
        "{failure}"
    );
}

#[test]
fn a_million_numbers_arrive_in_order_and_complete() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    let items: Vec<u64> = (0..1_000_000).collect();
    w.send(&items, 1000, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "every element, in order, once");
    poll("the feeder ends after the writer's Goodbye", || {
        r.probe.finished()
    });
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
    assert_eq!(rrun.feeders_finished(), 1);
    let sent = w.counters.bytes.load(Ordering::Relaxed);
    assert!(sent >= 8_000_000, "{sent}");
    assert_eq!(
        r.counters.bytes.load(Ordering::Relaxed),
        sent,
        "nothing resent"
    );
    assert_eq!(r.counters.elements.load(Ordering::Relaxed), 1_000_000);
    assert_eq!(w.counters.unacked_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(w.counters.reconnects.load(Ordering::Relaxed), 0);
}

#[test]
fn strings_arrive_in_order_and_complete() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<String>("127.0.0.1:0", &rrun, settings(), 1000, usize::MAX);
    let mut w = writer::<String>(r.probe.addr(), &wrun, settings());
    let items: Vec<String> = (0..200_000).map(|i| format!("reading #{i}")).collect();
    w.send(&items, 700, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "every element, in order, once");
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn cuts_mid_stream_lose_nothing_and_repeat_nothing() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    let cut = w.tx.cutter();
    let items: Vec<u64> = (0..1_000_000).collect();
    // A cut every 40 batches, wherever the connection is then (writing, reconnecting).
    w.send(&items, 1000, |i| {
        if i % 40 == 39 {
            cut();
        }
    });
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    let got = r.sink.items();
    assert_eq!(got.len(), items.len(), "nothing lost, nothing repeated");
    assert!(got == items, "in order");
    assert!(w.counters.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn marks_cross_cuts_in_order_with_the_data_once_each() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    let cut = w.tx.cutter();
    let items: Vec<u64> = (0..200_000).collect();
    // After each batch of 1000, a watermark (and, every 10th, idleness after it); a cut every
    // 25 batches, wherever the connection is then.
    let mut want = Vec::new();
    for (i, chunk) in items.chunks(1000).enumerate() {
        w.send(chunk, 1000, |_| {});
        let at = 1000 * (i + 1);
        w.mark(Mark::Watermark(at as u64 - 1));
        want.push((at, Mark::Watermark(at as u64 - 1)));
        if i % 10 == 9 {
            w.mark(Mark::Idle);
            want.push((at, Mark::Idle));
        }
        if i % 25 == 24 {
            cut();
        }
    }
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "every element, in order, once");
    let marks = r.sink.seen.lock().unwrap().marks.clone();
    assert_eq!(marks.len(), want.len(), "no mark lost or repeated");
    assert_eq!(marks, want, "each after the elements before it");
    assert!(w.counters.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn a_mark_waits_for_the_budget_and_the_reader_acknowledges_it_once_delivered() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let small = || TcpSettings {
        unacked_bytes: 4096,
        ..settings()
    };
    // The reader consumes nothing yet: the writer's budget fills up with data.
    let r = reader::<u64>("127.0.0.1:0", &rrun, small(), 1 << 20, 0);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, small());
    let items: Vec<u64> = (0..10_000).collect();
    // One frame goes whatever the budget (80 000 bytes of payload here), then nothing.
    let n = w.tx.write(&items).unwrap();
    assert!(n > 0, "the budget takes {n}");
    assert_eq!(w.tx.write(&[1]).unwrap(), 0, "no budget left");
    assert!(
        !w.tx.write_mark(Mark::Watermark(1)).unwrap(),
        "no budget left"
    );
    r.sink
        .wait("everything sent delivered", |s| s.items.len() == n);
    r.sink.set_limit(usize::MAX);
    w.mark(Mark::Watermark(n as u64 - 1));
    // Marks alone, nothing between them: each costs the budget, and the reader acknowledges
    // them once delivered, so they keep flowing.
    for k in 0..1000 {
        w.mark(Mark::Watermark(n as u64 + k));
    }
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    let seen = r.sink.seen.lock().unwrap();
    assert_eq!(seen.items, items[..n]);
    assert_eq!(seen.marks.len(), 1001);
    assert_eq!(seen.marks[0], (n, Mark::Watermark(n as u64 - 1)));
    assert_eq!(seen.marks[1000], (n, Mark::Watermark(n as u64 + 999)));
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn over_tls_with_cuts_nothing_is_lost_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let tls = super::tls::tests::loopback_config(dir.path());
    let with_tls = || TcpSettings {
        tls: Some(tls.clone()),
        ..settings()
    };
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, with_tls(), 4096, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, with_tls());
    let cut = w.tx.cutter();
    let items: Vec<u64> = (0..300_000).collect();
    w.send(&items, 1000, |i| {
        if i % 60 == 59 {
            cut();
        }
    });
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    let got = r.sink.items();
    assert_eq!(got.len(), items.len(), "nothing lost, nothing repeated");
    assert!(got == items, "in order");
    assert!(w.counters.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn a_plain_writer_at_a_tls_reader_is_refused_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tls = super::tls::tests::loopback_config(dir.path());
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let reader_settings = TcpSettings {
        tls: Some(tls),
        connect_wait: Duration::from_secs(2),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, reader_settings, 4096, usize::MAX);
    let writer_settings = TcpSettings {
        connect_wait: Duration::from_secs(2),
        reconnect_limit: Duration::from_secs(2),
        ..settings()
    };
    let _w = writer::<u64>(r.probe.addr(), &wrun, writer_settings);
    poll("the reader refuses the plain writer", || {
        r.probe
            .refusals()
            .iter()
            .any(|x| x.contains("does not speak TLS"))
    });
}

/// A reader of `u64` (capacity 4096, consuming everything) listening on `addr`, which was
/// just let go of: it may take a moment to be free again.
fn listen_again(addr: SocketAddr, run: &Arc<TestRun>) -> Reader<u64> {
    let mut bound = None;
    poll(&format!("listening again on {addr}"), || {
        bound = std::panic::catch_unwind(|| {
            reader::<u64>(&addr.to_string(), run, settings(), 4096, usize::MAX)
        })
        .ok();
        bound.is_some()
    });
    bound.expect("poll returns once bound")
}

#[test]
fn a_restarted_reader_gets_everything_its_predecessor_did_not_consume() {
    let (rrun1, rrun2, wrun) = (run(), run(), run());
    let _ends = Ends(vec![rrun1.clone(), rrun2.clone(), wrun.clone()]);
    rrun2.set_restarted();
    let r2 = the_reader_dies_and_another_takes_over(&rrun1, &rrun2, &wrun);
    // A restart within the run: what the first reader consumed it handed on within it.
    assert!(!r2.probe.resumed_after_earlier_run());
}

/// A reader that is not a restarted process (the launcher of its host was killed, and the
/// host started again: a new run) and is resumed past batches a reader before it
/// acknowledged says that what those batches became on this host may be lost (found by a
/// user's audit: a relay's ring downstream of such a link lost 24,412 elements, and both
/// hosts ended "well" without a word).
#[test]
fn a_reader_of_a_new_run_resumed_past_acknowledged_batches_says_so() {
    let (rrun1, rrun2, wrun) = (run(), run(), run());
    let _ends = Ends(vec![rrun1.clone(), rrun2.clone(), wrun.clone()]);
    let r2 = the_reader_dies_and_another_takes_over(&rrun1, &rrun2, &wrun);
    assert!(r2.probe.resumed_after_earlier_run());
}

/// A reader consumes 300,000 elements of a million (batches of 1,000), acknowledges them and
/// dies; a second one on the same port (in `rrun2`) gets everything else, exactly once; the
/// second reader is returned.
fn the_reader_dies_and_another_takes_over(
    rrun1: &Arc<TestRun>,
    rrun2: &Arc<TestRun>,
    wrun: &Arc<TestRun>,
) -> Reader<u64> {
    let consumed = 300_000;
    let r1 = reader::<u64>("127.0.0.1:0", rrun1, settings(), 4096, consumed);
    let addr = r1.probe.addr();
    let mut w = writer::<u64>(addr, wrun, settings());
    let items: Vec<u64> = (0..1_000_000).collect();
    let sending = std::thread::spawn(move || {
        w.send(&items, 1000, |_| {});
        w.finish();
        w
    });
    // The first reader consumes 300 batches, receives more, acknowledges the 300, and dies.
    r1.sink.wait("the first reader consumed its share", |s| {
        s.consumed == consumed && s.items.len() > consumed
    });
    poll("the consumed batches acknowledged", || {
        r1.probe.acked() == 300
    });
    rrun1.fail(Error::Runtime {
        detail: "killed".into(),
    });
    poll("the first reader's port closes", || r1.probe.finished());
    let r2 = listen_again(addr, rrun2);
    let w = sending.join().unwrap();
    r2.sink.wait("the end of stream", |s| s.eos);
    let first = r1.sink.items();
    let second = r2.sink.items();
    // The second reader gets exactly what the first did not consume: what it received beyond
    // that comes again, nothing else does, nothing is missing.
    assert!(first.len() > consumed);
    assert_eq!(second.len(), 1_000_000 - consumed);
    assert!(second.iter().copied().eq(consumed as u64..1_000_000));
    assert!(w.counters.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(rrun2.failure(), None);
    assert_eq!(wrun.failure(), None);
    r2
}

#[test]
fn a_restarted_writer_starts_a_fresh_sequence() {
    let (rrun, wrun1, wrun2) = (run(), run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun1.clone(), wrun2.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let items: Vec<u64> = (0..400_000).collect();
    let mut w1 = writer::<u64>(r.probe.addr(), &wrun1, settings());
    w1.send(&items[..200_000], 1000, |_| {});
    poll("the first writer's batches consumed", || {
        r.probe.acked() == 200
    });
    // The writing process dies; a new one (a new epoch) takes over where its input was.
    wrun1.fail(Error::Runtime {
        detail: "killed".into(),
    });
    drop(w1);
    let mut w2 = writer::<u64>(r.probe.addr(), &wrun2, settings());
    w2.send(&items[200_000..], 1000, |_| {});
    w2.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "every element, in order, once");
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun2.failure(), None);
}

/// A writer of `u64` with a budget of `budget` bytes, and its reader, whose sink consumes
/// nothing until told; both runs end when the `Ends` is dropped.
fn stalled_reader(budget: usize) -> (Arc<TestRun>, Arc<TestRun>, Ends, Reader<u64>, Writer<u64>) {
    let (rrun, wrun) = (run(), run());
    let ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let s = TcpSettings {
        unacked_bytes: budget,
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 100, 0);
    let w = writer::<u64>(r.probe.addr(), &wrun, s);
    (rrun, wrun, ends, r, w)
}

/// Frames of one element each are bounded by what holding them costs, not only by their few
/// bytes of payload: at 64 KiB, a few hundred frames, not four thousand.
#[test]
fn one_element_frames_count_their_own_cost_against_the_bound() {
    let budget = 64 << 10;
    let (rrun, wrun, _ends, r, mut w) = stalled_reader(budget);
    let mut taken = 0u64;
    // Ends: each frame costs at least FRAME_COST_BYTES of the budget. Each element waits for
    // the I/O thread to take the frame before it (so that it is a frame of its own, not
    // joined to that one).
    while w.tx.write(&[taken]).unwrap() == 1 {
        poll("the frame taken", || w.tx.queued_frames().1 == 0);
        taken += 1;
        assert!(
            taken as usize <= budget / FRAME_COST_BYTES + 1,
            "the writer took {taken} one-element frames within {budget} bytes"
        );
    }
    // A frame's payload is at most a few dozen bytes here.
    assert!(
        taken as usize >= budget / (FRAME_COST_BYTES + 64),
        "{taken}"
    );
    // The reader (which held them all within its own bound) consumes: the rest goes through.
    r.sink.set_limit(usize::MAX);
    poll("the writer woken", || w.wake.credits() > 0);
    let all: Vec<u64> = (0..2_000).collect();
    w.send(&all[taken as usize..], 1, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert_eq!(r.sink.items(), all);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn a_stalled_reader_stops_the_writer_at_the_unacknowledged_bound() {
    let budget = 64 << 10;
    let (_, _, _ends, r, mut w) = stalled_reader(budget);
    let items: Vec<u64> = (0..200_000).collect();
    let batch = 1000;
    // One batch is one frame of 8 + 8000 payload bytes, and the frame's own cost.
    let one_batch = 8 + 8 * batch + FRAME_COST_BYTES;
    let mut taken = 0;
    let mut most = 0;
    // Ends: the budget is reached within budget / one_batch + 1 batches.
    loop {
        let n = w.tx.write(&items[taken..taken + batch]).unwrap();
        let unacked = w.counters.unacked_bytes.load(Ordering::Relaxed) as usize;
        most = most.max(unacked);
        if n == 0 {
            break;
        }
        assert_eq!(n, batch);
        taken += n;
        assert!(taken <= budget, "the writer never stopped");
    }
    assert!(most >= budget, "{most}");
    assert!(
        most <= budget + one_batch,
        "{most} over {budget} and a batch"
    );
    assert_eq!(w.wake.credits(), 0);
    // The reader consumes again: acknowledgements make room, the writer is woken, and the
    // rest goes through.
    r.sink.set_limit(usize::MAX);
    poll("the writer woken", || w.wake.credits() > 0);
    let counters = Arc::clone(&w.counters);
    w.send(&items[taken..], batch, |_| {
        let unacked = counters.unacked_bytes.load(Ordering::Relaxed) as usize;
        assert!(unacked <= budget + one_batch, "{unacked}");
    });
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items);
}

#[test]
fn connectors_that_say_nothing_do_not_keep_the_writer_out() {
    // Anyone who reaches the port, without the secret, holds every handshake slot with
    // connections that send nothing (reopened as the reader closes them). The link's own
    // writer must still get in, long before those connections' handshake limit runs out.
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let addr = r.probe.addr();
    let silent: Vec<TcpStream> = (0..feeder::MAX_HANDSHAKES)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    poll("the reader runs their handshakes", || {
        r.probe.handshakes() == feeder::MAX_HANDSHAKES
    });
    let mut w = writer::<u64>(addr, &wrun, settings());
    let items: Vec<u64> = (0..1000).collect();
    w.send(&items, 100, |_| {});
    r.sink
        .wait("every element", |s| s.items.len() == items.len());
    // It got in by closing a silent one, not because they timed out.
    let refusals = r.probe.refusals();
    assert!(
        refusals
            .iter()
            .any(|x| x.contains("closed to make room for a connection from")),
        "{refusals:?}"
    );
    assert_eq!(r.sink.items(), items);
    drop(silent);
}

/// The handshake closed to make room is the oldest of the address holding the most: a flood
/// from one address closes only its own, never the writer's from another (which an
/// oldest-first rule closed as soon as four newer connections came during its handshake).
#[test]
fn making_room_closes_the_oldest_handshake_of_the_busiest_address() {
    use std::net::IpAddr;
    let flood: IpAddr = "10.0.0.9".parse().unwrap();
    let writer: IpAddr = "10.0.0.1".parse().unwrap();
    let other: IpAddr = "10.0.0.7".parse().unwrap();
    assert_eq!(feeder::to_close(&[], flood), None);
    assert_eq!(
        feeder::to_close(&[writer, flood, flood, flood], flood),
        Some(1)
    );
    assert_eq!(
        feeder::to_close(&[flood, writer, flood, flood], flood),
        Some(0)
    );
    // The newcomer's address then holds as many as the flood's: the oldest of the two.
    assert_eq!(
        feeder::to_close(&[other, writer, flood, flood], other),
        Some(0)
    );
    assert_eq!(
        feeder::to_close(&[writer, other, flood, flood], other),
        Some(1)
    );
    // A flood from several addresses, each holding one: the newcomer's own is closed, never
    // the writer's (the reviewer's case: the oldest of all was the writer's).
    let third: IpAddr = "10.0.0.8".parse().unwrap();
    assert_eq!(
        feeder::to_close(&[writer, flood, other, third], other),
        Some(2)
    );
    // A newcomer from a new address: the oldest of those holding the most.
    assert_eq!(feeder::to_close(&[writer, flood, flood], third), Some(1));
    // IPv6 addresses count by their /64 network.
    let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        feeder::to_close(
            &[v6("2001:db8::1"), v6("2001:db8:1::1"), v6("2001:db8::2")],
            v6("2001:db8::3")
        ),
        Some(0)
    );
    assert_eq!(
        feeder::to_close(
            &[v6("2001:db8::1"), v6("2001:db8:1::1")],
            v6("2001:db8:1::9")
        ),
        Some(1)
    );
}

#[test]
fn bad_peers_are_refused_and_the_running_link_goes_on() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, usize::MAX);
    let addr = r.probe.addr();
    let mut w = writer::<u64>(addr, &wrun, settings());
    let items: Vec<u64> = (0..200_000).collect();
    w.send(&items[..100_000], 1000, |_| {});
    // A connector that says nothing holds a handshake slot; the others still get theirs.
    let _silent = TcpStream::connect(addr).unwrap();
    let refused = |what: &str, expected: &str| {
        poll(what, || {
            r.probe
                .refusals()
                .iter()
                .any(|reason| reason.contains(expected))
        });
    };
    let bad_writer = |id: LinkIdentity, s: TcpSettings| {
        let run = run();
        let _ends = Ends(vec![run.clone()]);
        let _w = writer_with::<u64>(id, addr, &run, s);
        failure_of(&run)
    };
    let prefix = format!("runtime error: connection {LABEL}: host '{READER_HOST}' ({addr})");

    // A server whose proof is wrong may be anything on that address: the writer tries again
    // until its connect wait is over.
    let failure = bad_writer(
        identity::<u64>(),
        TcpSettings {
            secret: secret("a wrong secret, long enough"),
            connect_wait: Duration::from_millis(500),
            ..settings()
        },
    );
    let reason = "wrong secret: the server's proof does not match the client's secret (the \
                  server does not know the secret, or the client has a wrong one)";
    assert_eq!(
        failure,
        format!(
            "{prefix} did not accept the connection within 0.5 s; last error: refused the \
             server: {reason}"
        )
    );
    refused(
        "a wrong secret",
        &format!("the client refused the connection: {reason}"),
    );

    let failure = bad_writer(identity::<u32>(), settings());
    let wrong_type = format!(
        "wrong type: the reader takes u64 (fingerprint {:016x}), the writer sends u32 \
         (fingerprint {:016x})",
        identity::<u64>().type_fingerprint,
        identity::<u32>().type_fingerprint
    );
    assert_eq!(
        failure,
        format!("{prefix} refused the link: the server refused the connection: {wrong_type}")
    );
    refused("a wrong type", &format!("refused the client: {wrong_type}"));

    let other_app = LinkIdentity {
        app: "other".into(),
        ..identity::<u64>()
    };
    let failure = bad_writer(other_app, settings());
    let wrong_app = "wrong application: the reader runs 'plant', the writer 'other'";
    assert_eq!(
        failure,
        format!("{prefix} refused the link: the server refused the connection: {wrong_app}")
    );
    refused(
        "a wrong application",
        &format!("refused the client: {wrong_app}"),
    );

    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    refused(
        "garbage",
        r#"the peer is not an iotstream process (it sent "\xde\xad\xbe\xef\x01\x02\x03")"#,
    );
    let mut http = TcpStream::connect(addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n")
        .unwrap();
    refused(
        "an HTTP request",
        r#"the peer is not an iotstream process (it sent "GET / HTTP/1.1\r\nHost: server\r\n\r\n")"#,
    );

    // A second writer of the same link (another process: another epoch) is busy-refused; it
    // retries until its own connect_wait runs out.
    let failure = bad_writer(
        identity::<u64>(),
        TcpSettings {
            connect_wait: Duration::from_millis(500),
            ..settings()
        },
    );
    assert!(
        failure.starts_with(&format!(
            "{prefix} did not accept the connection within 0.5 s; last error: the server \
             refused the connection: {BUSY_REASON}"
        )),
        "{failure}"
    );
    refused("a second writer", BUSY_REASON);

    w.send(&items[100_000..], 1000, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "the running link is untouched");
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
    assert_eq!(w.counters.reconnects.load(Ordering::Relaxed), 0);
}

/// A relay between a writer and its reader that a test can cut, and keep closed to new
/// connections (accepted, then closed at once) until it reopens: a network that goes away
/// and comes back, on loopback. It can also pause the writer's direction (it reads nothing
/// from the writer, whose socket fills), and counts what it forwarded that way. Its threads
/// end when it is dropped.
struct Relay {
    addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    /// The writer's direction is paused.
    paused: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes forwarded from the writer to the reader.
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    /// Both sockets of every relayed connection, for cutting.
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn new(upstream: SocketAddr) -> Relay {
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            ended: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            forwarded: Arc::default(),
            conns: Arc::default(),
        };
        let (open, ended, conns) = (
            Arc::clone(&relay.open),
            Arc::clone(&relay.ended),
            Arc::clone(&relay.conns),
        );
        let (paused, forwarded) = (Arc::clone(&relay.paused), Arc::clone(&relay.forwarded));
        std::thread::spawn(move || {
            // Ends: when the relay is dropped; each pass accepts one connection or naps.
            while !ended.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let pairs = [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up.try_clone().unwrap(), down.try_clone().unwrap()),
                ];
                conns.lock().unwrap().extend([down, up]);
                for (i, (mut from, mut to)) in pairs.into_iter().enumerate() {
                    // The writer's direction (the first) pauses and counts.
                    let pause = (i == 0).then(|| (Arc::clone(&paused), Arc::clone(&forwarded)));
                    let ended = Arc::clone(&ended);
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        // Ends: when either socket closes or is cut (dropping the relay cuts).
                        loop {
                            if let Some((paused, _)) = &pause {
                                while paused.load(Ordering::SeqCst) && !ended.load(Ordering::SeqCst)
                                {
                                    std::thread::sleep(Duration::from_millis(2));
                                }
                            }
                            let n = match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if let Some((_, forwarded)) = &pause {
                                forwarded.fetch_add(n as u64, Ordering::SeqCst);
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    /// Cuts every relayed connection and refuses new ones until [`Relay::reopen`].
    fn cut_and_hold(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Stops (true) or resumes (false) forwarding what the writer sends.
    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

/// The writer's socket fills (the network takes nothing for a while): the host's thread goes
/// on writing into the budget without blocking (the I/O thread is the one that waits), and
/// once the network moves again the reader gets every element once, in order.
#[test]
fn a_full_socket_never_blocks_the_host_and_loses_nothing() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    // Room for the whole stream: only the socket can hold the writer back.
    let s = TcpSettings {
        unacked_bytes: 64 << 20,
        peer_timeout: Duration::from_secs(10),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 4096, usize::MAX);
    let relay = Relay::new(r.probe.addr());
    let mut w = writer::<u64>(relay.addr, &wrun, s);
    let items: Vec<u64> = (0..4_000_000).collect();
    // Connected first: the writes below go to a connection, not to the queue.
    w.send(&items[..1000], 1000, |_| {});
    poll("the first batch through", || r.sink.items().len() == 1000);
    relay.pause(true);
    // 32 MB: more than loopback socket buffers hold.
    w.send(&items[1000..], 1000, |_| {});
    let stuck = relay.forwarded.load(Ordering::SeqCst);
    assert!(
        stuck < 8 * items.len() as u64,
        "every write returned while the network held {stuck} bytes back"
    );
    relay.pause(false);
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items() == items, "every element, in order, once");
    assert_eq!(w.counters.reconnects.load(Ordering::Relaxed), 0);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::SeqCst);
        self.cut_and_hold();
    }
}

/// The reader got the whole stream, its End included, but its agents leave the last element
/// unconsumed: the End is acknowledged only when the reading run ends. The connection is cut
/// just before that, and the run ends normally while the writer cannot reach it: the feeder
/// lingers (holding the exit), answers the writer's reconnection with the End's
/// acknowledgement, and ends once the writer says Goodbye. Nobody fails.
#[test]
fn a_reader_that_ends_while_cut_off_still_acknowledges_the_end() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let n = 10_000;
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 4096, n - 1);
    let relay = Relay::new(r.probe.addr());
    let mut w = writer::<u64>(relay.addr, &wrun, settings());
    let items: Vec<u64> = (0..n as u64).collect();
    w.send(&items, 1000, |_| {});
    w.tx.close();
    r.sink.wait("the end of stream, all but one consumed", |s| {
        s.eos && s.consumed == n - 1
    });
    assert!(rrun.lingering().len() == 1, "registered from the start");
    relay.cut_and_hold();
    poll("the reader sees the break", || !r.probe.connected());
    rrun.end();
    poll("the reader lingers", || r.probe.lingering());
    assert_eq!(rrun.lingering(), vec![LABEL.to_string()]);
    assert!(!w.tx.finished(), "the End's acknowledgement did not go out");
    assert!(!r.probe.finished(), "the port still accepts");
    relay.reopen();
    poll("the End acknowledged", || {
        assert!(wrun.failure().is_none(), "{:?}", wrun.failure());
        w.tx.finished()
    });
    poll("the feeder ends after the writer's Goodbye", || {
        r.probe.finished()
    });
    assert!(rrun.lingering().is_empty(), "the exit is no longer held");
    assert!(r.sink.items() == items);
    assert!(w.counters.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(w.counters.unacked_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

/// As above, but the writer never comes back: the feeder gives up `reconnect_limit` after the
/// run's end, releasing the exit; the reading run still has not failed (everything it was
/// sent was consumed). A failed run does not linger at all.
#[test]
fn a_lingering_reader_gives_up_after_the_reconnect_limit_and_a_failed_one_does_not_linger() {
    let s = TcpSettings {
        reconnect_limit: Duration::from_millis(500),
        ..settings()
    };
    for fail in [false, true] {
        let (rrun, wrun) = (run(), run());
        let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
        let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 100, 2);
        let relay = Relay::new(r.probe.addr());
        let mut w = writer::<u64>(relay.addr, &wrun, s.clone());
        w.send(&[1, 2, 3], 3, |_| {});
        w.tx.close();
        r.sink
            .wait("the end of stream", |s| s.eos && s.consumed == 2);
        // The writing host goes away for good.
        wrun.fail(Error::Runtime {
            detail: "the writing host died".into(),
        });
        drop(w);
        drop(relay);
        poll("the reader sees the break", || !r.probe.connected());
        // Just before the run's end, from which the limit counts.
        let mut ended = None;
        if fail {
            rrun.fail(Error::Runtime {
                detail: "killed".into(),
            });
        } else {
            ended = Some(Instant::now());
            rrun.end();
            poll("the reader lingers", || r.probe.lingering());
        }
        poll("the feeder ends", || r.probe.finished());
        assert!(rrun.lingering().is_empty());
        if fail {
            assert!(!r.probe.lingering());
            assert_eq!(
                r.probe.gave_up_at(),
                None,
                "a failed run does not wait for the limit"
            );
        } else {
            // The bound was waited out, not skipped: the feeder ended at its deadline, and
            // that deadline is the limit after the run's end (values compared, not a time
            // measured: a slow machine cannot make this fail).
            let deadline = r
                .probe
                .gave_up_at()
                .expect("the feeder ended at its deadline");
            let ended = ended.expect("set above");
            assert!(
                deadline >= ended + s.reconnect_limit,
                "a deadline short of the limit"
            );
            assert_eq!(rrun.failure(), None);
        }
    }
}

/// The writing run ends while its End's acknowledgement has not come (the reader's agents
/// left the last element unconsumed until their run's end; a real run's host with a TCP
/// output waits for the acknowledgement, see the next test, but the link does not count on
/// it): the writer lingers for the acknowledgement and confirms it with its Goodbye, so
/// neither side holds its exit until `reconnect_limit`. Before, the writer's link ended with
/// its run, without the Goodbye, and the reader's feeder lingered for the whole limit.
#[test]
fn a_writer_whose_run_ends_before_the_ends_acknowledgement_lingers_for_it() {
    let s = TcpSettings {
        reconnect_limit: GUARD * 2,
        ..settings()
    };
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let n = 1000;
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 4096, n - 1);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, s);
    let items: Vec<u64> = (0..n as u64).collect();
    w.send(&items, 100, |_| {});
    w.tx.close();
    r.sink.wait("the end of stream, all but one consumed", |s| {
        s.eos && s.consumed == n - 1
    });
    assert_eq!(
        wrun.lingering(),
        vec![LABEL.to_string()],
        "registered from the start"
    );
    // The writing run ends first, the reading one a little after: the End is acknowledged
    // only by the reader's end of run. In between, the writer's link looks at its run a few
    // times (each slice) and stays for the acknowledgement it is owed.
    wrun.end();
    std::thread::sleep(SLICE * 5);
    assert!(
        r.probe.connected() && !w.tx.finished(),
        "the writer stays connected for the End's acknowledgement"
    );
    rrun.end();
    poll(
        "the End acknowledged to the writer after its run's end",
        || w.tx.finished(),
    );
    poll(
        "the reader's feeder ends after the writer's Goodbye",
        || r.probe.finished(),
    );
    poll("neither exit is held", || {
        rrun.lingering().is_empty() && wrun.lingering().is_empty()
    });
    assert!(r.sink.items() == items);
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

/// The writing host's mailbox of a run that ends the moment its End is acknowledged, as a
/// real run does (the host with a TCP output is done once its End is acknowledged, and the
/// run ends with its last host): the first credit envelope, the End's (a stream within the
/// budget gets no other), ends the run.
struct EndsAtTheAck(Arc<TestRun>);

impl Mailbox for EndsAtTheAck {
    fn post(&self, env: Envelope) {
        if let Envelope::Credit { .. } = env {
            self.0.end();
        }
    }
}

/// The writing run ends at the very moment its End is acknowledged (as a real run does): the
/// writer's link must still say Goodbye, so that the reader does not linger for it. Before,
/// the acknowledgement reader saw the run over and cut the connection, often before the I/O
/// thread's Goodbye went out (the reader then held its exit for `reconnect_limit`).
#[test]
fn a_writer_whose_run_ends_at_the_ends_acknowledgement_still_says_goodbye() {
    let s = TcpSettings {
        reconnect_limit: GUARD * 2,
        ..settings()
    };
    for round in 0..10 {
        let (rrun, wrun) = (run(), run());
        let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
        let n = 100;
        let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 4096, n);
        let (spec, _stops) = writer_spec(
            identity::<u64>(),
            r.probe.addr(),
            s.clone(),
            &Arc::default(),
        );
        let wake = Arc::new(EndsAtTheAck(wrun.clone()));
        let mut tx = TcpSender::<u64>::open(spec, wake, 0, 0, wrun.clone() as Run).unwrap();
        let items: Vec<u64> = (0..n as u64).collect();
        assert_eq!(tx.write(&items).unwrap(), n, "within the budget");
        tx.close();
        poll("the writing run ends at the End's acknowledgement", || {
            wrun.is_over()
        });
        assert!(tx.finished());
        // The reading run ends: its feeder had the Goodbye, so it does not linger.
        rrun.end();
        poll(
            &format!("round {round}: the reader ends without lingering"),
            || r.probe.finished(),
        );
        assert!(rrun.lingering().is_empty());
        poll("the writer's link is done", || wrun.lingering().is_empty());
        assert!(r.sink.items() == items);
        assert_eq!(rrun.failure(), None);
        assert_eq!(wrun.failure(), None);
    }
}

/// A loopback port nobody listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Writes of a few elements that find the last frame not yet taken by any connection join it:
/// a writer whose reader does not answer yet queues one frame for a hundred one-element writes
/// (a larger write is a frame of its own), and the reader, once it listens, gets them all, in
/// order, then the rest.
#[test]
fn small_writes_join_a_frame_no_connection_took() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    // Holds the port (no other test is handed it) and never answers a handshake.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut w = writer::<u64>(addr, &wrun, settings());
    for v in 0..100u64 {
        assert_eq!(w.tx.write(&[v]).unwrap(), 1);
    }
    assert_eq!(w.tx.queued_frames(), (1, 1), "one frame, not taken");
    let unacked = w.counters.unacked_bytes.load(Ordering::Relaxed) as usize;
    assert_eq!(
        unacked,
        8 + 100 * 8 + FRAME_COST_BYTES,
        "one payload header, one frame"
    );
    let large: Vec<u64> = (100..300).collect();
    assert_eq!(w.tx.write(&large).unwrap(), 200);
    assert_eq!(
        w.tx.queued_frames(),
        (2, 2),
        "1,600 bytes: a frame of its own"
    );
    drop(silent);
    let r = listen_again(addr, &rrun);
    let rest: Vec<u64> = (300..2_000).collect();
    w.send(&rest, 1, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(
        r.sink.items().into_iter().eq(0..2_000),
        "every element, in order, once"
    );
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

#[test]
fn a_reader_that_never_listens_fails_the_writer_naming_its_host() {
    let wrun = run();
    let _ends = Ends(vec![wrun.clone()]);
    let addr = closed_port();
    let s = TcpSettings {
        connect_wait: Duration::from_millis(300),
        ..settings()
    };
    let _w = writer::<u64>(addr, &wrun, s);
    assert_eq!(
        failure_of(&wrun),
        format!(
            "runtime error: connection {LABEL}: host '{READER_HOST}' ({addr}) did not accept \
             the connection within 0.3 s; last error: cannot connect: Connection refused (os \
             error 111)"
        )
    );
}

#[test]
fn a_writer_that_never_connects_fails_the_reader_naming_its_host() {
    let rrun = run();
    let _ends = Ends(vec![rrun.clone()]);
    let s = TcpSettings {
        connect_wait: Duration::from_millis(300),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s, 10, usize::MAX);
    assert_eq!(
        failure_of(&rrun),
        format!(
            "runtime error: connection {LABEL}: host '{WRITER_HOST}' did not connect to \
             127.0.0.1:0 within 0.3 s"
        )
    );
    poll("the port closes", || r.probe.finished());
    assert_eq!(rrun.feeders_finished(), 1);
}

#[test]
fn a_reader_gone_for_good_fails_the_writer_after_the_reconnect_limit() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let s = TcpSettings {
        reconnect_limit: Duration::from_millis(500),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 100, usize::MAX);
    let addr = r.probe.addr();
    let mut w = writer::<u64>(addr, &wrun, s);
    let items: Vec<u64> = (0..10_000).collect();
    w.send(&items, 1000, |_| {});
    r.sink
        .wait("the first elements", |s| s.items.len() == items.len());
    rrun.fail(Error::Runtime {
        detail: "the reading host died".into(),
    });
    let failure = failure_of(&wrun);
    assert!(
        failure.starts_with(&format!(
            "runtime error: connection {LABEL}: lost host '{READER_HOST}' ({addr}) and could \
             not reconnect within 0.5 s; last error: "
        )),
        "{failure}"
    );
}

#[test]
fn a_writer_gone_for_good_fails_the_reader_after_the_reconnect_limit() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let s = TcpSettings {
        reconnect_limit: Duration::from_millis(500),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 100, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, s);
    let items: Vec<u64> = (0..10_000).collect();
    w.send(&items, 1000, |_| {});
    r.sink
        .wait("the first elements", |s| s.items.len() == items.len());
    // Gone without a word: no Stop, no Goodbye (a run that ends normally with its link open).
    wrun.end();
    drop(w);
    let failure = failure_of(&rrun);
    // Closed or reset, as the kernel has it: the writer's socket may close with bytes unread.
    assert!(
        failure.starts_with(&format!(
            "runtime error: connection {LABEL}: host '{WRITER_HOST}' did not reconnect within \
             0.5 s after the link broke: "
        )),
        "{failure}"
    );
}

#[test]
fn a_stopping_side_tells_its_peer_once() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 100, usize::MAX);
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    w.send(&[1, 2, 3], 3, |_| {});
    r.sink.wait("the first elements", |s| s.items.len() == 3);
    wrun.stop();
    poll("the reader told", || !r.stops.lock().unwrap().is_empty());
    rrun.stop();
    poll("the writer told", || !w.stops.lock().unwrap().is_empty());
    // Several slices later, still once each.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(*r.stops.lock().unwrap(), vec![WRITER_HOST.to_string()]);
    assert_eq!(*w.stops.lock().unwrap(), vec![READER_HOST.to_string()]);
    // A stop is a request to drain, not a break: the stream still completes.
    w.send(&[4, 5], 2, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert_eq!(r.sink.items(), vec![1, 2, 3, 4, 5]);
}

/// A reading run that drains while no writer ever connected (its host is not up) ends the
/// stream at once, empty: nothing came, so nothing is owed, and its drain need not wait for
/// its timeout (found by a user's audit: Ctrl-C on one host of two, the other not started,
/// waited out the drain timeout and exited 1). A restarted reading process waits instead:
/// its writer may come back to resume what it sent to the process before it.
#[test]
fn a_draining_reader_no_writer_ever_reached_ends_its_stream_unless_restarted() {
    let rrun = run();
    let _ends = Ends(vec![rrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 10, usize::MAX);
    rrun.stop();
    r.sink.wait("the end of stream", |s| s.eos);
    assert!(r.sink.items().is_empty());
    poll("the port closes", || r.probe.finished());
    assert_eq!(rrun.failure(), None);
    assert_eq!(rrun.feeders_finished(), 1);
    assert!(rrun.lingering().is_empty(), "no writer to wait for");

    // A writer that comes within the grace (it was up and retrying) is taken: its host may
    // hold data for this input.
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 10, usize::MAX);
    rrun.stop();
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    w.send(&[1, 2, 3], 3, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert_eq!(r.sink.items(), vec![1, 2, 3], "a writer within the grace");
    assert_eq!((rrun.failure(), wrun.failure()), (None, None));

    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    rrun.set_restarted();
    let r = reader::<u64>("127.0.0.1:0", &rrun, settings(), 10, usize::MAX);
    rrun.stop();
    // Past the grace and several of the feeder's passes (each at most a slice): an
    // unrestarted one ended its stream by then.
    std::thread::sleep(super::feeder::UNCLAIMED_GRACE + 5 * SLICE);
    assert!(!r.sink.seen.lock().unwrap().eos, "a restarted reader waits");
    let mut w = writer::<u64>(r.probe.addr(), &wrun, settings());
    w.send(&[1, 2, 3], 3, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert_eq!(
        r.sink.items(),
        vec![1, 2, 3],
        "the writer came and was read"
    );
    assert_eq!(rrun.failure(), None);
}

#[test]
fn the_type_fingerprint_is_stable_and_tells_types_apart() {
    let a = identity::<u64>();
    assert_eq!(a, identity::<u64>());
    assert_ne!(a.type_fingerprint, identity::<i64>().type_fingerprint);
    assert_ne!(a.type_fingerprint, identity::<String>().type_fingerprint);
    assert_eq!(a.type_name, "u64");
}

/// Arbitrary bytes after a handshake the reader accepted (a peer that knows the secret but
/// sends nonsense, or a stream corrupted past TLS) end that connection with an error, never a
/// panic, a hang or a large allocation; the reader goes on and serves the real writer after.
#[test]
fn arbitrary_bytes_after_the_handshake_are_an_error_and_the_reader_goes_on() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let s = TcpSettings {
        reconnect_limit: Duration::from_secs(30),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 4096, usize::MAX);
    let addr = r.probe.addr();
    let shared_secret = s.secret.clone();
    // Random bytes, and random bytes after a well-formed frame header of each kind.
    let garbage = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        (
            any::<u32>(),
            0u8..8,
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(|(len, kind, body)| {
                let mut v = len.to_le_bytes().to_vec();
                v.push(kind);
                v.extend(body);
                v
            }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&garbage, |bytes| {
            let mut tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let hello = identity::<u64>().hello(rand_epoch(), true);
            let accepted = handshake::client_handshake(&mut tcp, &hello, shared_secret.as_deref());
            prop_assert!(accepted.is_ok(), "{accepted:?}");
            let _ = tcp.write_all(&bytes);
            let _ = tcp.shutdown(std::net::Shutdown::Both);
            // The next case is another writer: until the reader has seen this one go, it
            // refuses it as busy (a real writer retries; this raw client does not).
            poll("the reader sees the connection end", || {
                !r.probe.connected()
            });
            Ok(())
        })
        .unwrap();
    assert_eq!(
        rrun.failure(),
        None,
        "nonsense from a peer never fails the reader"
    );
    // The real writer comes after (a new epoch: a restarted writing process, as it were).
    let mut w = writer::<u64>(addr, &wrun, s);
    let items: Vec<u64> = (0..50_000).collect();
    w.send(&items, 1000, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    // A random Data frame may have been well-formed and delivered: the real stream follows it.
    assert!(
        r.sink.items().ends_with(&items),
        "the real stream arrives whole, in order"
    );
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

/// A frame numbered `u64::MAX` (no number can follow it) ends its connection with an error,
/// as any other break of the protocol: nothing of it is delivered, the run does not fail, and
/// the real writer is served after. (Before, the next number was computed with `seq + 1`:
/// a panic where overflow is checked, a wrap to 0 where it is not, and the batch delivered.)
#[test]
fn a_batch_numbered_past_the_last_number_is_refused_and_the_reader_goes_on() {
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let s = TcpSettings {
        reconnect_limit: Duration::from_secs(30),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s.clone(), 4096, usize::MAX);
    let addr = r.probe.addr();
    for frame in ["data", "end"] {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = identity::<u64>().hello(rand_epoch(), true);
        handshake::client_handshake(&mut tcp, &hello, s.secret.as_deref()).unwrap();
        let mut bytes = Vec::new();
        match frame {
            "data" => wire::encode_data(u64::MAX, 1, &7u64.to_le_bytes(), &mut bytes),
            _ => wire::encode_frame(&wire::Frame::End { seq: u64::MAX }, &mut bytes),
        }
        tcp.write_all(&bytes).unwrap();
        poll("the reader ends the connection", || !r.probe.connected());
        assert_eq!(rrun.failure(), None, "{frame}: the run goes on");
        assert!(
            !r.sink.seen.lock().unwrap().eos,
            "{frame}: no end of stream"
        );
    }
    let mut w = writer::<u64>(addr, &wrun, s);
    let items: Vec<u64> = (0..1000).collect();
    w.send(&items, 100, |_| {});
    w.finish();
    r.sink.wait("the end of stream", |s| s.eos);
    assert_eq!(r.sink.items(), items, "nothing of the bad frames delivered");
    assert_eq!(rrun.failure(), None);
    assert_eq!(wrun.failure(), None);
}

fn rand_epoch() -> u64 {
    u64::from_le_bytes(auth::nonce().unwrap()[..8].try_into().unwrap())
}

/// Something on the reader's port without the secret: reads the writer's Hello, answers `m`.
fn impostor_answers(listener: &TcpListener, m: &wire::Message) {
    impostor_answer(listener, m).unwrap();
}

/// [`impostor_answers`]; an error too if no dial comes within 20 s (a writer that gave up).
fn impostor_answer(listener: &TcpListener, m: &wire::Message) -> std::io::Result<()> {
    use std::io::Read;
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no dial within 20 s",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    s.set_nonblocking(false)?;
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let mut hello = vec![0; u32::from_le_bytes(header) as usize];
    s.read_exact(&mut hello)?;
    let mut out = Vec::new();
    wire::encode_message(m, &mut out);
    s.write_all(&out)
}

/// A refusal from whatever answers on the reader's address before it proved the secret does
/// not end a working link: the writer tries again, and goes on with the reader once it is
/// back. Before, one forged `Refuse` ended the writer's run.
#[test]
fn a_refusal_from_an_impostor_on_the_readers_port_does_not_end_the_link() {
    let (first_run, second_run, wrun) = (run(), run(), run());
    let _ends = Ends(vec![first_run.clone(), second_run.clone(), wrun.clone()]);
    let first = reader::<u64>("127.0.0.1:0", &first_run, settings(), 4096, usize::MAX);
    let addr = first.probe.addr();
    let mut w = writer::<u64>(addr, &wrun, settings());
    w.send(&(0..1000u64).collect::<Vec<_>>(), 100, |_| {});
    first
        .sink
        .wait("the first elements", |s| s.items.len() == 1000);
    first_run.fail(Error::Runtime {
        detail: "the reading host died".into(),
    });
    poll("the first reader's port closes", || first.probe.finished());
    let mut impostor = None;
    poll("the impostor has the port", || {
        impostor = TcpListener::bind(addr).ok();
        impostor.is_some()
    });
    let impostor = impostor.unwrap();
    let refuse = wire::Message::Refuse {
        reason: "wrong type: forged by an impostor".into(),
    };
    impostor_answers(&impostor, &refuse);
    // It tries again (and gets another refusal) rather than give up.
    impostor_answers(&impostor, &refuse);
    drop(impostor);
    assert_eq!(wrun.failure(), None, "a forged refusal ended the link");
    let second = reader::<u64>(&addr.to_string(), &second_run, settings(), 4096, usize::MAX);
    w.send(&(1000..2000u64).collect::<Vec<_>>(), 100, |_| {});
    second.sink.wait("the elements after the impostor", |s| {
        s.items.contains(&1999)
    });
    assert_eq!(wrun.failure(), None);
}

/// A `Challenge` whose proof is not the secret's, from an impostor: the writer tries again
/// within its connect wait, and its error, once the wait is over, says what it heard.
/// Before, the first one ended the run at once.
#[test]
fn a_wrong_proof_from_an_impostor_is_retried_within_the_connect_wait() {
    let wrun = run();
    let _ends = Ends(vec![wrun.clone()]);
    let impostor = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = impostor.local_addr().unwrap();
    let s = TcpSettings {
        connect_wait: Duration::from_secs(3),
        ..settings()
    };
    let _w = writer::<u64>(addr, &wrun, s);
    let challenge = wire::Message::Challenge {
        nonce: [1; 32],
        proof: [2; 32],
    };
    impostor_answers(&impostor, &challenge);
    impostor_answers(&impostor, &challenge);
    assert_eq!(wrun.failure(), None, "one forged Challenge ended the run");
    // It answers every dial so, until the writer gives up.
    let answering = std::thread::spawn(
        move || {
            while impostor_answer(&impostor, &challenge).is_ok() {}
        },
    );
    poll("the connect wait is over", || wrun.failure().is_some());
    // A connection that sends nothing ends the impostor's loop.
    drop(TcpStream::connect(addr));
    answering.join().unwrap();
    let failure = wrun.failure().unwrap();
    assert!(
        failure.contains("did not accept the connection within 3 s")
            && failure.contains("wrong secret"),
        "{failure}"
    );
}

/// A server that sends its handshake a byte at a time, each within the read timeout: the dial
/// ends at its deadline, and the writer fails once its connect wait is over. Before, the dial
/// never returned and the connect wait never applied.
#[test]
fn a_server_dribbling_its_handshake_does_not_outlast_the_connect_wait() {
    use std::io::Read;
    let wrun = run();
    let _ends = Ends(vec![wrun.clone()]);
    let impostor = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = impostor.local_addr().unwrap();
    let s = TcpSettings {
        connect_wait: Duration::from_secs(1),
        ..settings()
    };
    let _w = writer::<u64>(addr, &wrun, s);
    let (mut c, _) = impostor.accept().unwrap();
    let mut header = [0u8; 4];
    c.read_exact(&mut header).unwrap();
    let mut hello = vec![0; u32::from_le_bytes(header) as usize];
    c.read_exact(&mut hello).unwrap();
    c.write_all(&65u32.to_le_bytes()).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) && wrun.failure().is_none() {
        std::thread::sleep(Duration::from_millis(500));
        let _ = c.write_all(&[0]);
    }
    let failure = wrun.failure();
    assert!(
        failure
            .as_deref()
            .is_some_and(|f| f.contains("did not finish its handshake")),
        "after {:?}: {failure:?}",
        start.elapsed()
    );
}

/// A client that sends its handshake a byte at a time: cut once the handshake has taken
/// `HANDSHAKE_TIMEOUT`, its slot free again. Before, each read's timeout alone bounded it, and
/// a byte every few seconds kept it for ever.
#[test]
fn a_client_dribbling_its_handshake_is_cut_at_the_handshake_limit() {
    let rrun = run();
    let _ends = Ends(vec![rrun.clone()]);
    let s = TcpSettings {
        connect_wait: Duration::from_secs(60),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, s, 10, usize::MAX);
    let mut c = TcpStream::connect(r.probe.addr()).unwrap();
    c.write_all(&1000u32.to_le_bytes()).unwrap();
    c.write_all(&[0x10]).unwrap();
    poll("the handshake begins", || r.probe.handshakes() == 1);
    let start = Instant::now();
    let limit = HANDSHAKE_TIMEOUT + Duration::from_secs(4);
    while start.elapsed() < limit && r.probe.handshakes() > 0 {
        std::thread::sleep(Duration::from_millis(500));
        let _ = c.write_all(b"I");
    }
    assert_eq!(
        r.probe.handshakes(),
        0,
        "a handshake still going {:?} after it began",
        start.elapsed()
    );
}

/// Secret and TLS: a reader whose certificate checked out, refusing this host's certificate
/// (from a CA it does not trust), ends the link at once: it proved who it is. Before, the
/// alert counted as unproven and was retried for the whole connect wait.
#[test]
fn a_proven_tls_reader_refusing_this_hosts_certificate_ends_the_link_at_once() {
    use super::tls::tests::{ca, host_files};
    let dir = tempfile::tempdir().unwrap();
    let plant = ca("plant CA");
    let other = ca("other CA");
    // The writer trusts the reader's CA, but its own certificate comes from another CA.
    let writer_files = host_files(dir.path(), "a", &other, &["127.0.0.1"], &[&plant, &other]);
    let reader_files = host_files(dir.path(), "b", &plant, &["127.0.0.1"], &[&plant]);
    let (rrun, wrun) = (run(), run());
    let _ends = Ends(vec![rrun.clone(), wrun.clone()]);
    let rs = TcpSettings {
        tls: Some(tls::TlsConfig::load(&reader_files).unwrap()),
        ..settings()
    };
    let r = reader::<u64>("127.0.0.1:0", &rrun, rs, 4096, usize::MAX);
    let ws = TcpSettings {
        tls: Some(tls::TlsConfig::load(&writer_files).unwrap()),
        connect_wait: Duration::from_secs(30),
        ..settings()
    };
    let _w = writer::<u64>(r.probe.addr(), &wrun, ws);
    poll("the writer fails", || wrun.failure().is_some());
    let failure = wrun.failure().unwrap();
    assert!(
        failure.contains("refused the link") && failure.contains("UnknownCA"),
        "{failure}"
    );
}

/// A writer waiting for its reader says each new kind of answer at once (a wrong secret after
/// "connection refused"), the same one again only every few seconds. Before, a refusal heard
/// between two "connection refused" lines was never logged (the hosts scenario
/// `a_wrong_secret_is_refused_on_both_sides` failed once on it).
#[test]
fn dial_errors_of_one_kind_differ_only_in_numbers() {
    use super::writer::same_kind;
    let refused = |port: u16| format!("cannot connect: Connection refused (os error 111) {port}");
    assert!(same_kind(&refused(2000), &refused(2001)));
    assert!(!same_kind(
        &refused(2000),
        "refused the server: wrong secret: the server's proof does not match"
    ));
}
