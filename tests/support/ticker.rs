//! A test agent with a pace of its own: it emits `0, 1, …`, one at each of its timers
//! ([`Inputs::wake_at`]), and takes in whatever its input brings (which keeps it running while
//! that input is open). The tests of stalls and timers feed a zip's slow side with it.

use std::time::Duration;

use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Stream};

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
