//! Splits: one stream (or several, zipped) into several.
//!
//! | call | IoTPy | emits |
//! |---|---|---|
//! | [`Graph::split`] | `split_element` | value `j` of `f(v)` to output `j`; `None` skips output `j` |
//! | [`Graph::unzip`], [`Graph::unzip3`] | `unzip` | tuple component `j` to output `j` |
//! | [`Graph::separate`] | `separate` | `v` of `(j, v)` to output `j`: the inverse of [`Graph::mix`] |
//! | [`Graph::multi_element`] | `multi_element` | zips its inputs like [`Graph::zip_map`]; value `j` of `f(row)` to output `j` |
//! | [`Graph::split_either`] | `split_element` | `f(v)` is [`Either::Left(a)`](Either::Left) or `Right(b)`: `a` to the first output, `b` to the second, of different types |
//! | [`Graph::split3`] | `split_element` | `f(v)` is a [`OneOf3`]: to one of three outputs, of three types |
//!
//! # Outputs of different types
//!
//! [`Graph::split`] sends one type to every output. When the parts differ in type (parsed
//! readings and the lines that failed to parse; measurements and status messages of one
//! device), [`Graph::split_either`] takes a function returning an [`Either`], a small enum of
//! this crate, and returns one stream per side. A `Result` converts into an `Either` (`Ok` is
//! `Left`) with `.into()`. [`Graph::split3`] does the same for three outputs with [`OneOf3`].
//!
//! # Functions with several results
//!
//! [`Graph::split`] and [`Graph::multi_element`] take a function that returns one
//! `Option` per output, as anything iterable: an array (`[Some(a), None]`, no allocation) or a
//! `Vec` when the number of outputs is only known at run time. `None` emits nothing on that
//! output (IoTPy's "no value"). A result with more or fewer values than there are outputs stops
//! the application with an error naming the agent.
//!
//! # Order and batches
//!
//! Each output receives its values in input order, and nothing depends on how the input was cut
//! into batches. Outputs are independent streams: a reader of output 0 does not wait for a
//! reader of output 1, except through back-pressure (a split's step appends to every output, so
//! a full output holds back all of them).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::ops::merge::{declare_inputs, zip_step};
use crate::stream::{Element, Input, Stream};

/// The outputs of a split, with one buffer each: a step gathers values here, then hands each
/// buffer to its output at once (one batch per output per step, no allocation per element).
struct Fanout<U> {
    outs: Vec<Stream<U>>,
    bufs: Vec<Vec<U>>,
}

impl<U: Element> Fanout<U> {
    fn new(outs: Vec<Stream<U>>) -> Self {
        let bufs = outs.iter().map(|_| Vec::new()).collect();
        Fanout { outs, bufs }
    }

    /// Sends value `j` of `values` to output `j`; an error if there are not exactly as many
    /// values as outputs.
    fn row(&mut self, values: impl IntoIterator<Item = Option<U>>) -> Result<(), AgentError> {
        let n = self.bufs.len();
        let mut count = 0;
        // Bounded: a result longer than n is wrong however long it is.
        for v in values.into_iter().take(n + 1) {
            if let (Some(v), Some(buf)) = (v, self.bufs.get_mut(count)) {
                buf.push(v);
            }
            count += 1;
        }
        if count != n {
            let got = if count > n {
                format!("more than {n}")
            } else {
                count.to_string()
            };
            return Err(format!(
                "the function returned {got} values for one element; it must return exactly {n}, one per output"
            )
            .into());
        }
        Ok(())
    }

    /// Hands what was gathered to the outputs.
    fn flush(&mut self, outputs: &mut Outputs<'_>) {
        for (out, buf) in self.outs.iter().zip(&mut self.bufs) {
            if !buf.is_empty() {
                outputs.vec(out).append(buf);
            }
        }
    }
}

/// One of two values of possibly different types: what the function of
/// [`Graph::split_either`] returns to choose an output.
///
/// ```
/// use iotstream::ops::split::Either;
/// let parsed: Either<u32, String> = "42".parse::<u32>().map_err(|e| e.to_string()).into();
/// assert_eq!(parsed, Either::Left(42));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Either<L, R> {
    /// Goes to the first output.
    Left(L),
    /// Goes to the second output.
    Right(R),
}

impl<L, R> From<Result<L, R>> for Either<L, R> {
    /// `Ok` is `Left`, `Err` is `Right`.
    fn from(r: Result<L, R>) -> Self {
        match r {
            Ok(l) => Either::Left(l),
            Err(e) => Either::Right(e),
        }
    }
}

/// One of three values of possibly different types: what the function of [`Graph::split3`]
/// returns to choose an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OneOf3<A, B, C> {
    /// Goes to the first output.
    First(A),
    /// Goes to the second output.
    Second(B),
    /// Goes to the third output.
    Third(C),
}

fn declare_outputs<U: Element>(p: &mut crate::agent::Ports, n: usize) -> Vec<Stream<U>> {
    (0..n).map(|j| p.output::<U>(&format!("out{j}"))).collect()
}

// ---------------------------------------------------------------------------------------------
// split

struct Split<T, U, R, F> {
    input: Input<T>,
    fan: Fanout<U>,
    f: F,
    _r: PhantomData<fn() -> R>,
}

impl<T, U, R, F> Agent for Split<T, U, R, F>
where
    T: Element,
    U: Element,
    R: IntoIterator<Item = Option<U>> + 'static,
    F: FnMut(&T) -> R + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        for v in new {
            self.fan.row((self.f)(v))?;
        }
        self.fan.flush(outputs);
        inputs.consume(&self.input, n);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// split_either, split3

/// Moves what `buf` gathered to `out`, leaving `buf` empty with its allocation.
fn hand_over<U: Element>(outputs: &mut Outputs<'_>, out: &Stream<U>, buf: &mut Vec<U>) {
    if !buf.is_empty() {
        outputs.vec(out).append(buf);
    }
}

/// The outputs' buffers (`bufs`) are filled in a step, then handed over: one batch per output
/// per step, their allocations kept from step to step.
struct SplitEither<T, A, B, F> {
    input: Input<T>,
    a: Stream<A>,
    b: Stream<B>,
    bufs: (Vec<A>, Vec<B>),
    f: F,
}

impl<T, A, B, F> Agent for SplitEither<T, A, B, F>
where
    T: Element,
    A: Element,
    B: Element,
    F: FnMut(&T) -> Either<A, B> + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n == 0 {
            return Ok(());
        }
        let (a, b) = &mut self.bufs;
        for v in new {
            match (self.f)(v) {
                Either::Left(x) => a.push(x),
                Either::Right(y) => b.push(y),
            }
        }
        hand_over(outputs, &self.a, a);
        hand_over(outputs, &self.b, b);
        inputs.consume(&self.input, n);
        Ok(())
    }
}

/// As [`SplitEither`], with three outputs.
struct Split3<T, A, B, C, F> {
    input: Input<T>,
    a: Stream<A>,
    b: Stream<B>,
    c: Stream<C>,
    bufs: (Vec<A>, Vec<B>, Vec<C>),
    f: F,
}

impl<T, A, B, C, F> Agent for Split3<T, A, B, C, F>
where
    T: Element,
    A: Element,
    B: Element,
    C: Element,
    F: FnMut(&T) -> OneOf3<A, B, C> + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n == 0 {
            return Ok(());
        }
        let (a, b, c) = &mut self.bufs;
        for v in new {
            match (self.f)(v) {
                OneOf3::First(x) => a.push(x),
                OneOf3::Second(y) => b.push(y),
                OneOf3::Third(z) => c.push(z),
            }
        }
        hand_over(outputs, &self.a, a);
        hand_over(outputs, &self.b, b);
        hand_over(outputs, &self.c, c);
        inputs.consume(&self.input, n);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// unzip

struct Unzip2<A, B> {
    input: Input<(A, B)>,
    a: Stream<A>,
    b: Stream<B>,
}

impl<A: Element, B: Element> Agent for Unzip2<A, B> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        outputs.vec(&self.a).extend(new.iter().map(|t| t.0.clone()));
        outputs.vec(&self.b).extend(new.iter().map(|t| t.1.clone()));
        inputs.consume(&self.input, n);
        Ok(())
    }
}

struct Unzip3<A, B, C> {
    input: Input<(A, B, C)>,
    a: Stream<A>,
    b: Stream<B>,
    c: Stream<C>,
}

impl<A: Element, B: Element, C: Element> Agent for Unzip3<A, B, C> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        outputs.vec(&self.a).extend(new.iter().map(|t| t.0.clone()));
        outputs.vec(&self.b).extend(new.iter().map(|t| t.1.clone()));
        outputs.vec(&self.c).extend(new.iter().map(|t| t.2.clone()));
        inputs.consume(&self.input, n);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// separate

struct Separate<T> {
    input: Input<(usize, T)>,
    fan: Fanout<T>,
}

impl<T: Element> Agent for Separate<T> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        let outs = self.fan.bufs.len();
        for (j, v) in new {
            match self.fan.bufs.get_mut(*j) {
                Some(buf) => buf.push(v.clone()),
                None => {
                    return Err(format!(
                        "an element is addressed to output {j}, but there are only {outs} outputs (0..{outs})"
                    )
                    .into())
                }
            }
        }
        self.fan.flush(outputs);
        inputs.consume(&self.input, n);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// multi_element

struct MultiElement<T, U, R, F> {
    ins: Vec<Input<T>>,
    fan: Fanout<U>,
    f: F,
    _r: PhantomData<fn() -> R>,
}

impl<T, U, R, F> Agent for MultiElement<T, U, R, F>
where
    T: Element,
    U: Element,
    R: IntoIterator<Item = Option<U>> + 'static,
    F: FnMut(&[&T]) -> R + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let (fan, f) = (&mut self.fan, &mut self.f);
        zip_step(inputs, &self.ins, |row| fan.row(f(row)))?;
        fan.flush(outputs);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The operators

impl Graph {
    fn check_split_outputs(&mut self, name: &str, op: &str, n: usize) {
        if n == 0 {
            self.problem(format!(
                "agent '{name}': {op} needs at least one output (n = 0)"
            ));
        }
    }

    /// Sends value `j` of `f(v)` to output `j` of `n`, for each element `v` (IoTPy's
    /// `split_element`); `None` emits nothing on that output. `f` returns anything iterable
    /// with exactly `n` items (an array, a `Vec`, …); any other count stops the application with
    /// an error naming this agent. `n = 0` is a graph problem.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("boiler");
    /// let temps = g.source_iter("temperature", [65.0, 92.5, 70.0, 99.0]);
    /// // Output 0: every reading, for the chart; output 1: readings over 90 °C, for the alarm.
    /// let outs = g.split("triage", &temps, 2, |t: &f64| [Some(*t), (*t > 90.0).then_some(*t)]);
    /// let chart = g.collect("chart", &outs[0]);
    /// let alarm = g.collect("alarm", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(chart.values(), [65.0, 92.5, 70.0, 99.0]);
    /// assert_eq!(alarm.values(), [92.5, 99.0]);
    /// ```
    pub fn split<T, U, R, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        n: usize,
        f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        R: IntoIterator<Item = Option<U>> + 'static,
        F: FnMut(&T) -> R + Send + 'static,
    {
        self.check_split_outputs(name, "split", n);
        let (input, outs) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let outs = declare_outputs::<U>(p, n);
            let agent = Split {
                input,
                fan: Fanout::new(outs.clone()),
                f,
                _r: PhantomData,
            };
            (agent, (input, outs))
        });
        self.connect(stream, &input);
        outs
    }

    /// Sends `a` to the first output where `f(v)` is `Either::Left(a)`, and `b` to the second
    /// where it is `Either::Right(b)`: a split into two outputs of different types. See the
    /// [module docs](self).
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::split::Either;
    /// let mut g = Graph::new("meter");
    /// let lines = g.source_iter("lines", ["230.5".to_string(), "E17 cover open".into(), "229.0".into()]);
    /// // Readings as numbers to the chart, anything else as text to the operator's log.
    /// let (volts, messages) = g.split_either("parse", &lines, |l: &String| match l.parse::<f64>() {
    ///     Ok(v) => Either::Left(v),
    ///     Err(_) => Either::Right(l.clone()),
    /// });
    /// let volts = g.collect("chart", &volts);
    /// let messages = g.collect("log", &messages);
    /// g.run().unwrap();
    /// assert_eq!(volts.values(), [230.5, 229.0]);
    /// assert_eq!(messages.values(), ["E17 cover open"]);
    /// ```
    pub fn split_either<T, A, B, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        f: F,
    ) -> (Stream<A>, Stream<B>)
    where
        T: Element,
        A: Element,
        B: Element,
        F: FnMut(&T) -> Either<A, B> + Send + 'static,
    {
        let (input, a, b) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let a = p.output::<A>("out0");
            let b = p.output::<B>("out1");
            let agent = SplitEither {
                input,
                a,
                b,
                bufs: (Vec::new(), Vec::new()),
                f,
            };
            (agent, (input, a, b))
        });
        self.connect(stream, &input);
        (a, b)
    }

    /// Sends each element's [`OneOf3`] value to the first, second or third output, by its
    /// variant: a split into three outputs of different types, as [`Graph::split_either`] is
    /// into two.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::split::OneOf3;
    /// let mut g = Graph::new("gateway");
    /// // A radio gateway's frames: a temperature, a door switch, or something unknown.
    /// let frames = g.source_iter("frames", [(1u8, 215i32), (2, 1), (9, 0), (1, 220)]);
    /// let (temps, doors, unknown) = g.split3("by_kind", &frames, |&(kind, v): &(u8, i32)| match kind {
    ///     1 => OneOf3::First(f64::from(v) / 10.0),
    ///     2 => OneOf3::Second(v != 0),
    ///     _ => OneOf3::Third(kind),
    /// });
    /// let temps = g.collect("temps", &temps);
    /// let doors = g.collect("doors", &doors);
    /// let unknown = g.collect("unknown", &unknown);
    /// g.run().unwrap();
    /// assert_eq!(temps.values(), [21.5, 22.0]);
    /// assert_eq!(doors.values(), [true]);
    /// assert_eq!(unknown.values(), [9]);
    /// ```
    pub fn split3<T, A, B, C, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        f: F,
    ) -> (Stream<A>, Stream<B>, Stream<C>)
    where
        T: Element,
        A: Element,
        B: Element,
        C: Element,
        F: FnMut(&T) -> OneOf3<A, B, C> + Send + 'static,
    {
        let (input, a, b, c) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let a = p.output::<A>("out0");
            let b = p.output::<B>("out1");
            let c = p.output::<C>("out2");
            let agent = Split3 {
                input,
                a,
                b,
                c,
                bufs: (Vec::new(), Vec::new(), Vec::new()),
                f,
            };
            (agent, (input, a, b, c))
        });
        self.connect(stream, &input);
        (a, b, c)
    }

    /// Sends the first component of each pair to the first output and the second to the
    /// second (IoTPy's `unzip`): the inverse of [`Graph::zip`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("weather_station");
    /// let readings = g.source_iter("readings", [(21.5, 40), (22.0, 42)]);
    /// let (temperature, humidity) = g.unzip("by_quantity", &readings);
    /// let t = g.collect("t", &temperature);
    /// let h = g.collect("h", &humidity);
    /// g.run().unwrap();
    /// assert_eq!(t.values(), [21.5, 22.0]);
    /// assert_eq!(h.values(), [40, 42]);
    /// ```
    pub fn unzip<A: Element, B: Element>(
        &mut self,
        name: &str,
        stream: &Stream<(A, B)>,
    ) -> (Stream<A>, Stream<B>) {
        let (input, a, b) = self.add_agent(name, |p| {
            let input = p.input::<(A, B)>("in");
            let a = p.output::<A>("out0");
            let b = p.output::<B>("out1");
            (Unzip2 { input, a, b }, (input, a, b))
        });
        self.connect(stream, &input);
        (a, b)
    }

    /// Sends tuple component `j` to output `j`, like [`Graph::unzip`] for triples: the inverse
    /// of [`Graph::zip3`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("gps");
    /// let fixes = g.source_iter("fixes", [(52.52, 13.40, 34.0), (52.53, 13.41, 35.5)]);
    /// let (lat, lon, alt) = g.unzip3("coordinates", &fixes);
    /// let lat = g.collect("lat", &lat);
    /// let lon = g.collect("lon", &lon);
    /// let alt = g.collect("alt", &alt);
    /// g.run().unwrap();
    /// assert_eq!(lat.values(), [52.52, 52.53]);
    /// assert_eq!(lon.values(), [13.40, 13.41]);
    /// assert_eq!(alt.values(), [34.0, 35.5]);
    /// ```
    pub fn unzip3<A: Element, B: Element, C: Element>(
        &mut self,
        name: &str,
        stream: &Stream<(A, B, C)>,
    ) -> (Stream<A>, Stream<B>, Stream<C>) {
        let (input, a, b, c) = self.add_agent(name, |p| {
            let input = p.input::<(A, B, C)>("in");
            let a = p.output::<A>("out0");
            let b = p.output::<B>("out1");
            let c = p.output::<C>("out2");
            (Unzip3 { input, a, b, c }, (input, a, b, c))
        });
        self.connect(stream, &input);
        (a, b, c)
    }

    /// Sends `v` of each `(j, v)` to output `j` of `n` (IoTPy's `separate`): the inverse of
    /// [`Graph::mix`]. An index `j ≥ n` stops the application with an error naming this agent
    /// and the index. `n = 0` is a graph problem.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("log_router");
    /// // (severity, line): 0 = info, 1 = error
    /// let lines = g.source_iter("syslog", [
    ///     (0, "disk mounted".to_string()),
    ///     (1, "fan failure".into()),
    ///     (0, "user login".into()),
    /// ]);
    /// let outs = g.separate("by_severity", &lines, 2);
    /// let info = g.collect("info", &outs[0]);
    /// let errors = g.collect("errors", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(info.values(), ["disk mounted", "user login"]);
    /// assert_eq!(errors.values(), ["fan failure"]);
    /// ```
    pub fn separate<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<(usize, T)>,
        n: usize,
    ) -> Vec<Stream<T>> {
        self.check_split_outputs(name, "separate", n);
        let (input, outs) = self.add_agent(name, |p| {
            let input = p.input::<(usize, T)>("in");
            let outs = declare_outputs::<T>(p, n);
            let agent = Separate {
                input,
                fan: Fanout::new(outs.clone()),
            };
            (agent, (input, outs))
        });
        self.connect(stream, &input);
        outs
    }

    /// Many to many (IoTPy's `multi_element`): zips `streams` like [`Graph::zip_map`] and sends
    /// value `j` of `f(row)` to output `j` of `n_outputs`; `None` emits nothing on that output.
    /// `f` must return exactly `n_outputs` items, or the application stops with an error naming
    /// this agent. No inputs or no outputs is a graph problem.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("motor_monitor");
    /// let volts = g.source_iter("voltage", [230.0, 231.0, 229.0]);
    /// let amps = g.source_iter("current", [4.0, 11.0, 5.0]);
    /// // Output 0: power for every sample; output 1: an overload alarm when over 2 kW.
    /// let outs = g.multi_element("power", &[volts, amps], 2, |va: &[&f64]| {
    ///     let watts = va[0] * va[1];
    ///     [Some(watts), (watts > 2000.0).then_some(watts)]
    /// });
    /// let power = g.collect("power_out", &outs[0]);
    /// let overload = g.collect("overload", &outs[1]);
    /// g.run().unwrap();
    /// assert_eq!(power.values(), [920.0, 2541.0, 1145.0]);
    /// assert_eq!(overload.values(), [2541.0]);
    /// ```
    pub fn multi_element<T, U, R, F>(
        &mut self,
        name: &str,
        streams: &[Stream<T>],
        n_outputs: usize,
        f: F,
    ) -> Vec<Stream<U>>
    where
        T: Element,
        U: Element,
        R: IntoIterator<Item = Option<U>> + 'static,
        F: FnMut(&[&T]) -> R + Send + 'static,
    {
        self.check_split_outputs(name, "multi_element", n_outputs);
        let (ins, outs) = self.add_agent(name, |p| {
            let ins = declare_inputs::<T>(p, streams.len());
            let outs = declare_outputs::<U>(p, n_outputs);
            let agent = MultiElement {
                ins: ins.clone(),
                fan: Fanout::new(outs.clone()),
                f,
                _r: PhantomData,
            };
            (agent, (ins, outs))
        });
        self.connect_all(name, "multi_element", streams, &ins);
        outs
    }
}
