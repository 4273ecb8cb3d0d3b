//! Marks are bounded like data. A mark (a watermark, idleness) takes no credit, so a writer
//! whose steps send marks and no data (a stage passing watermarks and nothing else for a
//! while: a filter, an aggregation between firings), or whose data a full `DropNewest` link
//! drops, sent one envelope per step to a reader that is stuck (a sink blocked on the outside
//! world), for as long as it was stuck: an audit saw 96 MiB after 1.5 M steps, 48 bytes each,
//! growing with the stream, not with any capacity. A reader's queue now merges the marks of an
//! input as the input itself would (`join_waiting`), so a stuck reader holds at most a few.
//!
//! A counting global allocator measures the bytes live on the heap while the reader is stuck.
//! Before the merge, 500,000 elements made the queue of the stuck reader grow to 12-24 MiB;
//! with it, under 3 MiB (pools and buffers) whatever the length of the stream.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use iotstream::ops::event::Watermarks;
use iotstream::{
    Agent, AgentError, Connection, Graph, Input, Inputs, Outputs, Policy, Running, Stream,
    Transport,
};

struct Counting;

/// Bytes allocated and not freed.
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the one `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: i64 = 1 << 20;

/// Elements of each run: enough for the unmerged queue to pass the bound several times over.
const N: u64 = 500_000;

/// What the heap may grow by while the reader is stuck: links of 2 elements, a writer's pool,
/// the spare buffers of the process (measured: under 3 MiB).
const BOUND: i64 = 8 * MIB;

/// The live-heap figures of one test must not mix with another's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Consumes everything, emits nothing: its output carries only its input's watermarks.
struct DropAll {
    input: Input<(u64, u64)>,
}

impl Agent for DropAll {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.input);
        Ok(())
    }
}

/// A sink stuck in its first step until released (a write that blocks).
struct Stuck {
    input: Input<(u64, u64)>,
    entered: Option<mpsc::Sender<()>>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Agent for Stuck {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        if let Some(entered) = self.entered.take() {
            let _ = entered.send(());
            let _ = self.release.lock().unwrap().recv();
        }
        i.consume_all(&self.input);
        Ok(())
    }
}

/// A timed stream of `N` elements `(t, t)`, one per `fill`, with ascending watermarks, in a
/// graph whose links hold 2 elements.
fn timed_stream(app: &str) -> (Graph, Stream<(u64, u64)>) {
    let mut g = Graph::new(app);
    g.worker_threads(2);
    g.set_default_capacity(2);
    let mut t = 0u64;
    let s = g.source(
        "clock",
        move |out: &mut Vec<(u64, u64)>, _max: usize| -> Result<bool, AgentError> {
            t += 1;
            out.push((t, t));
            Ok(t < N)
        },
    );
    let timed = g.watermarks("timed", &s, Watermarks::ascending());
    (g, timed)
}

/// Connects `stream` to a sink that gets stuck in its first step; runs the graph until
/// `done` says the writer side got through its stream (bounded: 120 s), the sink stuck all
/// the while; then releases the sink and joins. The most the heap grew by meanwhile.
fn peak_while_stuck(
    mut g: Graph,
    stream: &Stream<(u64, u64)>,
    conn: Connection,
    done: impl Fn(&Running) -> bool,
) -> i64 {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let input = g.add_agent("stuck", |p| {
        let input = p.input::<(u64, u64)>("in");
        let sink = Stuck {
            input,
            entered: Some(entered_tx),
            release: release_rx,
        };
        (sink, input)
    });
    g.place_on_thread("stuck", "stuck");
    g.connect_with(stream, &input, conn);
    let before = LIVE.load(Ordering::Relaxed);
    let running = g.start().unwrap();
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the sink steps");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    while !done(&running) {
        peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
        assert!(
            Instant::now() < deadline,
            "the writer did not get through its stream; the heap grew by {} KiB",
            peak / 1024
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
    release.send(()).unwrap();
    running.join().unwrap();
    peak
}

/// A stage that drops everything, its watermarks going on to a stuck sink over `conn`.
fn marks_only_to_a_stuck_reader(app: &str, conn: Connection) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut g, timed) = timed_stream(app);
    let (input, quiet) = g.add_agent("drop_all", |p| {
        let input = p.input::<(u64, u64)>("in");
        let out = p.output::<(u64, u64)>("out");
        (DropAll { input }, (input, out))
    });
    g.connect(&timed, &input);
    let consumed = |r: &Running| {
        r.metrics()
            .link("timed.out", "drop_all")
            .map_or(0, |l| l.elements)
            >= N
    };
    let peak = peak_while_stuck(g, &quiet, conn, consumed);
    assert!(
        peak < BOUND,
        "{app}: the heap grew by {} KiB while the sink was stuck",
        peak / 1024
    );
}

#[test]
fn marks_to_a_stuck_reader_stay_within_the_bounds() {
    marks_only_to_a_stuck_reader("marks_local", Connection::new());
}

#[test]
fn marks_over_a_ring_to_a_stuck_reader_stay_within_the_bounds() {
    marks_only_to_a_stuck_reader(
        "marks_ring",
        Connection::new().transport(Transport::SharedMemory),
    );
}

/// The everyday shape: a timed stream into a slow sink over a `DropNewest` link, whose data is
/// dropped and counted, its marks kept.
#[test]
fn a_drop_newest_link_to_a_stuck_reader_stays_within_the_bounds() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (g, timed) = timed_stream("marks_drop_newest");
    let written = |r: &Running| r.metrics().stream("timed.out").map_or(0, |s| s.elements) >= N;
    let conn = Connection::new().policy(Policy::DropNewest);
    let peak = peak_while_stuck(g, &timed, conn, written);
    assert!(
        peak < BOUND,
        "the heap grew by {} KiB while the sink was stuck behind a DropNewest link",
        peak / 1024
    );
}
