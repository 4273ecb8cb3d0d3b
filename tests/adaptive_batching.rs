//! Adaptive batching (issue 13): what queues up while a stage is busy travels and is processed
//! as one batch, so the per-batch cost is paid once per burst, not once per element.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotstream::{Agent, AgentError, Connection, Graph, Input, Inputs, Outputs, SourceOptions};

/// Polls `done` every few milliseconds for at most a minute (a hang guard, not a timing
/// assertion).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() >= deadline {
            panic!("gave up waiting for {what} (a hang guard, not a timing check)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Envelopes that reach a busy agent's mailbox are taken in together: its next step sees all
/// of them at once instead of one envelope per step.
#[test]
fn a_busy_agent_takes_everything_that_arrived_meanwhile_in_one_step() {
    const N: u64 = 100;
    let mut g = Graph::new("adaptive_mailbox");
    let input = g.input::<u64>("readings");
    let steps = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let seen = Arc::clone(&steps);
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    g.sink_list("slow", &input, move |xs: &[u64]| {
        let first = {
            let mut s = seen.lock().unwrap();
            s.push(xs.to_vec());
            s.len() == 1
        };
        if first {
            // Busy in the first step until the test has pushed everything else.
            entered_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
        Ok(())
    });
    // It blocks in its step: a thread of its own, not a worker other agents need.
    g.place_on_thread("slow", "slow");
    let mut running = g.start().unwrap();
    let tx = running.input(&input).unwrap();
    tx.push(0).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    for v in 1..N {
        tx.push(v).unwrap();
    }
    // Everything has left the input's agent (and so waits in the slow agent's mailbox).
    wait_until("the input to send everything", || {
        running
            .metrics()
            .stream("readings.out")
            .is_some_and(|s| s.elements == N)
    });
    release_tx.send(()).unwrap();
    drop(tx);
    running.join().unwrap();
    let steps = steps.lock().unwrap().clone();
    let all: Vec<u64> = steps.iter().flatten().copied().collect();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "every element, in order");
    assert_eq!(
        steps.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, N as usize - 1],
        "one step for the first element, one for everything that arrived while it ran"
    );
}

/// A [`Gate`] reading `from` through a connection of capacity 1, on a thread of its own (it
/// blocks in its step); returns the steps it will record.
fn gate_behind(
    g: &mut Graph,
    from: &iotstream::Stream<u64>,
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
) -> Arc<Mutex<Vec<Vec<u64>>>> {
    let steps = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
    let seen = Arc::clone(&steps);
    let gate_input = g.add_agent("gate", move |p| {
        let input = p.input::<u64>("in");
        let gate = Gate {
            input,
            steps: seen,
            entered,
            release,
        };
        (gate, input)
    });
    g.connect_with(from, &gate_input, Connection::new().capacity(1));
    g.place_on_thread("gate", "gate");
    steps
}

/// Records each step's elements; the first step waits for the test's go.
struct Gate {
    input: Input<u64>,
    steps: Arc<Mutex<Vec<Vec<u64>>>>,
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Agent for Gate {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        let xs = i.slice(&self.input).to_vec();
        if xs.is_empty() {
            return Ok(());
        }
        i.consume_all(&self.input);
        let first = {
            let mut s = self.steps.lock().unwrap();
            s.push(xs);
            s.len() == 1
        };
        if first {
            self.entered.send(()).unwrap();
            self.release.recv().unwrap();
        }
        Ok(())
    }
}

/// An input's agent takes every chunk waiting in its channel as one batch (up to its
/// `max_batch`), not one chunk per step: pushes made while it could not send (its reader busy,
/// a connection of capacity 1 full) leave it as one batch.
#[test]
fn an_input_sends_everything_pushed_while_it_waited_as_one_batch() {
    const N: u64 = 50;
    let mut g = Graph::new("adaptive_input");
    let input = g.input::<u64>("readings");
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let steps = gate_behind(&mut g, &input, entered_tx, release_rx);
    let mut running = g.start().unwrap();
    let tx = running.input(&input).unwrap();
    tx.push(0).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    for v in 1..N {
        tx.push(v).unwrap();
    }
    release_tx.send(()).unwrap();
    drop(tx);
    let metrics = running.join().unwrap();
    let all: Vec<u64> = steps.lock().unwrap().iter().flatten().copied().collect();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "every element, in order");
    let batches = metrics.stream("readings.out").unwrap().batches;
    // [0] alone; then at most one batch taken while the gate is busy (after it the input waits:
    // the connection's one element of credit is spent); then everything pushed meanwhile,
    // together. Taking one push per step would make it N.
    assert!(
        (2..=3).contains(&batches),
        "{batches} batches for {N} pushes"
    );
}

/// A source of small batches (`max_batch: 1`, a sensor read at a time) runs ahead of its busy
/// reader, up to four default batches, rather than waiting for its agent after four of its
/// own: then each element cost a wake-up of the agent and of the source's thread (65 thousand
/// elements/s in `iotstream bench`'s `pool` cell with batches of one). Its batches still hold
/// one element each: `max_batch` is kept.
#[test]
fn a_source_of_one_element_batches_runs_ahead_of_its_busy_reader() {
    const N: u64 = 50;
    let mut g = Graph::new("adaptive_source");
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (made_tx, made_rx) = mpsc::channel::<()>();
    let entered_rx = Mutex::new(entered_rx);
    let mut next = 0u64;
    let source = g.source_with(
        "one_at_a_time",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            assert_eq!(max, 1, "each call is asked for one element");
            if next == 1 {
                // The gate is busy with [0] from here on.
                entered_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap();
            }
            out.push(next);
            next += 1;
            if next == N {
                made_tx.send(()).unwrap();
            }
            Ok(next < N)
        },
        SourceOptions {
            max_batch: 1,
            interval: None,
        },
    );
    let steps = gate_behind(&mut g, &source, entered_tx, release_rx);
    let running = g.start().unwrap();
    // Every element is made while the gate holds the first (a hang guard: before, the
    // source's thread waited once four elements waited).
    made_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the source's thread made every element while its reader was busy");
    release_tx.send(()).unwrap();
    let metrics = running.join().unwrap();
    let all: Vec<u64> = steps.lock().unwrap().iter().flatten().copied().collect();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "every element, in order");
    let batches = metrics.stream("one_at_a_time.out").unwrap().batches;
    assert_eq!(batches, N, "batches of one, as max_batch says");
}

/// A quiet stream adds no waiting: each element pushed alone is delivered alone, before the
/// next one is pushed.
#[test]
fn a_quiet_input_delivers_each_element_at_once() {
    let mut g = Graph::new("adaptive_quiet");
    let input = g.input::<u32>("readings");
    let (got_tx, got_rx) = mpsc::channel::<Vec<u32>>();
    let got_tx = Mutex::new(got_tx);
    g.sink_list("record", &input, move |xs: &[u32]| {
        got_tx.lock().unwrap().send(xs.to_vec()).unwrap();
        Ok(())
    });
    let mut running = g.start().unwrap();
    let tx = running.input(&input).unwrap();
    for v in 0..20 {
        tx.push(v).unwrap();
        // The element arrives on its own, without another push to carry it along.
        let batch = got_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(batch, [v]);
    }
    drop(tx);
    running.join().unwrap();
}

/// An agent that feeds an input of the application from inside its step gets an error when
/// that input is full, instead of waiting for ever on the worker thread that would have to
/// make room (here the only worker, shared with the input's own agent).
#[test]
fn a_full_input_fed_from_inside_a_step_is_an_error_not_a_hang() {
    use iotstream::InputSender;
    let mut g = Graph::new("feed_from_a_step");
    g.worker_threads(1);
    let trigger = g.input::<u32>("trigger");
    let looped = g.input::<u64>("looped");
    let slot: Arc<Mutex<Option<InputSender<u64>>>> = Arc::default();
    let outcome: Arc<Mutex<Option<Result<u64, String>>>> = Arc::default();
    let (sender, result) = (Arc::clone(&slot), Arc::clone(&outcome));
    g.sink_list("feeder", &trigger, move |_: &[u32]| {
        let Some(tx) = sender.lock().unwrap().take() else {
            return Ok(());
        };
        let mut pushed = 0u64;
        let r = loop {
            if pushed == 1_000_000 {
                break Ok(pushed);
            }
            match tx.push(pushed) {
                Ok(()) => pushed += 1,
                Err(e) => break Err(e.to_string()),
            }
        };
        *result.lock().unwrap() = Some(r);
        Ok(())
    });
    let out = g.collect("out", &looped);
    let mut running = g.start().unwrap();
    *slot.lock().unwrap() = Some(running.input(&looped).unwrap());
    let tx = running.input(&trigger).unwrap();
    tx.push(1).unwrap();
    drop(tx);
    running.join().unwrap();
    let outcome = outcome.lock().unwrap().clone().expect("the feeder stepped");
    let err = outcome.expect_err("a million pushes cannot all fit while nothing drains them");
    assert!(err.contains("inside an agent's step"), "{err}");
    assert!(!out.values().is_empty(), "what went in before is delivered");
}
