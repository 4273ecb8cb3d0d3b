//! Timed windows: a function on the elements of each time interval of a `(timestamp, value)`
//! stream.
//!
//! | call | IoTPy | output |
//! |---|---|---|
//! | [`Graph::timed_window`] | `timed_window` | `(window end, f(elements in the window))` |
//!
//! # Which windows
//!
//! The input's elements are `(t, v)` pairs whose timestamps `t` never decrease (any unit: seconds,
//! milliseconds, sample counters). A [`TimedWindow`] with duration `D`, step `T` and start `t0`
//! defines window `k = 0, 1, 2, …` as the half-open interval `[t0 + k·T, t0 + k·T + D)`:
//!
//! - `T = D`: tumbling windows, each element in exactly one (`TimedWindow::tumbling`);
//! - `T < D`: sliding windows, an element in several;
//! - `T > D`: sampling windows, elements between windows belong to none.
//!
//! A window is emitted as `(end, f(elements))` once an element with `t ≥ end` arrives: only then
//! is it certain that no more elements fall in it. Windows with no elements emit nothing, and
//! elements before `t0` are skipped. As with count windows, the output never depends on how the
//! input was batched.
//!
//! # Errors
//!
//! A timestamp smaller than the one before it stops the application with an error naming the
//! agent and both timestamps: this operator keeps IoTPy's rule (ascending timestamps) and does
//! not reorder. For data that arrives out of order, late, or with quiet periods, use the
//! event-time operators instead (see the [`event`](crate::ops::event) guide): watermarks, then
//! `Graph::event_window`, which buffers within the bound, counts or routes late elements, and
//! emits the last windows at the end of the stream. A
//! duration or step of 0 is reported when the application is built.
//!
//! # Memory
//!
//! An element is consumed as soon as no future window can contain it, so the operator holds at
//! most the elements of the last `D` time units. The connection feeding it must be able to hold
//! that many (its capacity defaults to [`DEFAULT_CAPACITY`](crate::DEFAULT_CAPACITY) elements
//! and [`DEFAULT_CAPACITY_BYTES`](crate::DEFAULT_CAPACITY_BYTES), whichever holds fewer); if a
//! single window can hold more elements than the capacity, the writer waits forever and the run
//! ends with [`Error::Stalled`](crate::Error::Stalled) instead of a result.

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// The windows of [`Graph::timed_window`]: window `k` covers `[start + k·step, start + k·step +
/// duration)`.
///
/// ```
/// use iotstream::ops::timed::TimedWindow;
/// // One-minute windows every 10 s, over timestamps in seconds, from t = 3600 on.
/// let w = TimedWindow::new(60, 10).starting_at(3600);
/// assert_eq!(w, TimedWindow { duration: 60, step: 10, start: 3600 });
/// assert_eq!(TimedWindow::tumbling(60), TimedWindow { duration: 60, step: 60, start: 0 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimedWindow {
    /// Length of each window, in timestamp units (at least 1).
    pub duration: u64,
    /// Distance between the starts of consecutive windows (at least 1).
    pub step: u64,
    /// Start of window 0; earlier elements are skipped.
    pub start: u64,
}

impl TimedWindow {
    /// Windows of `duration` every `step`, the first starting at timestamp 0.
    pub fn new(duration: u64, step: u64) -> Self {
        TimedWindow {
            duration,
            step,
            start: 0,
        }
    }

    /// Back-to-back windows of `duration`, the first starting at timestamp 0.
    pub fn tumbling(duration: u64) -> Self {
        Self::new(duration, duration)
    }

    /// The same windows, the first starting at `t0`.
    pub fn starting_at(self, t0: u64) -> Self {
        TimedWindow { start: t0, ..self }
    }
}

struct TimedWindowAgent<V, U, F> {
    input: Input<(u64, V)>,
    out: Stream<(u64, U)>,
    duration: u128,
    step: u128,
    start: u128,
    /// Index of the next window to emit. Wide so that no arithmetic on it overflows.
    next: u128,
    /// Elements at the front of the slice already checked for order (kept from earlier steps).
    checked: usize,
    /// The largest (latest) timestamp seen.
    last: Option<u64>,
    f: F,
}

impl<V, U, F> Agent for TimedWindowAgent<V, U, F>
where
    V: Element,
    U: Element,
    F: FnMut(&[(u64, V)]) -> U + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let data = inputs.slice(&self.input);
        let len = data.len();
        if len == self.checked {
            return Ok(());
        }
        let mut last = self.last;
        for &(t, _) in &data[self.checked..] {
            if let Some(prev) = last {
                if t < prev {
                    return Err(format!(
                        "timestamps must not decrease: {t} arrived after {prev} (for \
                             out-of-order input, put Graph::watermarks on the stream and use \
                             Graph::event_window)"
                    )
                    .into());
                }
            }
            last = Some(t);
        }
        self.last = last;
        let t_max = u128::from(last.expect("the slice is not empty"));
        let ts = |e: &(u64, V)| u128::from(e.0);

        let out = outputs.vec(&self.out);
        let mut k = self.next;
        // Elements before `lo` are earlier than window k: no window from k on contains them.
        let mut lo = 0;
        loop {
            let start = self.start + k * self.step;
            lo += data[lo..].partition_point(|e| ts(e) < start);
            let Some(first) = data.get(lo) else { break };
            // Windows that end at or before the first remaining element are empty: skip them
            // in one jump, however long the gap in time.
            let t = ts(first);
            if t >= self.start + self.duration {
                k = k.max((t - self.start - self.duration) / self.step + 1);
            }
            let start = self.start + k * self.step;
            let end = start + self.duration;
            if end > t_max {
                break;
            }
            let a = lo + data[lo..].partition_point(|e| ts(e) < start);
            let b = a + data[a..].partition_point(|e| ts(e) < end);
            if a < b {
                // end <= t_max, which is a u64.
                out.push((end as u64, (self.f)(&data[a..b])));
            }
            k += 1;
        }
        let start = self.start + k * self.step;
        let eaten = lo + data[lo..].partition_point(|e| ts(e) < start);
        inputs.consume(&self.input, eaten);
        self.next = k;
        self.checked = len - eaten;
        Ok(())
    }
}

impl Graph {
    /// `(end, f(elements in the window))` for every non-empty window of `window` over a stream
    /// of `(timestamp, value)` pairs (IoTPy's `timed_window`). See the [module docs](self) for
    /// which windows are emitted, and when.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::timed::TimedWindow;
    /// // Average temperature per minute; timestamps in seconds.
    /// let mut g = Graph::new("thermometer");
    /// let readings = g.source_iter("readings", [(5, 20.0), (35, 21.0), (70, 22.0), (130, 25.0)]);
    /// let per_minute = g.timed_window("minute_average", &readings, TimedWindow::tumbling(60), |w: &[(u64, f64)]| {
    ///     w.iter().map(|(_, v)| v).sum::<f64>() / w.len() as f64
    /// });
    /// let out = g.collect("out", &per_minute);
    /// g.run().unwrap();
    /// // [0, 60) and [60, 120) are complete once the reading at 130 s arrives; [120, 180) is not.
    /// assert_eq!(out.values(), [(60, 20.5), (120, 22.0)]);
    /// ```
    pub fn timed_window<V, U, F>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        window: TimedWindow,
        f: F,
    ) -> Stream<(u64, U)>
    where
        V: Element,
        U: Element,
        F: FnMut(&[(u64, V)]) -> U + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<(u64, V)>("in");
            let out = p.output::<(u64, U)>("out");
            let agent = TimedWindowAgent {
                input,
                out,
                // Zeros are reported below; never divide by zero if one slips through.
                duration: u128::from(window.duration.max(1)),
                step: u128::from(window.step.max(1)),
                start: u128::from(window.start),
                next: 0,
                checked: 0,
                last: None,
                f,
            };
            (agent, (input, out))
        });
        self.connect(stream, &input);
        if window.duration == 0 {
            self.problem(format!(
                "agent '{name}': timed window duration must be at least 1 (got 0)"
            ));
        }
        if window.step == 0 {
            self.problem(format!(
                "agent '{name}': timed window step must be at least 1 (got 0)"
            ));
        }
        out
    }
}
