//! Sources that talk to the outside world deliver what has arrived without waiting for a full
//! batch, and end cleanly.

use std::io::Write;
use std::time::{Duration, Instant};

use iotstream::Graph;

/// A line written into a FIFO reaches the sink before the next one is written: the line source
/// does not wait for a full batch. Every wait is bounded, so a regression fails, never hangs.
#[test]
fn file_lines_arrive_one_by_one_from_a_fifo() {
    let dir = std::env::temp_dir().join(format!("iotstream-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("sensor.fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let mut g = Graph::new("fifo");
    let lines = g.source_file_lines("sensor", &fifo);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    for i in 0..5 {
        writeln!(writer, "reading {i}").unwrap();
        writer.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() <= i && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.len(), i + 1, "line {i} did not arrive on its own");
    }
    drop(writer); // end of file: the source ends, the run drains and ends
    running.join().unwrap();
    assert_eq!(
        out.values(),
        (0..5).map(|i| format!("reading {i}")).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Lines come out exactly: a `\r\n` ending is removed, an empty line is a line, a last line
/// without its ending still counts, and the lines of a file larger than one read are all there.
#[test]
fn file_lines_are_exact_whatever_the_line_endings() {
    let path = std::env::temp_dir().join(format!("iotstream-lines-{}", std::process::id()));
    let mut text = String::from("first\r\n\nthird\n");
    let many: Vec<String> = (0..20_000).map(|i| format!("reading {i}")).collect();
    for l in &many {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("last, no line ending");
    std::fs::write(&path, &text).unwrap();
    let mut g = Graph::new("exact_lines");
    let lines = g.source_file_lines("file", &path);
    let out = g.collect("out", &lines);
    g.run().unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut want = vec!["first".to_string(), String::new(), "third".to_string()];
    want.extend(many);
    want.push("last, no line ending".to_string());
    assert_eq!(out.values(), want);
}

/// A line that is not UTF-8 fails the source, naming the file and the line; the lines read
/// with it, before it, are delivered (shown with the harness, where the sink may step after the
/// error; a threaded run stops at once).
#[test]
fn a_line_that_is_not_utf8_is_an_error_naming_it() {
    let path = std::env::temp_dir().join(format!("iotstream-latin1-{}", std::process::id()));
    std::fs::write(&path, b"ok\nalso ok\ncaf\xe9\n").unwrap();
    let mut g = Graph::new("latin1");
    let lines = g.source_file_lines("file", &path);
    let out = g.collect("out", &lines);
    let mut h = iotstream::Harness::new(g).unwrap();
    let err = h.run().unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(err.agent(), Some("file"));
    assert!(err.to_string().contains("line 3: not valid UTF-8"), "{err}");
    let _ = h.run(); // let the sink take what was delivered
    assert_eq!(out.values(), ["ok", "also ok"]);
}

/// Waits (bounded: a hang guard, not a speed claim) until `out` holds `n` values.
fn wait_for(out: &iotstream::Collected<String>, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(out.len(), n, "{what}: {:?}", out.values());
}

/// A pipe: its read end (kept open while the test lasts), a path that opens it, its write end.
fn pipe() -> (std::os::fd::OwnedFd, String, std::fs::File) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&reader));
    (reader, path, std::fs::File::from(writer))
}

/// A producer that stops in the middle of a line (a block-buffered program, say) does not hold
/// back the complete lines before it; the unfinished line comes out once it is finished.
#[test]
fn complete_lines_are_not_held_back_by_an_unfinished_one() {
    let (reader, path, mut writer) = pipe();
    let mut g = Graph::new("unfinished");
    let lines = g.source_file_lines("pipe", &path);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    writer.write_all(b"a\nb\nc").unwrap();
    wait_for(&out, 2, "the complete lines");
    writer.write_all(b"d\n").unwrap();
    wait_for(&out, 3, "the line once finished");
    drop(writer);
    running.join().unwrap();
    assert_eq!(out.values(), ["a", "b", "cd"]);
    drop(reader);
}

/// A stop while the input is quiet ends the source promptly, and it has read nothing it did not
/// emit: what is written afterwards is still there for the next reader of the same pipe.
#[test]
fn a_stopped_line_source_leaves_unread_input_in_the_pipe() {
    let (reader, path, mut writer) = pipe();

    let mut g = Graph::new("first_reader");
    let lines = g.source_file_lines("pipe", &path);
    let first = g.collect("out", &lines);
    let running = g.start().unwrap();
    writer.write_all(b"1\n").unwrap();
    wait_for(&first, 1, "the first reader's line");
    running.stop();
    running.join().unwrap();

    writer.write_all(b"2\n3\n").unwrap();
    drop(writer);
    let mut g = Graph::new("second_reader");
    let lines = g.source_file_lines("pipe", &path);
    let second = g.collect("out", &lines);
    g.run().unwrap();
    assert_eq!(first.values(), ["1"]);
    assert_eq!(second.values(), ["2", "3"]);
    drop(reader);
}

/// A line of 16 MiB is accepted; one byte more fails the source, naming the line.
#[test]
fn lines_up_to_16_mib_are_accepted_and_longer_ones_named() {
    const MIB16: usize = 16 << 20;
    let path = std::env::temp_dir().join(format!("iotstream-long-{}", std::process::id()));
    let run = |long: usize| {
        let mut text = b"short\n".to_vec();
        text.resize(6 + long, b'x');
        text.extend_from_slice(b"\r\nafter\n");
        std::fs::write(&path, &text).unwrap();
        let mut g = Graph::new("long_lines");
        let lines = g.source_file_lines("file", &path);
        let out = g.collect("out", &lines);
        let result = g
            .run()
            .map(|_| out.values().iter().map(String::len).collect::<Vec<_>>());
        std::fs::remove_file(&path).unwrap();
        result
    };
    assert_eq!(run(MIB16).unwrap(), [5, MIB16, 5]);
    let err = run(MIB16 + 1).unwrap_err().to_string();
    assert!(err.contains("line 2: longer than 16 MiB"), "{err}");
}

/// `Source::delivered` follows every `fill` that appended something, once its elements are in
/// the graph, and never one that appended nothing: in a threaded run and under the harness.
#[test]
fn delivered_is_called_after_each_fill_that_emitted() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Emits one element per call, every other call nothing, `n` elements in all; records
    /// how many elements had been emitted at each `delivered`.
    struct Acking {
        next: u32,
        n: u32,
        calls: u32,
        emitted: usize,
        delivered_at: Arc<Mutex<Vec<usize>>>,
        fills: Arc<AtomicUsize>,
    }
    impl iotstream::Source<u32> for Acking {
        fn fill(&mut self, out: &mut Vec<u32>, _max: usize) -> Result<bool, iotstream::AgentError> {
            self.calls += 1;
            self.fills.fetch_add(1, Ordering::Relaxed);
            if self.calls % 2 == 0 && self.next < self.n {
                out.push(self.next);
                self.next += 1;
                self.emitted += 1;
            }
            Ok(self.next < self.n)
        }
        fn delivered(&mut self) {
            self.delivered_at.lock().unwrap().push(self.emitted);
        }
    }
    for threaded in [true, false] {
        let delivered_at = Arc::new(Mutex::new(Vec::new()));
        let fills = Arc::new(AtomicUsize::new(0));
        let mut g = Graph::new("acking");
        let s = g.source(
            "acking",
            Acking {
                next: 0,
                n: 5,
                calls: 0,
                emitted: 0,
                delivered_at: Arc::clone(&delivered_at),
                fills: Arc::clone(&fills),
            },
        );
        let out = g.collect("out", &s);
        if threaded {
            g.run().unwrap();
        } else {
            let mut h = iotstream::Harness::new(g).unwrap();
            h.finish().unwrap();
        }
        assert_eq!(out.values(), [0, 1, 2, 3, 4], "threaded: {threaded}");
        assert_eq!(
            *delivered_at.lock().unwrap(),
            [1, 2, 3, 4, 5],
            "threaded: {threaded}"
        );
        assert_eq!(fills.load(Ordering::Relaxed), 10, "threaded: {threaded}");
    }
}

/// Runs `run` on a thread of its own; fails the test (instead of hanging) if it has not
/// returned in 60 s.
fn within_60s<R: Send + 'static>(run: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run did not end within 60 s")
}

/// A `max_batch` far beyond what any call fills is a limit, not a size to reserve: the run
/// delivers everything and ends. Before, the source's thread panicked reserving room for it
/// (outside the calls whose panics are caught) and the run hung, its agent asleep, or ended
/// without the elements. (The run keeps a batch to an eighth of the credit it feeds: the
/// connection's bounds are as huge here, so that `max_batch` reaches the source's thread.)
#[test]
fn a_source_with_a_huge_max_batch_delivers_and_ends() {
    let out = within_60s(|| {
        let mut g = Graph::new("huge_batch");
        g.set_default_capacity(usize::MAX / 2);
        g.set_default_capacity_bytes(usize::MAX / 2);
        let mut next = 0u64;
        let s = g.source_with(
            "counter",
            move |out: &mut Vec<u64>, max: usize| {
                out.extend((next..next + 1000).take(max));
                next += 1000;
                Ok(next < 5000)
            },
            iotstream::SourceOptions {
                max_batch: usize::MAX / 4,
                interval: None,
            },
        );
        let out = g.collect("out", &s);
        g.run().map(|_| out.values())
    });
    assert_eq!(out.unwrap(), (0..5000).collect::<Vec<u64>>());
}

/// An interval longer than time can count (`Duration::MAX`: "once, then never") calls the
/// source once and then waits for the stop. Before, the source's thread panicked computing
/// the next tick (an `Instant` overflow) and the run hung or, once such panics failed the run,
/// failed with it.
#[test]
fn an_interval_past_what_an_instant_holds_calls_once_then_waits_for_the_stop() {
    let values = within_60s(|| {
        let mut g = Graph::new("once");
        let s = g.source_fn("tick", Duration::MAX, Some(2), || 42u64);
        let out = g.collect("out", &s);
        let running = g.start().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        running.stop();
        running.join().map(|_| out.values())
    });
    assert_eq!(values.unwrap(), [42]);
}

/// The `max` each `fill` of a source of `E` (asked for batches of `max_batch`) was given, in
/// a threaded run of `source → collect` set up by `wire`, which may add more readers.
fn maxes_asked<E: iotstream::Element + Default + PartialEq + std::fmt::Debug>(
    max_batch: usize,
    wire: impl FnOnce(&mut Graph, &iotstream::Stream<E>),
) -> Vec<usize> {
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&asked);
    let mut g = Graph::new("batch_limits");
    let mut calls = 0;
    let s = g.source_with(
        "counter",
        move |out: &mut Vec<E>, max: usize| {
            seen.lock().unwrap().push(max);
            out.extend((0..10).map(|_| E::default()));
            calls += 1;
            Ok(calls < 10)
        },
        iotstream::SourceOptions {
            max_batch,
            interval: None,
        },
    );
    wire(&mut g, &s);
    let out = g.collect("out", &s);
    let delivered = within_60s(move || g.run().map(|_| out.len())).unwrap();
    assert_eq!(delivered, 100);
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 10, "fill was called {} times", asked.len());
    asked
}

/// A source's batches are kept to an eighth of the credit of the connections it feeds (never
/// below 256 KiB of elements), so that 8 of them are in flight: a batch that took a
/// connection's whole credit made writer and reader take turns (two processes moved 1 KiB
/// elements at half the speed). Before, `fill` was asked for `max_batch` whatever the
/// connections held.
#[test]
fn a_sources_batches_are_an_eighth_of_the_credit_it_feeds_at_most() {
    type Kib = [[u64; 32]; 4]; // 1 KiB
    let all = |asked: Vec<usize>, want: usize| {
        assert!(
            asked.iter().all(|&m| m == want),
            "asked {asked:?}, not {want}"
        );
    };
    // The default byte bound (1 MiB) holds 1024 of them: an eighth is 128, below 256 KiB of
    // elements, so batches of 256.
    all(maxes_asked::<Kib>(4096, |_, _| {}), 256);
    // Never raised above max_batch.
    all(maxes_asked::<Kib>(100, |_, _| {}), 100);
    // The smallest credit among the readers counts: 4096 of a 16 MiB default, 4096 elements
    // for a slow reader; an eighth of 4096.
    all(
        maxes_asked::<Kib>(4096, |g, s| {
            g.set_default_capacity_bytes(16 << 20);
            slow_reader(g, s, 4096);
        }),
        512,
    );
    // Never below 256 KiB of elements: a reader holding 16 of them leaves batches of 256.
    all(maxes_asked::<Kib>(4096, |g, s| slow_reader(g, s, 16)), 256);
    // So small elements keep their batches, even over a small credit (which splits them).
    all(
        maxes_asked::<u64>(4096, |g, _| {
            g.set_default_capacity(3);
        }),
        4096,
    );
}

/// Adds a reader of `s` whose connection holds `capacity` elements.
fn slow_reader<E: iotstream::Element>(g: &mut Graph, s: &iotstream::Stream<E>, capacity: usize) {
    let input = g.add_agent("slow", |p| {
        let input = p.input::<E>("in");
        (Drain(input), input)
    });
    g.connect_with(s, &input, iotstream::Connection::new().capacity(capacity));
}

/// Consumes what it is shown.
struct Drain<E>(iotstream::Input<E>);

impl<E: iotstream::Element> iotstream::Agent for Drain<E> {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        let n = i.slice(&self.0).len();
        i.consume(&self.0, n);
        Ok(())
    }
}

/// Errors about an input name its stream (found by a user's audit: "stream #0.0 is not an
/// input made with Graph::input", and "the application has stopped" naming no input).
#[test]
fn errors_about_an_input_name_its_stream() {
    let mut g = Graph::new("named");
    let readings = g.input::<u64>("readings");
    let doubled = g.map("double", &readings, |x: &u64| x * 2);
    let _out = g.collect("out", &doubled);
    let mut running = g.start().unwrap();
    let tx = running.input(&readings).unwrap();
    let again = running.input(&readings).unwrap_err().to_string();
    assert!(
        again.contains("stream 'readings.out'") && again.contains("already taken"),
        "{again}"
    );
    let not_input = running.input(&doubled).unwrap_err().to_string();
    assert!(
        not_input.contains("stream 'double.out' is not an input made with Graph::input"),
        "{not_input}"
    );
    tx.push(1).unwrap();
    running.stop();
    running.join().unwrap();
    let late = tx.push(2).unwrap_err().to_string();
    assert!(
        late.contains("input 'readings.out'") && late.contains("the application has stopped"),
        "{late}"
    );

    let mut g = Graph::new("named");
    let readings = g.input::<u64>("readings");
    let doubled = g.map("double", &readings, |x: &u64| x * 2);
    let _out = g.collect("out", &doubled);
    let mut h = iotstream::Harness::new(g).unwrap();
    let wrong = h.push(&doubled, vec![1]).unwrap_err().to_string();
    assert!(
        wrong.contains("stream 'double.out' is not an input made with Graph::input"),
        "{wrong}"
    );
}
