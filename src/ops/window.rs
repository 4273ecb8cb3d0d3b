//! Count windows: a function on every `size` consecutive elements, moving `step` at a time.
//!
//! | call | IoTPy | output |
//! |---|---|---|
//! | [`Graph::map_window`] | `map_window` | `f(window)` for each window |
//! | [`Graph::map_window_with_state`] | `map_window(…, state=)` | `f(window, s) -> (out, s')` |
//! | [`Graph::merge_window`] | `merge_window` | `f([window of each input])` |
//! | [`Graph::split_window`] | `split_window` | `f(window)` gives one value per output |
//! | [`Graph::split_window_opt`] | `split_window` returning `_no_value` | as above; `None` skips that output |
//! | [`Graph::multi_window`] | `multi_window` | `f([window of each input])` gives one value per output |
//! | [`Graph::multi_window_opt`] | `multi_window` returning `_no_value` | as above; `None` skips that output |
//! | [`Graph::sink_window`] | `sink_window` | `f(window)` for its effect |
//!
//! # Which windows
//!
//! Window `k` (counting from 0) holds input elements `k·step .. k·step + size`. It is handed to
//! `f` as soon as its last element has arrived, so every window is full: with `size = 3,
//! step = 2` over `0, 1, 2, …` the windows are `[0, 1, 2]`, `[2, 3, 4]`, `[4, 5, 6]`, … A
//! step larger than the size skips the elements in between (`size = 2, step = 3`: `[0, 1]`,
//! `[3, 4]`, …); a step equal to the size gives tumbling windows.
//!
//! This is exactly IoTPy's rule (when `L ≥ size` elements are unread it emits
//! `1 + (L − size) / step` windows and moves on by that many steps), and, as in IoTPy, the
//! result never depends on how the input was batched: a stream delivered one element at a time
//! gives the same windows as the same stream delivered at once.
//!
//! # Cost
//!
//! `f` sees each window as a slice of the input buffer: nothing is copied per window, and an
//! element stays buffered only until the last window that contains it has been emitted. The
//! connection feeding a window must be able to hold a full window: its capacity must be at
//! least `size`, or building the application fails (see
//! [`Ports::needs_at_least`](crate::Ports::needs_at_least)). For a sliding mean, sum, minimum,
//! maximum or variance with step 1, [`Graph::rolling`] updates the result in O(1) per element
//! instead of recomputing each window.
//!
//! # End of stream
//!
//! A window still incomplete when its input ends is not emitted. A size or step of 0, or a
//! multi-output operator with no outputs, is reported when the application is built, naming the
//! agent.

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// Where an agent is in the sequence of windows of one or more inputs.
///
/// Positions are absolute element indices (`u64`) so that a window that begins beyond the
/// elements received so far (step > size) is handled without special cases: the elements before
/// it are consumed as they arrive, whatever the batching.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    size: usize,
    step: usize,
    /// Index of the first element of the next window to emit.
    next: u64,
}

/// What one step can do on one input.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Elements at the front of the slice that lie before the next window: consume them.
    skip: usize,
    /// Complete windows available after the skipped elements.
    windows: usize,
}

impl Cursor {
    fn new(size: usize, step: usize) -> Self {
        // Zeros are reported as graph problems; never divide by zero if one slips through.
        Cursor {
            size: size.max(1),
            step: step.max(1),
            next: 0,
        }
    }

    /// `pos` is the absolute index of `slice[0]`, `len` the slice's length.
    fn plan(&self, pos: u64, len: usize) -> Plan {
        let ahead = self.next.saturating_sub(pos);
        if ahead >= len as u64 {
            return Plan {
                skip: len,
                windows: 0,
            };
        }
        let skip = ahead as usize;
        let avail = len - skip;
        let windows = if avail >= self.size {
            1 + (avail - self.size) / self.step
        } else {
            0
        };
        Plan { skip, windows }
    }

    /// Moves past `windows` windows; returns how many of the `len` elements starting at `pos`
    /// can now be consumed (never more than `len`: elements not yet received are skipped later).
    fn advance(&mut self, windows: usize, pos: u64, len: usize) -> usize {
        self.next += (windows as u64) * (self.step as u64);
        self.next.saturating_sub(pos).min(len as u64) as usize
    }
}

/// What a one-input window agent does with the windows ready in one step: `data` starts at the
/// first ready window, `n` windows of `size` elements start every `step` elements.
type OneFn<T> = dyn FnMut(&[T], usize, &mut Outputs<'_>) -> Result<(), AgentError> + Send;

/// One input, count windows: the engine of `map_window`, `split_window`, `sink_window`.
struct CountWindow<T: Element> {
    input: Input<T>,
    cursor: Cursor,
    /// Absolute index of the first unconsumed element.
    pos: u64,
    kernel: Box<OneFn<T>>,
}

impl<T: Element> Agent for CountWindow<T> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let data = inputs.slice(&self.input);
        let len = data.len();
        if len == 0 {
            return Ok(());
        }
        let plan = self.cursor.plan(self.pos, len);
        if plan.windows > 0 {
            (self.kernel)(&data[plan.skip..], plan.windows, outputs)?;
        }
        let eaten = self.cursor.advance(plan.windows, self.pos, len);
        inputs.consume(&self.input, eaten);
        self.pos += eaten as u64;
        Ok(())
    }
}

/// What a many-input window agent does with the windows ready in one step: `data[i]` starts at
/// the first ready window of input `i`.
type ManyFn<T> = dyn FnMut(&[&[T]], usize, &mut Outputs<'_>) -> Result<(), AgentError> + Send;

/// Several inputs, the same count window on each, advanced together: the engine of
/// `merge_window` and `multi_window`.
struct MergeCountWindow<T: Element> {
    inputs: Vec<Input<T>>,
    cursor: Cursor,
    pos: Vec<u64>,
    kernel: Box<ManyFn<T>>,
}

impl<T: Element> Agent for MergeCountWindow<T> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let k = self.inputs.len();
        if k == 0 {
            return Ok(()); // reported as a graph problem; nothing to do
        }
        // A few allocations per step, none per window.
        let mut data: Vec<&[T]> = Vec::with_capacity(k);
        let mut plans = Vec::with_capacity(k);
        let mut n = usize::MAX;
        for (input, &pos) in self.inputs.iter().zip(&self.pos) {
            let slice = inputs.slice(input);
            let plan = self.cursor.plan(pos, slice.len());
            n = n.min(plan.windows);
            data.push(&slice[plan.skip..]);
            plans.push((plan, slice.len()));
        }
        if n > 0 {
            (self.kernel)(&data, n, outputs)?;
        }
        // Once a closed input has no window left, no window can ever be emitted again: drop what
        // the other inputs hold or will send, so their writers are never blocked on us.
        let exhausted = self
            .inputs
            .iter()
            .zip(&plans)
            .any(|(input, (plan, _))| plan.windows == n && inputs.is_closed(input));
        drop(data);
        self.cursor.next += (n as u64) * (self.cursor.step as u64);
        for ((input, pos), &(_, len)) in self.inputs.iter().zip(&mut self.pos).zip(&plans) {
            let eaten = if exhausted {
                len
            } else {
                (self.cursor.next - *pos).min(len as u64) as usize
            };
            inputs.consume(input, eaten);
            *pos += eaten as u64;
            // Dropped elements may reach past the next window: keep `next >= pos`.
            self.cursor.next = self.cursor.next.max(*pos);
        }
        Ok(())
    }
}

/// Moves `staging[j]` into output `j`, keeping the staging buffers' allocations.
fn flush_staging<U: Element>(
    staging: &mut [Vec<U>],
    outs: &[Stream<U>],
    outputs: &mut Outputs<'_>,
) {
    for (buf, out) in staging.iter_mut().zip(outs) {
        if !buf.is_empty() {
            outputs.vec(out).append(buf);
        }
    }
}

/// Distributes one result of `f` over the staging buffers: value `j` goes to output `j`.
fn distribute<U>(
    result: impl IntoIterator<Item = Option<U>>,
    staging: &mut [Vec<U>],
) -> Result<(), AgentError> {
    let want = staging.len();
    let mut got = 0;
    for v in result {
        if let (Some(buf), Some(u)) = (staging.get_mut(got), v) {
            buf.push(u);
        }
        got += 1;
    }
    if got != want {
        return Err(format!("the window function returned {got} values for {want} outputs").into());
    }
    Ok(())
}

impl Graph {
    /// Reports a zero size or step, naming the agent.
    fn check_window(&mut self, name: &str, size: usize, step: usize) {
        if size == 0 {
            self.problem(format!(
                "agent '{name}': window size must be at least 1 (got 0)"
            ));
        }
        if step == 0 {
            self.problem(format!(
                "agent '{name}': window step must be at least 1 (got 0)"
            ));
        }
    }

    fn check_outputs(&mut self, name: &str, n_outputs: usize) {
        if n_outputs == 0 {
            self.problem(format!(
                "agent '{name}': n_outputs must be at least 1 (got 0)"
            ));
        }
    }

    /// Adds a one-input count-window agent with `n_out` outputs running `kernel`.
    fn count_window<T, U>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        n_out: usize,
        kernel: impl FnOnce(Vec<Stream<U>>) -> Box<OneFn<T>>,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
    {
        let (input, outs) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            p.needs_at_least(&input, size);
            let outs: Vec<Stream<U>> = if n_out == 1 {
                vec![p.output::<U>("out")]
            } else {
                (0..n_out)
                    .map(|j| p.output::<U>(&format!("out{j}")))
                    .collect()
            };
            let agent = CountWindow {
                input,
                cursor: Cursor::new(size, step),
                pos: 0,
                kernel: kernel(outs.clone()),
            };
            (agent, (input, outs))
        });
        self.connect(stream, &input);
        self.check_window(name, size, step);
        outs
    }

    /// Adds a many-input count-window agent with `n_out` outputs running `kernel`.
    fn merge_count_window<T, U>(
        &mut self,
        name: &str,
        streams: &[Stream<T>],
        size: usize,
        step: usize,
        n_out: usize,
        kernel: impl FnOnce(Vec<Stream<U>>) -> Box<ManyFn<T>>,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
    {
        let (ins, outs) = self.add_agent(name, |p| {
            let ins: Vec<Input<T>> = (0..streams.len())
                .map(|i| {
                    let input = p.input::<T>(&format!("in{i}"));
                    p.needs_at_least(&input, size);
                    input
                })
                .collect();
            let outs: Vec<Stream<U>> = if n_out == 1 {
                vec![p.output::<U>("out")]
            } else {
                (0..n_out)
                    .map(|j| p.output::<U>(&format!("out{j}")))
                    .collect()
            };
            let agent = MergeCountWindow {
                inputs: ins.clone(),
                cursor: Cursor::new(size, step),
                pos: vec![0; ins.len()],
                kernel: kernel(outs.clone()),
            };
            (agent, (ins, outs))
        });
        for (s, i) in streams.iter().zip(&ins) {
            self.connect(s, i);
        }
        if streams.is_empty() {
            self.problem(format!(
                "agent '{name}': a window merge needs at least one input stream (got none)"
            ));
        }
        self.check_window(name, size, step);
        outs
    }

    /// `f(window)` for every window of `size` elements, one window every `step` elements
    /// (IoTPy's `map_window`). See the [module docs](self) for which windows are emitted.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Peak-to-peak amplitude of a vibration sensor over 4 samples, every 2 samples.
    /// let mut g = Graph::new("vibration");
    /// let accel = g.source_iter("accelerometer", [0.1, 0.5, -0.3, 0.2, 0.9, -0.6, 0.0]);
    /// let p2p = g.map_window("peak_to_peak", &accel, 4, 2, |w: &[f64]| {
    ///     let max = w.iter().copied().fold(f64::MIN, f64::max);
    ///     let min = w.iter().copied().fold(f64::MAX, f64::min);
    ///     max - min
    /// });
    /// let out = g.collect("out", &p2p);
    /// g.run().unwrap();
    /// // windows [0.1, 0.5, -0.3, 0.2] and [-0.3, 0.2, 0.9, -0.6]; the last one is incomplete
    /// assert_eq!(out.values(), [0.8, 1.5]);
    /// ```
    pub fn map_window<T, U, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        mut f: F,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&[T]) -> U + Send + 'static,
    {
        let outs = self.count_window(name, stream, size, step, 1, move |outs: Vec<Stream<U>>| {
            let out = outs[0];
            let (size, step) = (size.max(1), step.max(1));
            Box::new(move |data: &[T], n: usize, outputs: &mut Outputs<'_>| {
                let buf = outputs.vec(&out);
                buf.extend(data.windows(size).step_by(step).take(n).map(&mut f));
                Ok(())
            })
        });
        outs[0]
    }

    /// `(out, s') = f(window, s)` for every window, starting from `state` (IoTPy's
    /// `map_window` with `state=`).
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Flag a temperature rise: compare each 3-reading average with the previous one.
    /// let mut g = Graph::new("thermostat");
    /// let t = g.source_iter("temperature", [20.0, 20.0, 20.0, 21.0, 23.0, 24.0]);
    /// let rising = g.map_window_with_state("rising", &t, 3, 3, None, |w: &[f64], prev: Option<f64>| {
    ///     let avg = w.iter().sum::<f64>() / w.len() as f64;
    ///     (prev.is_some_and(|p| avg > p), Some(avg))
    /// });
    /// let out = g.collect("out", &rising);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [false, true]);
    /// ```
    pub fn map_window_with_state<T, U, S, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        state: S,
        mut f: F,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        S: Send + 'static,
        F: FnMut(&[T], S) -> (U, S) + Send + 'static,
    {
        let mut state = Some(state);
        self.map_window(name, stream, size, step, move |w: &[T]| {
            let (out, s) = f(w, state.take().expect("state is put back after each call"));
            state = Some(s);
            out
        })
    }

    /// Calls `f(window)` for every window, for its effect (IoTPy's `sink_window`).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use iotstream::Graph;
    /// // Log the average power of each full minute of 1 Hz meter readings.
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let sink_log = Arc::clone(&log);
    /// let mut g = Graph::new("power_log");
    /// let watts = g.source_iter("meter", (0..150).map(|i| if i < 60 { 100.0 } else { 250.0 }));
    /// g.sink_window("minute_average", &watts, 60, 60, move |w: &[f64]| {
    ///     sink_log.lock().unwrap().push(w.iter().sum::<f64>() / 60.0);
    /// });
    /// g.run().unwrap();
    /// assert_eq!(*log.lock().unwrap(), [100.0, 250.0]);
    /// ```
    pub fn sink_window<T, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        mut f: F,
    ) where
        T: Element,
        F: FnMut(&[T]) + Send + 'static,
    {
        self.count_window::<T, ()>(name, stream, size, step, 0, move |_| {
            let (size, step) = (size.max(1), step.max(1));
            Box::new(move |data: &[T], n: usize, _: &mut Outputs<'_>| {
                data.windows(size).step_by(step).take(n).for_each(&mut f);
                Ok(())
            })
        });
    }

    /// `f(window)` returns one value per output: value `j` is appended to output `j` (IoTPy's
    /// `split_window`). `f` may return a `Vec` or an array; a result with a number of values
    /// other than `n_outputs` stops the application with an error naming this agent.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Minimum and maximum temperature of each day (4 readings a day, for brevity).
    /// let mut g = Graph::new("daily_range");
    /// let t = g.source_iter("temperature", [12.0, 18.5, 21.0, 15.0, 10.5, 17.0, 23.5, 14.0]);
    /// let lo_hi = g.split_window("min_max", &t, 4, 4, 2, |day: &[f64]| {
    ///     [day.iter().copied().fold(f64::MAX, f64::min), day.iter().copied().fold(f64::MIN, f64::max)]
    /// });
    /// let lows = g.collect("lows", &lo_hi[0]);
    /// let highs = g.collect("highs", &lo_hi[1]);
    /// g.run().unwrap();
    /// assert_eq!(lows.values(), [12.0, 10.5]);
    /// assert_eq!(highs.values(), [21.0, 23.5]);
    /// ```
    pub fn split_window<T, U, I, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        n_outputs: usize,
        mut f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        I: IntoIterator<Item = U>,
        F: FnMut(&[T]) -> I + Send + 'static,
    {
        self.split_window_opt(name, stream, size, step, n_outputs, move |w: &[T]| {
            f(w).into_iter().map(Some)
        })
    }

    /// Like [`Graph::split_window`], but `f` returns an `Option` per output: `None` appends
    /// nothing to that output for this window (IoTPy's `_no_value`).
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Average every 3 readings; also report the average on an alarm stream when it is high.
    /// let mut g = Graph::new("boiler");
    /// let t = g.source_iter("boiler_temperature", [80.0, 82.0, 84.0, 95.0, 97.0, 99.0]);
    /// let outs = g.split_window_opt("average_and_alarm", &t, 3, 3, 2, |w: &[f64]| {
    ///     let avg = w.iter().sum::<f64>() / 3.0;
    ///     [Some(avg), (avg > 90.0).then_some(avg)]
    /// });
    /// let averages = g.collect("averages", &outs[0]);
    /// let alarms = g.collect("alarms", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(averages.values(), [82.0, 97.0]);
    /// assert_eq!(alarms.values(), [97.0]);
    /// ```
    pub fn split_window_opt<T, U, I, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        size: usize,
        step: usize,
        n_outputs: usize,
        mut f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        I: IntoIterator<Item = Option<U>>,
        F: FnMut(&[T]) -> I + Send + 'static,
    {
        self.check_outputs(name, n_outputs);
        self.count_window(
            name,
            stream,
            size,
            step,
            n_outputs,
            move |outs: Vec<Stream<U>>| {
                let (size, step) = (size.max(1), step.max(1));
                let mut staging: Vec<Vec<U>> = outs.iter().map(|_| Vec::new()).collect();
                Box::new(move |data: &[T], n: usize, outputs: &mut Outputs<'_>| {
                    let mut result = Ok(());
                    for w in data.windows(size).step_by(step).take(n) {
                        result = distribute(f(w), &mut staging);
                        if result.is_err() {
                            break;
                        }
                    }
                    flush_staging(&mut staging, &outs, outputs);
                    result
                })
            },
        )
    }

    /// `f([window of input 0, window of input 1, …])` for every window position, the same
    /// window over every input, advanced together (IoTPy's `merge_window`). A window is emitted
    /// once every input has it; a longer input waits.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Average of two redundant vibration sensors over windows of 3 samples.
    /// let mut g = Graph::new("redundant_vibration");
    /// let a = g.source_iter("sensor_a", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// let b = g.source_iter("sensor_b", [1.0, 2.0, 3.0, 6.0, 7.0, 8.0]);
    /// let avg = g.merge_window("fused_average", &[a, b], 3, 3, |ws: &[&[f64]]| {
    ///     ws.iter().flat_map(|w| w.iter()).sum::<f64>() / 6.0
    /// });
    /// let out = g.collect("out", &avg);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [2.0, 6.0]);
    /// ```
    pub fn merge_window<T, U, F>(
        &mut self,
        name: &str,
        streams: &[Stream<T>],
        size: usize,
        step: usize,
        mut f: F,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&[&[T]]) -> U + Send + 'static,
    {
        let outs =
            self.merge_count_window(name, streams, size, step, 1, move |outs: Vec<Stream<U>>| {
                let out = outs[0];
                let (size, step) = (size.max(1), step.max(1));
                Box::new(move |data: &[&[T]], n: usize, outputs: &mut Outputs<'_>| {
                    let buf = outputs.vec(&out);
                    let mut ws: Vec<&[T]> = Vec::with_capacity(data.len());
                    for k in 0..n {
                        ws.clear();
                        ws.extend(data.iter().map(|d| &d[k * step..k * step + size]));
                        buf.push(f(&ws));
                    }
                    Ok(())
                })
            });
        outs[0]
    }

    /// `f([window of each input])` returns one value per output, value `j` to output `j`
    /// (IoTPy's `multi_window`): windows advance together as in [`Graph::merge_window`], values
    /// are distributed as in [`Graph::split_window`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// // From voltage and current samples, the mean power and the peak current per 2 samples.
    /// let mut g = Graph::new("power_meter");
    /// let volts = g.source_iter("voltage", [230.0, 230.0, 231.0, 229.0]);
    /// let amps = g.source_iter("current", [1.0, 3.0, 2.0, 2.0]);
    /// let outs = g.multi_window("power", &[volts, amps], 2, 2, 2, |ws: &[&[f64]]| {
    ///     let (v, i) = (ws[0], ws[1]);
    ///     let power = v.iter().zip(i).map(|(v, i)| v * i).sum::<f64>() / 2.0;
    ///     let peak = i.iter().copied().fold(0.0, f64::max);
    ///     vec![power, peak]
    /// });
    /// let power = g.collect("mean_power", &outs[0]);
    /// let peak = g.collect("peak_current", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(power.values(), [460.0, 460.0]);
    /// assert_eq!(peak.values(), [3.0, 2.0]);
    /// ```
    pub fn multi_window<T, U, I, F>(
        &mut self,
        name: &str,
        streams: &[Stream<T>],
        size: usize,
        step: usize,
        n_outputs: usize,
        mut f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        I: IntoIterator<Item = U>,
        F: FnMut(&[&[T]]) -> I + Send + 'static,
    {
        self.multi_window_opt(
            name,
            streams,
            size,
            step,
            n_outputs,
            move |ws: &[&[T]]| f(ws).into_iter().map(Some),
        )
    }

    /// Like [`Graph::multi_window`], but `f` returns an `Option` per output: `None` appends
    /// nothing to that output for this window position.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Compare outdoor with indoor temperature over 2 readings: the difference always, and
    /// // again on a "ventilate" stream only when it is warmer outdoors.
    /// let mut g = Graph::new("ventilation");
    /// let indoor = g.source_iter("indoor", [21.0, 21.0, 21.0, 21.0]);
    /// let outdoor = g.source_iter("outdoor", [15.0, 17.0, 24.0, 26.0]);
    /// let outs = g.multi_window_opt("compare", &[indoor, outdoor], 2, 2, 2, |ws: &[&[f64]]| {
    ///     let diff = (ws[1].iter().sum::<f64>() - ws[0].iter().sum::<f64>()) / 2.0;
    ///     [Some(diff), (diff > 0.0).then_some(diff)]
    /// });
    /// let diffs = g.collect("diffs", &outs[0]);
    /// let ventilate = g.collect("ventilate", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(diffs.values(), [-5.0, 4.0]);
    /// assert_eq!(ventilate.values(), [4.0]);
    /// ```
    pub fn multi_window_opt<T, U, I, F>(
        &mut self,
        name: &str,
        streams: &[Stream<T>],
        size: usize,
        step: usize,
        n_outputs: usize,
        mut f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        I: IntoIterator<Item = Option<U>>,
        F: FnMut(&[&[T]]) -> I + Send + 'static,
    {
        self.check_outputs(name, n_outputs);
        self.merge_count_window(
            name,
            streams,
            size,
            step,
            n_outputs,
            move |outs: Vec<Stream<U>>| {
                let (size, step) = (size.max(1), step.max(1));
                let mut staging: Vec<Vec<U>> = outs.iter().map(|_| Vec::new()).collect();
                Box::new(move |data: &[&[T]], n: usize, outputs: &mut Outputs<'_>| {
                    let mut ws: Vec<&[T]> = Vec::with_capacity(data.len());
                    let mut result = Ok(());
                    for k in 0..n {
                        ws.clear();
                        ws.extend(data.iter().map(|d| &d[k * step..k * step + size]));
                        result = distribute(f(&ws), &mut staging);
                        if result.is_err() {
                            break;
                        }
                    }
                    flush_staging(&mut staging, &outs, outputs);
                    result
                })
            },
        )
    }
}
