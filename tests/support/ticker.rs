//! A test agent with a pace of its own: it emits `0, 1, …`, one at each of its timers
//! ([`Inputs::wake_at`]), and takes in whatever its input brings (which keeps it running while
//! that input is open). The tests of stalls and timers feed a zip's slow side with it.

use std::time::Duration;

use iotstream::{
    Agent, AgentError, Connection, Graph, Input, Inputs, Outputs, SourceOptions, Stream,
};

/// What a ticker emits, and when.
pub struct Ticks {
    /// How many ticks it emits.
    pub count: u64,
    /// The time between two ticks (the first goes at its first step).
    pub every: Duration,
    /// Whether the ticks not yet out when its input ends go out at once, as it finishes.
    pub rest_at_end: bool,
}

struct Ticker {
    input: Input<u64>,
    out: Stream<u64>,
    ticks: Ticks,
    next: Option<Duration>,
    sent: u64,
}

impl Agent for Ticker {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.input);
        let now = i.processing_time();
        let next = *self.next.get_or_insert(now);
        if now >= next && self.sent < self.ticks.count {
            o.push(&self.out, self.sent);
            self.sent += 1;
            self.next = Some(now + self.ticks.every);
        }
        if self.sent < self.ticks.count {
            i.wake_at(self.next.expect("set above"));
        }
        Ok(())
    }

    fn finish(&mut self, o: &mut Outputs) -> Result<(), AgentError> {
        if self.ticks.rest_at_end {
            o.extend(&self.out, self.sent..self.ticks.count);
        }
        Ok(())
    }
}

/// Adds a ticker named `name`: its input (to connect) and its ticks.
pub fn add_ticker(g: &mut Graph, name: &str, ticks: Ticks) -> (Input<u64>, Stream<u64>) {
    g.add_agent(name, |p| {
        let input = p.input("in");
        let out = p.output("out");
        let agent = Ticker {
            input,
            out,
            ticks,
            next: None,
            sent: 0,
        };
        (agent, (input, out))
    })
}

/// The elements of [`fast_and_ticks`]'s `fast` and ticks of its ticker.
#[allow(dead_code)] // not every suite that includes this file uses it
pub const FAST_TICKS: u64 = 12;

/// A zip's two sides in a new graph `app` (capacity 4), for the scenarios of a ticker freeing
/// a blocked writer: `fast`, 12 elements made one at a time (the next only once its readers
/// took one in), also read by `ticker` (over a connection that takes all of it, which keeps it
/// running while `fast` waits), whose 12 ticks come every 150 ms, the rest at once when
/// `fast` ends.
#[allow(dead_code)] // not every suite that includes this file uses it
pub fn fast_and_ticks(app: &str) -> (Graph, Stream<u64>, Stream<u64>) {
    let mut g = Graph::new(app);
    g.set_default_capacity(4);
    let one_by_one = SourceOptions {
        max_batch: 1,
        ..SourceOptions::default()
    };
    let fast = g.source_iter_with("fast", 0..FAST_TICKS, one_by_one);
    let ticks = Ticks {
        count: FAST_TICKS,
        every: Duration::from_millis(150),
        rest_at_end: true,
    };
    let (tick_in, ticks) = add_ticker(&mut g, "ticker", ticks);
    g.connect_with(&fast, &tick_in, Connection::new().capacity(64));
    (g, fast, ticks)
}
