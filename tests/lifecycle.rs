//! End of stream, error and panic propagation, feedback loops, stalls and graph mistakes, in
//! both executors (the deterministic harness and the threaded runtime). Nothing may hang: every
//! threaded run here is joined through `join_within`, which fails the test after 60 s instead.

#[path = "support/ticker.rs"]
mod ticker;

use std::sync::mpsc;
use std::time::Duration;

use ticker::{add_ticker, Ticks};

use iotstream::{
    Agent, AgentError, Connection, Error, Graph, Harness, Input, Inputs, Outputs, Stream,
};

/// Runs `g` on threads; fails the test (instead of hanging) if the run does not end in 60 s.
fn join_within(g: Graph) -> Result<iotstream::Metrics, Error> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(g.run());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run did not end within 60 s")
}

fn pipeline(name: &str, n: u64) -> (Graph, iotstream::Collected<u64>) {
    let mut g = Graph::new(name);
    let s = g.source_iter("numbers", 0..n);
    let m = g.map("square", &s, |v: &u64| v * v);
    let f = g.filter("even", &m, |v: &u64| v % 2 == 0);
    let out = g.collect("out", &f);
    (g, out)
}

#[test]
fn finite_sources_end_the_run_and_nothing_is_lost() {
    let (g, out) = pipeline("finite", 100_000);
    let m = join_within(g).unwrap();
    let expected: Vec<u64> = (0..100_000u64)
        .map(|v| v * v)
        .filter(|v| v % 2 == 0)
        .collect();
    assert_eq!(out.values(), expected);
    assert_eq!(m.stream("numbers.out").unwrap().elements, 100_000);
    assert_eq!(m.agent("square").unwrap().consumed, 100_000);
}

#[test]
fn harness_finish_drains_and_ends_every_agent() {
    let (g, out) = pipeline("finite_harness", 1000);
    let mut h = Harness::new(g).unwrap();
    h.finish().unwrap();
    assert!(h.is_finished());
    assert_eq!(out.len(), 500);
}

#[test]
fn an_empty_source_ends_the_run() {
    let (g, out) = pipeline("empty", 0);
    join_within(g).unwrap();
    assert!(out.is_empty());
}

/// Emits its input's sum once, when its input ends.
struct SumAtEnd {
    input: Input<u64>,
    out: Stream<u64>,
    sum: u64,
}

impl Agent for SumAtEnd {
    fn step(&mut self, inputs: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        self.sum += inputs.slice(&self.input).iter().sum::<u64>();
        inputs.consume_all(&self.input);
        Ok(())
    }
    fn finish(&mut self, outputs: &mut Outputs) -> Result<(), AgentError> {
        outputs.push(&self.out, self.sum);
        Ok(())
    }
}

#[test]
fn finish_runs_after_every_element_and_before_outputs_close() {
    for threaded in [false, true] {
        let mut g = Graph::new("sum_at_end");
        let s = g.source_iter("numbers", 1..=1000u64);
        let (input, out) = g.add_agent("sum", |p| {
            let input = p.input::<u64>("in");
            let out = p.output::<u64>("out");
            (SumAtEnd { input, out, sum: 0 }, (input, out))
        });
        g.connect_with(&s, &input, Connection::new().capacity(7));
        let total = g.collect("total", &out);
        if threaded {
            join_within(g).unwrap();
        } else {
            Harness::new(g).unwrap().finish().unwrap();
        }
        assert_eq!(total.values(), [500_500], "threaded: {threaded}");
    }
}

#[test]
fn an_agent_error_stops_the_run_and_names_the_agent() {
    let mut g = Graph::new("bad_data");
    let s = g.source_iter(
        "lines",
        (0..10_000).map(|i| {
            if i == 5000 {
                "x".to_string()
            } else {
                i.to_string()
            }
        }),
    );
    let n = g.try_map("parse", &s, |l: &String| l.parse::<u64>());
    let _out = g.collect("out", &n);
    let err = join_within(g).unwrap_err();
    assert_eq!(err.agent(), Some("parse"));
    assert!(err.to_string().contains("invalid digit"), "{err}");
}

#[test]
fn an_agent_error_in_the_harness_names_the_agent() {
    let mut g = Graph::new("bad_data");
    let x = g.input::<String>("x");
    let n = g.try_map("parse", &x, |l: &String| l.parse::<u64>());
    let out = g.collect("out", &n);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, ["1".to_string(), "2".into()]).unwrap();
    h.run().unwrap();
    h.push(&x, ["three".to_string()]).unwrap();
    let err = h.run().unwrap_err();
    assert_eq!(err.agent(), Some("parse"));
    // What was accepted before the bad element is not lost.
    assert_eq!(out.values(), [1, 2]);
}

/// The error of a `try_` operator names the failing element by its index in the stream: the
/// index within a batch (what it said before) depends on how the input happened to be batched.
#[test]
fn a_try_error_names_the_elements_index_in_the_stream_not_in_its_batch() {
    let mut g = Graph::new("bad_data");
    let x = g.input::<String>("x");
    let n = g.try_map("parse", &x, |l: &String| l.parse::<u64>());
    g.try_for_each("check", &n, |v: &u64| {
        if *v == 7 {
            Err(format!("unlucky {v}"))
        } else {
            Ok(())
        }
    });
    let mut h = Harness::new(g).unwrap();
    h.push(&x, ["1".to_string(), "2".into(), "3".into()])
        .unwrap();
    h.run().unwrap();
    h.push(&x, ["4".to_string(), "x".into()]).unwrap();
    let err = h.run().unwrap_err().to_string();
    assert!(err.contains("element 4 of the stream"), "{err}");

    let mut g = Graph::new("bad_data");
    let x = g.input::<u64>("x");
    g.try_for_each("check", &x, |v: &u64| {
        if *v == 7 {
            Err(format!("unlucky {v}"))
        } else {
            Ok(())
        }
    });
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 2, 3]).unwrap();
    h.run().unwrap();
    h.push(&x, [5, 7]).unwrap();
    let err = h.run().unwrap_err().to_string();
    assert!(err.contains("element 4 of the stream"), "{err}");
    assert!(err.contains("unlucky 7"), "{err}");
}

#[test]
fn a_panic_stops_the_run_and_names_the_agent() {
    let mut g = Graph::new("panicky");
    let s = g.source_iter("numbers", 0..10_000u64);
    let m = g.map("explode", &s, |v: &u64| {
        assert!(*v != 1234, "reading {v} is impossible");
        *v
    });
    let _out = g.collect("out", &m);
    let err = join_within(g).unwrap_err();
    assert!(matches!(err, Error::Panic { .. }), "{err:#?}");
    assert_eq!(err.agent(), Some("explode"));
    assert!(
        err.to_string().contains("reading 1234 is impossible"),
        "{err}"
    );
}

#[test]
fn a_failing_source_names_the_source() {
    let mut g = Graph::new("missing_file");
    let lines = g.source_file_lines("log", "/nonexistent/iotstream/test.log");
    let _out = g.collect("out", &lines);
    let err = join_within(g).unwrap_err();
    assert_eq!(err.agent(), Some("log"));
    assert!(
        err.to_string().contains("/nonexistent/iotstream/test.log"),
        "{err}"
    );
}

#[test]
fn a_panicking_sink_in_the_middle_of_an_endless_source_still_ends_the_run() {
    let mut g = Graph::new("endless");
    let mut n = 0u64;
    let s = g.source(
        "sensor",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            out.extend(n..n + max as u64);
            n += max as u64;
            Ok(true)
        },
    );
    g.for_each("fragile", &s, |v: &u64| {
        assert!(*v < 100_000, "overflow at {v}")
    });
    let err = join_within(g).unwrap_err();
    assert_eq!(err.agent(), Some("fragile"));
}

/// Each value v ≥ 2 goes round the loop as v / 2; the loop ends when nothing is emitted.
fn halving_loop(name: &str, capacity: usize) -> (Graph, iotstream::Collected<u64>) {
    let (g, all, _) = halving_loop_and_stream(name, capacity);
    (g, all)
}

/// [`halving_loop`], and the stream of every value that went round.
fn halving_loop_and_stream(
    name: &str,
    capacity: usize,
) -> (Graph, iotstream::Collected<u64>, Stream<u64>) {
    let mut g = Graph::new(name);
    g.set_default_capacity(capacity);
    let seeds = g.source_iter("seeds", [1000u64, 17, 64]);
    let (loop_in, looped) = g.feedback::<u64>("loop");
    let (a, b, out) = g.add_agent("merge", |p| {
        let a = p.input::<u64>("seeds");
        let b = p.input::<u64>("looped");
        let out = p.output::<u64>("out");
        (Merge2 { a, b, out }, (a, b, out))
    });
    g.connect(&seeds, &a);
    g.connect(&looped, &b);
    let next = g.filter_map("halve", &out, |v: &u64| (*v >= 2).then_some(v / 2));
    g.connect(&next, &loop_in);
    let all = g.collect("all", &out);
    (g, all, out)
}

struct Merge2 {
    a: Input<u64>,
    b: Input<u64>,
    out: Stream<u64>,
}

impl Agent for Merge2 {
    fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
        for input in [self.a, self.b] {
            outputs.extend(&self.out, inputs.slice(&input).iter().copied());
            inputs.consume_all(&input);
        }
        Ok(())
    }
}

fn halvings(seeds: &[u64]) -> Vec<u64> {
    let mut all: Vec<u64> = Vec::new();
    for &s in seeds {
        let mut v = s;
        all.push(v);
        while v >= 2 {
            v /= 2;
            all.push(v);
        }
    }
    all.sort_unstable();
    all
}

#[test]
fn a_feedback_loop_ends_when_it_goes_quiet() {
    let expected = halvings(&[1000, 17, 64]);
    for threaded in [false, true] {
        let (g, all) = halving_loop("halving", 1024);
        if threaded {
            join_within(g).unwrap();
        } else {
            let mut h = Harness::new(g).unwrap();
            h.finish().unwrap();
            assert!(h.is_finished());
        }
        let mut got = all.values();
        got.sort_unstable();
        assert_eq!(got, expected, "threaded: {threaded}");
    }
}

/// An agent after a loop that emits at the end of its input (`map_with_state_and_end`), read by
/// another agent: when the loop goes quiet, only the loop is closed; the agents after it end
/// by end of stream, and what `end` returns reaches its reader (it was refused as "data
/// arrived after the end of stream", found by audit D: every agent was closed at once).
#[test]
fn what_follows_a_loop_gets_what_is_emitted_at_its_end() {
    let build = || {
        let (mut g, _, out) = halving_loop_and_stream("halving_end", 1024);
        let counted = g.map_with_state_and_end(
            "count",
            &out,
            0u64,
            |v: &u64, n: u64| (*v, n + 1),
            |n: u64| Some(1_000_000 + n),
        );
        let after = g.filter("after", &counted, |_| true);
        let last = g.collect("last", &after);
        (g, last)
    };
    let expected = halvings(&[1000, 17, 64]);
    for threaded in [false, true] {
        let (g, last) = build();
        if threaded {
            join_within(g).unwrap();
        } else {
            let mut h = Harness::new(g).unwrap();
            h.finish().unwrap();
        }
        let got = last.values();
        assert_eq!(
            got.last(),
            Some(&(1_000_000 + expected.len() as u64)),
            "threaded: {threaded}"
        );
        let mut values = got[..got.len() - 1].to_vec();
        values.sort_unstable();
        assert_eq!(values, expected, "threaded: {threaded}");
    }
}

/// An agent that needs 10 elements before it consumes anything, behind a connection of
/// capacity 4 (and not declared with `needs_at_least`, so the graph cannot reject it): the run
/// must fail with a stall naming the connection, not hang.
struct NeedsTen {
    input: Input<u64>,
}

impl Agent for NeedsTen {
    fn step(&mut self, inputs: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        if inputs.slice(&self.input).len() >= 10 {
            inputs.consume(&self.input, 10);
        }
        Ok(())
    }
}

fn stalling_graph() -> Graph {
    stalling_graph_and_source(0..100).0
}

/// [`stalling_graph`] of `numbers`, and its source's stream.
fn stalling_graph_and_source(
    numbers: impl Iterator<Item = u64> + Send + 'static,
) -> (Graph, Stream<u64>) {
    let mut g = Graph::new("stall");
    let s = g.source_iter("numbers", numbers);
    let input = g.add_agent("needs_ten", |p| {
        let input = p.input::<u64>("in");
        (NeedsTen { input }, input)
    });
    g.connect_with(&s, &input, Connection::new().capacity(4));
    (g, s)
}

#[test]
fn a_stall_is_reported_not_hung() {
    // The reader needs ten at once where four may come: the message says what to do (found
    // by a user's audit: it named the connection, neither the cause nor the fix).
    let hint = "give this connection a larger capacity (Connection::capacity";
    let err = join_within(stalling_graph()).unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    assert!(
        err.to_string().contains("numbers.out -> needs_ten.in") && err.to_string().contains(hint),
        "{err}"
    );
    let err = Harness::new(stalling_graph())
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    assert!(
        err.to_string().contains("numbers.out -> needs_ten.in") && err.to_string().contains(hint),
        "{err}"
    );
}

#[test]
fn graph_mistakes_are_all_reported_with_names() {
    let mut g = Graph::new("broken");
    let s = g.source_iter("numbers", 0..3u64);
    let _ = g.map("twice", &s, |v: &u64| *v);
    let _ = g.map("twice", &s, |v: &u64| *v);
    let (unfed, _) = g.add_agent("lonely", |p| {
        let i = p.input::<u64>("in");
        let o = p.output::<u64>("out");
        (Merge2 { a: i, b: i, out: o }, (i, o))
    });
    let _ = unfed;
    let (twice_fed, _) = g.add_agent("greedy", |p| {
        let i = p.input::<u64>("in");
        let o = p.output::<u64>("out");
        (Merge2 { a: i, b: i, out: o }, (i, o))
    });
    g.connect(&s, &twice_fed);
    g.connect(&s, &twice_fed);
    let (zero, _) = g.add_agent("zero", |p| {
        let i = p.input::<u64>("in");
        let o = p.output::<u64>("out");
        (Merge2 { a: i, b: i, out: o }, (i, o))
    });
    g.connect_with(&s, &zero, Connection::new().capacity(0));
    g.place_on_thread("nobody", "t1");
    let err = Harness::new(g).err().expect("the graph is broken");
    let Error::Graph { app, problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(app, "broken");
    let text = problems.join("\n");
    for expected in [
        "agent name 'twice' is used twice",
        "input 'lonely.in' (of u64) is not connected",
        "input 'greedy.in' is connected 2 times",
        "connection numbers.out -> zero.in: capacity must be at least 1",
        "place_on_thread: no agent named 'nobody'",
    ] {
        assert!(text.contains(expected), "missing '{expected}' in:\n{text}");
    }
    assert_eq!(problems.len(), 5, "{text}");
}

/// Agent `a` with output `b.out` and agent `a.b` with output `out` are both stream `a.b.out`
/// where ports are named by `agent.port` (the live view, the metrics, deployment files): the
/// view showed one of them with the other's counts and `/metrics` repeated a series (which
/// Prometheus refuses whole). A graph problem naming both; inputs alike. Found by an audit.
#[test]
fn two_ports_whose_full_names_read_the_same_are_a_graph_problem() {
    let mut g = Graph::new("dots");
    let xs = g.source_iter("numbers", 0..10u64);
    let (input, evens) = g.add_agent("a", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("b.out");
        (SumAtEnd { input, out, sum: 0 }, (input, out))
    });
    g.connect(&xs, &input);
    let all = g.map("a.b", &xs, |v: &u64| *v);
    let twin = g.add_agent("c", |p| {
        let input = p.input::<u64>("d.in");
        (NeedsTen { input }, input)
    });
    g.connect(&evens, &twin);
    g.for_each("c.d", &all, |_: &u64| {});
    let err = Harness::new(g).err().expect("the graph is refused");
    let Error::Graph { problems, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        problems,
        &[
            "output 'a.b.out' names two outputs: 'b.out' of agent 'a' and 'out' of agent 'a.b' \
             (the live view, the metrics and deployment files name a port agent.port): rename \
             one",
            "input 'c.d.in' names two inputs: 'd.in' of agent 'c' and 'in' of agent 'c.d' (the \
             live view, the metrics and deployment files name a port agent.port): rename one",
        ],
    );
}

#[test]
fn standard_input_has_one_reader_and_the_graph_says_which() {
    let mut g = Graph::new("logs");
    let lines = g.source_stdin("log");
    g.for_each("print", &lines, |_: &String| {});
    g.place_in_process("log", "reader");
    let info = g.info();
    assert_eq!(info.stdin_process(), Some("reader"));
    assert!(info.agents[0].reads_stdin && !info.agents[1].reads_stdin);

    let _again = g.source_stdin("log_again");
    let err = Harness::new(g)
        .err()
        .expect("two agents read standard input");
    let Error::Graph { problems, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        problems,
        &["agents 'log', 'log_again' all read standard input, which only one agent can read: read it with one source_stdin and connect its stream to each reader"]
    );
}

#[test]
fn handles_from_another_graph_are_rejected() {
    let mut a = Graph::new("a");
    let s = a.source_iter("numbers", 0..3u64);
    let mut b = Graph::new("b");
    let t = b.source_iter("numbers", 0..3u64);
    let (input, _) = b.add_agent("sink", |p| {
        let i = p.input::<u64>("in");
        let o = p.output::<u64>("out");
        (Merge2 { a: i, b: i, out: o }, (i, o))
    });
    b.connect(&s, &input);
    b.connect(&t, &input);
    let err = b.run().unwrap_err();
    assert!(err.to_string().contains("from another graph"), "{err}");
    drop(a);
}

#[test]
fn threaded_input_sender_feeds_a_running_app() {
    let mut g = Graph::new("pushed");
    let x = g.input::<u64>("x");
    let y = g.map("double", &x, |v: &u64| v * 2);
    let out = g.collect("out", &y);
    let mut running = g.start().unwrap();
    let sender = running.input(&x).unwrap();
    for i in 0..100u64 {
        sender.send(vec![i; 3]).unwrap();
    }
    sender.close();
    assert!(running.input(&x).is_err(), "a sender is taken once");
    running.join().unwrap();
    let expected: Vec<u64> = (0..100u64).flat_map(|i| [i * 2; 3]).collect();
    assert_eq!(out.values(), expected);
}

#[test]
fn stop_drains_an_endless_source_gracefully() {
    let mut g = Graph::new("endless");
    let mut n = 0u64;
    let s = g.source(
        "counter",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            out.extend(n..n + max as u64);
            n += max as u64;
            Ok(true)
        },
    );
    let out = g.collect("out", &s);
    let running = g.start().unwrap();
    while out.len() < 10_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    running.stop();
    let m = running.join().unwrap();
    // Everything the source emitted reached the sink, in order.
    let got = out.values();
    assert_eq!(got.len() as u64, m.stream("counter.out").unwrap().elements);
    assert!(got.iter().enumerate().all(|(i, v)| *v == i as u64));
}

/// A source that emits 100 readings, then waits inside `fill` for input that never comes (a
/// terminal nobody types on, a quiet pipe). A stop ends its stream anyway: what it emitted is
/// delivered, and the run ends instead of waiting for it.
#[test]
fn stop_ends_a_source_blocked_waiting_for_input() {
    let mut g = Graph::new("blocked");
    let mut sent = false;
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    let s = g.source(
        "terminal",
        move |out: &mut Vec<u64>, _max: usize| -> Result<bool, AgentError> {
            if !sent {
                sent = true;
                out.extend(0..100);
                return Ok(true);
            }
            // Blocked until the test ends (its sender dropped), like a read on a quiet pipe.
            let _ = blocked_tx.send(());
            let _ = release_rx.recv();
            Ok(false)
        },
    );
    let out = g.collect("out", &s);
    let running = g.start().unwrap();
    // Stop only once the source is inside its blocking call: it cannot see the stop itself.
    blocked_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the source never got to its blocking call");
    running.stop();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(running.join());
    });
    let m = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a stop with a source blocked in fill did not end the run within 60 s")
        .unwrap();
    assert_eq!(out.values(), (0..100).collect::<Vec<u64>>());
    assert_eq!(m.stream("terminal.out").unwrap().elements, 100);
    drop(release_tx);
}

/// Two merges fed unevenly by the same sources, with small capacities: the sources block each
/// other through the merges. Found by the merge operators' tests: the threaded run must report
/// the stall (naming a connection), exactly like the harness, without closing anything first.
fn uneven_merges() -> Graph {
    let mut g = Graph::new("uneven");
    g.set_default_capacity(64);
    let a = g.source_iter("a", 0..20_000u64);
    let b = g.source_iter("b", 0..10_000u64);
    let z = g.zip("zip", &a, &b);
    let _ = g.collect("zipped", &z);
    let ta = g.map("ta", &a, |v: &u64| (v / 3, *v));
    let tb = g.map("tb", &b, |v: &u64| (v / 20, *v));
    let tz = g.timed_zip("timed", &[ta, tb]);
    let _ = g.collect("aligned", &tz);
    g
}

#[test]
fn merges_that_block_each_other_are_reported_as_a_stall() {
    let err = join_within(uneven_merges()).unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    assert!(err.to_string().contains(" -> "), "{err}");
    let err = Harness::new(uneven_merges()).unwrap().finish().unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
}

#[test]
fn output_appended_before_an_error_is_delivered() {
    let mut g = Graph::new("partial");
    let x = g.input::<String>("x");
    let n = g.try_map("parse", &x, |l: &String| l.parse::<u64>());
    let out = g.collect("out", &n);
    let mut h = Harness::new(g).unwrap();
    h.push(
        &x,
        ["1".to_string(), "2".into(), "three".into(), "4".into()],
    )
    .unwrap();
    let err = h.run().unwrap_err();
    assert_eq!(err.agent(), Some("parse"));
    let _ = h.run(); // let the sink take what was delivered
    assert_eq!(out.values(), [1, 2]);
}

/// An agent that counts what it takes in and says when it finishes (drained).
struct Counted {
    input: Input<u64>,
    taken: std::sync::Arc<std::sync::atomic::AtomicU64>,
    finished: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Agent for Counted {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        i.consume(&self.input, n);
        self.taken
            .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn finish(&mut self, _: &mut Outputs) -> Result<(), AgentError> {
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// A `Running` dropped without `join` stops its run and waits for its end: the sink drained
/// and finished before the drop returned, and nothing is taken in after. The run went on for
/// ever, its threads and descriptors with it, and nothing was left to stop it (an audit saw
/// 19 threads and 38 descriptors more after five such drops).
#[test]
fn a_dropped_running_handle_stops_and_ends_its_run() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let taken = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let mut g = Graph::new("dropped");
    let t = g.source_fn("tick", Duration::from_millis(1), None, || 1u64);
    let (tk, fin) = (Arc::clone(&taken), Arc::clone(&finished));
    let input = g.add_agent("sink", |p| {
        let input = p.input::<u64>("in");
        let sink = Counted {
            input,
            taken: tk,
            finished: fin,
        };
        (sink, input)
    });
    g.connect(&t, &input);
    let running = g.start().unwrap();
    while taken.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(running);
    assert!(finished.load(Ordering::SeqCst), "the sink did not finish");
    let at_drop = taken.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(taken.load(Ordering::SeqCst), at_drop, "the run went on");
}

/// A source that never ends (a `source_fn` without a count: the harness ignores its period) in
/// the harness: `run` fails naming it once it emitted the bound's worth in one run (10 million
/// by default), where it ran for 10 million rounds of a batch each, about 40 minutes and more
/// memory than a machine has (the bound on rounds was the only one). What the test pushes
/// itself is not counted, and a finite source larger than the bound runs once it is raised (one
/// that ends in the step that passes the bound is not stopped: it has ended).
#[test]
fn an_endless_source_in_the_harness_is_an_error_naming_it() {
    let mut g = Graph::new("endless");
    let t = g.source_fn("tick", Duration::from_millis(100), None, || 1u64);
    g.for_each("drop", &t, |_: &u64| {});
    let mut h = Harness::new(g).unwrap();
    let err = h.run().unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("source 'tick' emitted") && text.contains("set_max_source_elements"),
        "{text}"
    );

    let mut g = Graph::new("finite");
    let x = g.input::<u64>("x");
    // Larger than a batch: still going when it passes the bound.
    let s = g.source_iter("big", 0..200_000u64);
    let both = g.blend("both", &[x, s]);
    let out = g.collect("out", &both);
    let mut h = Harness::new(g).unwrap();
    h.set_max_source_elements(1_000);
    h.push(&x, 0..5_000u64).unwrap();
    let err = h.run().unwrap_err().to_string();
    assert!(err.contains("source 'big' emitted"), "{err}");
    assert!(!err.contains("source 'x'"), "{err}");
    h.set_max_source_elements(1_000_000);
    h.finish().unwrap();
    assert_eq!(out.values().len(), 205_000);
}

/// A reader that takes its input in at a pace of its own: at each of its timers, every
/// `every` of processing time, all it holds (and all of it at the end of the stream), passed
/// on to `out` if it has one. Between two timers its connection is full, its writer blocked,
/// and nothing is in flight.
struct Paced {
    input: Input<u64>,
    out: Option<Stream<u64>>,
    every: Duration,
    /// Takes its input in at every `k`-th timer only (a heartbeat beside a slower flush).
    k: u64,
    ticks: u64,
    next: Option<Duration>,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Agent for Paced {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        let now = i.processing_time();
        let next = *self.next.get_or_insert(now + self.every);
        let tick = now >= next;
        if tick {
            self.ticks += 1;
            self.next = Some(now + self.every);
        }
        if (tick && self.ticks % self.k == 0) || i.is_closed(&self.input) {
            let taken = i.slice(&self.input);
            self.seen
                .fetch_add(taken.len() as u64, std::sync::atomic::Ordering::SeqCst);
            if let Some(out) = &self.out {
                o.extend(out, taken.iter().copied());
            }
            i.consume_all(&self.input);
        }
        if !i.is_closed(&self.input) {
            i.wake_at(self.next.expect("set above"));
        }
        Ok(())
    }
}

/// Adds a [`Paced`] agent `name` reading `stream` over a connection of capacity 16, taking its
/// input in at each timer; returns what it will have seen, and its output.
fn paced(
    g: &mut Graph,
    name: &str,
    stream: &Stream<u64>,
    every: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, Stream<u64>) {
    paced_every_kth(g, name, stream, every, 1, 16)
}

/// [`paced`], taking its input in at every `k`-th timer only, over a connection of
/// `capacity`.
fn paced_every_kth(
    g: &mut Graph,
    name: &str,
    stream: &Stream<u64>,
    every: Duration,
    k: u64,
    capacity: usize,
) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, Stream<u64>) {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&seen);
    let (input, out) = g.add_agent(name, move |p| {
        let input = p.input("in");
        let out = p.output("out");
        let agent = Paced {
            input,
            out: Some(out),
            every,
            k,
            ticks: 0,
            next: None,
            seen: counter,
        };
        (agent, (input, out))
    });
    g.connect_with(stream, &input, Connection::new().capacity(capacity));
    (seen, out)
}

/// [`paced`], named `paced`, its output left unread.
fn paced_reader(
    g: &mut Graph,
    stream: &Stream<u64>,
    every: Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    paced(g, "paced", stream, every).0
}

/// Reads its input as it comes and asks for a step every `every` for as long as the input is
/// open (a periodic report); at each timer's step it emits `burst` elements to `out`.
struct Periodic {
    input: Input<u64>,
    out: Stream<u64>,
    every: Duration,
    burst: u64,
    next: Option<Duration>,
}

impl Agent for Periodic {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.input);
        let now = i.processing_time();
        let next = *self.next.get_or_insert(now + self.every);
        if now >= next {
            o.extend(&self.out, 0..self.burst);
            self.next = Some(now + self.every);
        }
        if !i.is_closed(&self.input) {
            i.wake_at(self.next.expect("set above"));
        }
        Ok(())
    }
}

/// Adds a [`Periodic`] agent reading `stream`; its output goes to a sink over a connection of
/// capacity 2 (a burst waits on it), and is returned for more readers.
fn periodic(g: &mut Graph, stream: &Stream<u64>, every: Duration, burst: u64) -> Stream<u64> {
    let (input, out) = g.add_agent("periodic", move |p| {
        let input = p.input("in");
        let out = p.output("out");
        let agent = Periodic {
            input,
            out,
            every,
            burst,
            next: None,
        };
        (agent, (input, out))
    });
    g.connect(stream, &input);
    let sink = g.add_agent("sink", |p| {
        let input = p.input::<u64>("in");
        (Drain { input }, input)
    });
    g.connect_with(&out, &sink, Connection::new().capacity(2));
    out
}

/// A reader waiting for its own timer to take in a full connection is no stall: the timer's
/// step frees the writer. (Before: `Stalled` at once, "its reader holds all the connection lets
/// through and consumes none of it", and the run failed after 16 of 200 elements.)
#[test]
fn a_reader_waiting_for_its_timer_is_no_stall() {
    let mut g = Graph::new("paced");
    let s = g.source_iter("numbers", 0..200u64);
    let seen = paced_reader(&mut g, &s, Duration::from_millis(40));
    let run = join_within(g);
    assert!(run.is_ok(), "{run:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 200);
}
/// Two paced stages in a row, the second slower: between their timers the first waits on the
/// second, and the first one's timer goes by with nothing to do; the second one's frees it.
#[test]
fn two_paced_stages_in_a_row_are_no_stall() {
    let mut g = Graph::new("two_paced");
    let s = g.source_iter("numbers", 0..200u64);
    let (_, first) = paced(&mut g, "paced1", &s, Duration::from_millis(30));
    let (_, second) = paced(&mut g, "paced2", &first, Duration::from_millis(45));
    let out = g.collect("out", &second);
    let run = join_within(g);
    assert!(run.is_ok(), "{run:?}");
    assert_eq!(out.len(), 200);
}

/// A paced reader with a faster periodic agent after it: the periodic agent's timers going by
/// do not end the wait for the paced reader's own.
#[test]
fn a_paced_reader_beside_a_faster_periodic_timer_is_no_stall() {
    let mut g = Graph::new("paced_and_periodic");
    let s = g.source_iter("numbers", 0..200u64);
    let (seen, out) = paced(&mut g, "paced", &s, Duration::from_millis(120));
    let _ = periodic(&mut g, &out, Duration::from_millis(15), 0);
    let run = join_within(g);
    assert!(run.is_ok(), "{run:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 200);
}

/// A ticker (an agent that emits one element at each of its timers) feeding a zip's other
/// side: between two ticks the zip's fast side is full and its writer blocked.
#[test]
fn a_ticker_feeding_a_zip_is_no_stall() {
    let mut g = Graph::new("ticker_zip");
    // The zip's fast side fills at once.
    g.set_default_capacity(4);
    let fast = g.source_iter("fast", 0..100u64);
    // Keeps the ticker's input open (and it alive) until its hundred ticks are out.
    let keep = g.input::<u64>("keep");
    let ticks = Ticks {
        count: 100,
        every: Duration::from_millis(3),
        rest_at_end: false,
    };
    let (tick_in, ticks) = add_ticker(&mut g, "ticker", ticks);
    g.connect(&keep, &tick_in);
    let zipped = g.zip("zip", &fast, &ticks);
    let out = g.collect("out", &zipped);
    let mut running = g.start().expect("starts");
    let keep_open = running.input(&keep).expect("the input");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(running.join());
    });
    // The program ends `keep` once the hundred pairs are out, or the run ended before.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut ended = None;
    while out.len() < 100 && ended.is_none() && std::time::Instant::now() < deadline {
        ended = rx.recv_timeout(Duration::from_millis(5)).ok();
    }
    drop(keep_open);
    let run = ended.unwrap_or_else(|| {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the run did not end within 60 s")
    });
    assert!(run.is_ok(), "{run:?}");
    assert_eq!(out.len(), 100);
}

/// A reader that ticks often and takes its input in at every fifth tick only: the ticks that
/// take nothing in do not make it a stall (its timer may still free its writer).
#[test]
fn a_reader_taking_its_input_in_at_every_fifth_timer_is_no_stall() {
    let mut g = Graph::new("every_fifth");
    let s = g.source_iter("numbers", 0..200u64);
    let (seen, _) = paced_every_kth(&mut g, "kth", &s, Duration::from_millis(4), 5, 16);
    let run = join_within(g);
    assert!(run.is_ok(), "{run:?}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 200);
}

/// A ticker feeding a zip's other side for 20 ticks and then no more: the zip's fast side
/// waits while the ticks come, and is a stall once the ticker stops asking for timers.
#[test]
fn a_ticker_that_stops_leaves_a_stall_that_is_reported() {
    let mut g = Graph::new("ticks_then_stall");
    g.set_default_capacity(4);
    let fast = g.source_iter("fast", 0u64..);
    let ticks = Ticks {
        count: 20,
        every: Duration::from_millis(20),
        rest_at_end: false,
    };
    let (input, ticks) = add_ticker(&mut g, "ticker", ticks);
    g.connect(&fast, &input);
    let zipped = g.zip("zip", &fast, &ticks);
    let out = g.collect("out", &zipped);
    let err = join_within(g).unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    assert!(err.to_string().contains("fast.out -> zip.in0"), "{err}");
    assert_eq!(out.len(), 20);
}

/// A timer on another branch does not hide a stall, nor delay its report: a periodic agent
/// beside the stalled reader (emitting more at each tick than its own connection holds) and a
/// paced reader after it cannot free the stalled connection, whose reader they do not lead to.
#[test]
fn a_stall_beside_other_timers_is_reported() {
    // Endless: the source never ends the stream its other reader gets.
    let (mut g, numbers) = stalling_graph_and_source(0..);
    // A second reader of the stalled source (its input stays open while the stall lasts)
    // that takes in whatever comes and asks for a step every 300 ms, for ever (a periodic
    // report would), emitting 8 elements at each into a connection of capacity 2: the credit
    // it gets back while it waits on them relieves nothing blocked by the stall.
    let reports = periodic(&mut g, &numbers, Duration::from_millis(100), 8);
    paced_every_kth(&mut g, "paced", &reports, Duration::from_millis(20), 1, 2);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(g.run());
    });
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the run did not end within 60 s: a stall hidden by timers")
        .unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    assert!(
        err.to_string().contains("numbers.out -> needs_ten.in"),
        "{err}"
    );
}

/// In the harness, time moves only when the test says: a push that finds the paced reader's
/// connection full is a stall whose message points at the timer and at `advance_clock`, which
/// lets the reader take the rest in.
#[test]
fn a_harness_stall_names_the_timers_to_come() {
    let mut g = Graph::new("paced_input");
    let x = g.input::<u64>("x");
    let seen = paced_reader(&mut g, &x, Duration::from_secs(1));
    let mut h = Harness::new(g).unwrap();
    // The input's own queue takes its capacity's worth first.
    let (accepted, err) = (0..1_000_000u64)
        .find_map(|k| h.push(&x, [k]).err().map(|e| (k, e)))
        .expect("the pushes never stalled");
    assert!(matches!(err, Error::Stalled { .. }), "{err:#?}");
    let text = err.to_string();
    assert!(
        text.contains("'paced' at 1s") && text.contains("Harness::advance_clock"),
        "{text}"
    );
    // Each second of the harness's clock the reader takes in the 16 it holds.
    for _ in 0..accepted / 16 + 2 {
        h.advance_clock(Duration::from_secs(1)).unwrap();
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), accepted);
    h.close(&x).unwrap();
    h.finish().unwrap();
}

/// Once an agent has failed under the Harness, every later call returns that first error: the
/// failed step is not run again on the input it failed on. (The next `run` returned `Ok`, the
/// step ran again and emitted its first element twice, and the same bad element was named as
/// element 1, then 2, then 3.)
#[test]
fn the_harness_stops_at_an_agents_first_failure() {
    let mut g = Graph::new("sticky");
    let x = g.input::<String>("x");
    let parsed = g.try_map("parse", &x, |v: &String| v.parse::<u64>());
    let out = g.collect("out", &parsed);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, ["1".to_string(), "x".into(), "3".into()])
        .unwrap();
    let first = h.run().unwrap_err().to_string();
    assert!(first.contains("element 1 of the stream"), "{first}");
    assert_eq!(h.run().unwrap_err().to_string(), first);
    assert_eq!(
        h.push(&x, ["4".to_string()]).unwrap_err().to_string(),
        first
    );
    assert_eq!(h.close(&x).unwrap_err().to_string(), first);
    assert_eq!(h.finish().unwrap_err().to_string(), first);
    assert_eq!(out.values(), [1]);
}

/// A source that returns `Ok(true)` with nothing appended (one that polls for outside input,
/// as `Source::fill` allows) is an error under the Harness, which runs sources until they
/// end, naming the source: `run` never returned, whatever `set_max_rounds` said.
#[test]
fn a_polling_source_under_the_harness_is_an_error_not_a_hang() {
    let mut g = Graph::new("polling");
    let mut calls = 0u32;
    let s = g.source("sensor", move |out: &mut Vec<u64>, _max: usize| {
        calls += 1;
        if calls <= 3 {
            out.push(u64::from(calls)); // a few readings, then nothing ever again
        }
        Ok::<bool, AgentError>(true)
    });
    let out = g.collect("out", &s);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Harness::new(g).unwrap().run());
    });
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("run did not return within 60 s")
        .unwrap_err();
    assert_eq!(err.agent(), Some("sensor"), "{err}");
    assert!(
        err.to_string()
            .contains("returned Ok(true) with no element 100 times in a row"),
        "{err}"
    );
    assert_eq!(out.values(), [1, 2, 3]);
}

/// A source's panic is `Error::Panic` naming the source in a threaded run, as under the
/// Harness (it was `Error::Agent` with "panicked: …" as its cause, on the source's thread).
#[test]
fn a_panicking_source_is_a_panic_naming_it_threaded_as_in_the_harness() {
    let graph = || {
        let mut g = Graph::new("exploding");
        let mut calls = 0u64;
        let s = g.source("boom", move |out: &mut Vec<u64>, _max: usize| {
            calls += 1;
            assert!(calls < 3, "sensor exploded");
            out.push(calls);
            Ok::<bool, AgentError>(true)
        });
        let out = g.collect("out", &s);
        (g, out)
    };
    let (g, _) = graph();
    let threaded = join_within(g).unwrap_err();
    let (g, harness_out) = graph();
    let harness = Harness::new(g).unwrap().finish().unwrap_err();
    for err in [threaded, harness] {
        match &err {
            Error::Panic { agent, message } => {
                assert_eq!(agent, "boom");
                assert_eq!(message, "sensor exploded");
            }
            other => panic!("not a panic: {other:#?}"),
        }
    }
    // What it made before is delivered.
    assert_eq!(harness_out.values(), [1, 2]);
}

/// Mistakes that panicked inside the library are graph errors: a NUL byte in the
/// application's, an agent's or a thread's name (a thread's name cannot hold one), and
/// `Ports::needs_at_least` given another agent's input (an index out of bounds, or the need
/// put on this agent's own input of that number).
#[test]
fn names_with_a_nul_byte_and_a_need_on_another_agents_input_are_graph_errors() {
    let mut g = Graph::new("bad\0app");
    let s = g.source_iter("num\0bers", 0..3u64);
    let m = g.map("double", &s, |v: &u64| v * 2);
    g.collect("out", &m);
    g.place_on_thread("double", "t\0");
    let reader = g.add_agent("reader", |p| {
        let input = p.input::<u64>("in");
        (Drain { input }, input)
    });
    g.connect(&m, &reader);
    g.add_agent("needy", |p| {
        let input = p.input::<u64>("in");
        p.needs_at_least(&reader, 5);
        (Drain { input }, input)
    });
    let text = match g.run().unwrap_err() {
        Error::Graph { problems, .. } => problems.join("\n"),
        other => panic!("{other:#?}"),
    };
    for expected in [
        "the application's name 'bad\\0app' holds a NUL byte",
        "agent name 'num\\0bers' holds a NUL byte",
        "place_on_thread: thread name 't\\0' holds a NUL byte",
        "agent 'needy': needs_at_least names an input of another agent",
    ] {
        assert!(text.contains(expected), "missing '{expected}' in:\n{text}");
    }
}

/// Consumes everything it is given.
struct Drain {
    input: Input<u64>,
}

impl Agent for Drain {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.input);
        Ok(())
    }
}
