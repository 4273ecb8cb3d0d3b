//! Rolling aggregates: count, sum, mean, minimum, maximum and variance of the last `W` values,
//! updated in O(1) amortised time per element.
//!
//! | call | IoTPy equivalent | output |
//! |---|---|---|
//! | [`Graph::rolling`] | `map_window(f, size=W, step=1)` with `f` = sum, mean, … | one aggregate per element once `W` have arrived |
//! | [`Graph::rolling_with`] | — | the same with any [`RollingAggregate`] |
//! | [`Graph::rolling_timed`] | — | over `(t, v)`: `(t, aggregate)`, `t` of the element that completed the window |
//! | [`Graph::rolling_timed_with`] | — | the same with any [`RollingAggregate`] |
//!
//! # Values and timestamps
//!
//! The input may hold any primitive number (`f64`, `f32`, `i8` … `i128`, `u8` … `u128`,
//! `isize`, `usize`) or `bool` (`true` is 1): the types that implement [`RollingValue`].
//! Aggregates are computed in `f64`, so an integer beyond ±2⁵³ is rounded to the nearest `f64`
//! first. For a type of your own, implement [`RollingValue`] (one conversion).
//!
//! A timestamped stream of `(t, v)` pairs keeps its timestamps through
//! [`Graph::rolling_timed`]: each output is `(t, aggregate)`, where `t` is the timestamp of the
//! element that completed the window (the newest of the last `W`). The window is still the
//! last `W` *elements*, whatever their timestamps; the timestamps are carried, not checked or
//! reordered. For windows over a span of time, see [`Graph::timed_window`].
//!
//! # Why not `map_window`
//!
//! [`Graph::map_window`] with step 1 calls `f` on every window, so a window of `W` elements
//! costs O(W) per element (as in IoTPy, which recomputes each window). The aggregates here keep
//! a running state instead: sums with compensated (Neumaier) summation, variance with shifted
//! compensated sums, minimum and maximum with monotonic deques. Each also needs no buffering on its input
//! connection, since every element is consumed as it arrives.
//!
//! The output is aligned exactly like `map_window(size = W, step = 1)`: nothing for the first
//! `W − 1` elements, then one value per element, the aggregate of the last `W`. A rolling mean
//! equals `map_window(W, 1, mean)` element for element, up to rounding (the rolling sums are in
//! fact the more accurate: they are recomputed from the window every `W` elements so rounding
//! never accumulates).
//!
//! # The aggregates
//!
//! | [`Rolling`] | struct | value over the last `W` elements |
//! |---|---|---|
//! | `Count` | [`RollingCount`] | how many are not NaN (a sensor's valid readings) |
//! | `Sum` | [`RollingSum`] | their sum |
//! | `Mean` | [`RollingMean`] | sum / `W` |
//! | `Min`, `Max` | [`RollingMin`], [`RollingMax`] | the smallest, the largest |
//! | `Variance`, `StdDev` | [`RollingVariance::population`] | population variance Σ(x − mean)² / `W`, its square root |
//! | `SampleVariance`, `SampleStdDev` | [`RollingVariance::sample`] | sample variance Σ(x − mean)² / (`W` − 1) (NaN when `W` = 1), its square root |
//!
//! NaN is propagated as plain arithmetic would: while a NaN is among the last `W` values, sum,
//! mean, minimum, maximum and variance are NaN, and they recover as soon as it leaves the window
//! (the running state is never poisoned). Infinities behave as in plain arithmetic too (`+∞` and
//! `−∞` in one window sum to NaN), and so do finite values whose sum overflows: the sum and
//! mean are `±∞` while they are in the window; the variance is `∞` while their squared
//! deviations from the mean overflow (equal large values, whose sum overflows, have variance
//! 0). `Count` counts the values that are not NaN.
//!
//! # Inside your own agent
//!
//! The structs are public and independent of the runtime: `push` the next value, get the
//! aggregate once the window is full.
//!
//! ```
//! use iotstream::ops::rolling::{RollingAggregate, RollingMax};
//! let mut peak = RollingMax::new(3);
//! let out: Vec<Option<f64>> = [1.0, 5.0, 2.0, 0.5, 0.1].into_iter().map(|x| peak.push(x)).collect();
//! assert_eq!(out, [None, None, Some(5.0), Some(5.0), Some(2.0)]);
//! ```

use std::collections::VecDeque;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// A value [`Graph::rolling`] accepts: a number it can aggregate as an `f64`.
///
/// Implemented for every primitive number and for `bool` (`true` is 1, so a rolling `Sum` of
/// booleans counts the `true`s). Integers beyond ±2⁵³ (`i64`, `u64`, …) are rounded to the
/// nearest `f64`, as `as f64` does.
///
/// ```
/// use iotstream::Graph;
/// use iotstream::ops::rolling::{Rolling, RollingValue};
///
/// /// A reading in tenths of a degree, as many sensors send it.
/// #[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
/// struct Decidegrees(i16);
///
/// impl RollingValue for Decidegrees {
///     fn to_f64(self) -> f64 {
///         f64::from(self.0) / 10.0
///     }
/// }
///
/// let mut g = Graph::new("thermostat");
/// let t = g.source_iter("temperature", [Decidegrees(215), Decidegrees(225), Decidegrees(230)]);
/// let warmest = g.rolling("warmest", &t, 2, Rolling::Max);
/// let out = g.collect("out", &warmest);
/// g.run().unwrap();
/// assert_eq!(out.values(), [22.5, 23.0]);
/// ```
pub trait RollingValue: Element + Copy {
    /// The value as an `f64`.
    fn to_f64(self) -> f64;
}

macro_rules! rolling_value_as {
    ($($t:ty),*) => {$(
        impl RollingValue for $t {
            fn to_f64(self) -> f64 {
                // Rounds to the nearest f64 beyond ±2^53 (documented on the trait).
                self as f64
            }
        }
    )*};
}

rolling_value_as!(f64, f32, i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

impl RollingValue for bool {
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
}

/// An aggregate of the last `window` values, updated one value at a time.
///
/// Implemented by every struct of this module; implement it for your own aggregate to run it
/// with [`Graph::rolling_with`].
pub trait RollingAggregate: Send + 'static {
    /// Adds the next value. Returns the aggregate of the last [`window`](Self::window) values,
    /// or `None` while fewer than that many have been pushed.
    fn push(&mut self, x: f64) -> Option<f64>;

    /// The number of values the aggregate covers.
    fn window(&self) -> usize;
}

/// Which aggregate [`Graph::rolling`] computes. See the [module docs](self) for definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rolling {
    /// How many of the last `W` values are not NaN.
    Count,
    /// Sum of the last `W` values.
    Sum,
    /// Mean of the last `W` values.
    Mean,
    /// Smallest of the last `W` values.
    Min,
    /// Largest of the last `W` values.
    Max,
    /// Population variance (divides by `W`).
    Variance,
    /// Sample variance (divides by `W − 1`; NaN when `W` = 1).
    SampleVariance,
    /// Population standard deviation: the square root of `Variance`.
    StdDev,
    /// Sample standard deviation: the square root of `SampleVariance`.
    SampleStdDev,
}

fn check_window(window: usize) {
    assert!(
        window >= 1,
        "a rolling window must hold at least 1 value (got 0)"
    );
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// The last `cap` values, oldest overwritten first. Grows with the values that came (doubling,
/// never beyond `cap`), then stays: memory follows the stream, not the window's size, so a huge
/// window over a short stream allocates little (it allocated `cap` values at once, and a window
/// of 4e9 aborted the process: "memory allocation of 32000000000 bytes failed").
#[derive(Clone, Debug)]
struct Ring {
    buf: Vec<f64>,
    cap: usize,
    next: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Ring {
            buf: Vec::new(),
            cap,
            next: 0,
        }
    }

    /// Adds `x`; returns the value it displaced once the ring is full.
    fn push(&mut self, x: f64) -> Option<f64> {
        if self.buf.len() < self.cap {
            if self.buf.len() == self.buf.capacity() {
                let more = self.buf.len().max(8).min(self.cap - self.buf.len());
                self.buf.reserve_exact(more);
            }
            self.buf.push(x);
            return None;
        }
        let old = std::mem::replace(&mut self.buf[self.next], x);
        self.next = (self.next + 1) % self.cap;
        Some(old)
    }

    fn is_full(&self) -> bool {
        self.buf.len() == self.cap
    }

    /// The values, in no particular order.
    fn values(&self) -> &[f64] {
        &self.buf
    }
}

/// Neumaier's compensated sum: the rounding error of each addition is kept in `c`.
#[derive(Clone, Copy, Debug, Default)]
struct Compensated {
    sum: f64,
    c: f64,
}

impl Compensated {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.c += (self.sum - t) + x;
        } else {
            self.c += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        if self.sum.is_infinite() {
            // The finite values overflowed: the compensation (inf − inf) means nothing.
            return self.sum;
        }
        self.sum + self.c
    }

    /// False once an addition overflowed: the running state must be recomputed.
    fn is_finite(&self) -> bool {
        self.sum.is_finite() && self.c.is_finite()
    }
}

/// Counts of the values that cannot take part in running arithmetic.
#[derive(Clone, Copy, Debug, Default)]
struct NonFinite {
    nan: usize,
    pos_inf: usize,
    neg_inf: usize,
}

impl NonFinite {
    /// Counts `x` if it is not finite; returns true if it was counted.
    fn add(&mut self, x: f64, sign: isize) -> bool {
        let slot = if x.is_nan() {
            &mut self.nan
        } else if x == f64::INFINITY {
            &mut self.pos_inf
        } else if x == f64::NEG_INFINITY {
            &mut self.neg_inf
        } else {
            return false;
        };
        *slot = slot.wrapping_add_signed(sign);
        true
    }

    fn any(&self) -> bool {
        self.nan + self.pos_inf + self.neg_inf > 0
    }

    /// What a sum including these values is, if they decide it.
    fn sum(&self) -> Option<f64> {
        match (self.nan > 0, self.pos_inf > 0, self.neg_inf > 0) {
            (true, _, _) | (false, true, true) => Some(f64::NAN),
            (false, true, false) => Some(f64::INFINITY),
            (false, false, true) => Some(f64::NEG_INFINITY),
            (false, false, false) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Count

/// How many of the last `W` values are not NaN. See the [module docs](self).
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingCount};
/// // Valid readings among the last 3 of a flaky humidity sensor (NaN = no reading).
/// let mut valid = RollingCount::new(3);
/// let out: Vec<_> = [40.0, f64::NAN, 41.0, 42.0].into_iter().map(|x| valid.push(x)).collect();
/// assert_eq!(out, [None, None, Some(2.0), Some(2.0)]);
/// ```
#[derive(Clone, Debug)]
pub struct RollingCount {
    ring: Ring,
    nan: usize,
}

impl RollingCount {
    /// Over the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn new(window: usize) -> Self {
        check_window(window);
        RollingCount {
            ring: Ring::new(window),
            nan: 0,
        }
    }
}

impl RollingAggregate for RollingCount {
    fn push(&mut self, x: f64) -> Option<f64> {
        if self.ring.push(x).is_some_and(f64::is_nan) {
            self.nan -= 1;
        }
        if x.is_nan() {
            self.nan += 1;
        }
        self.ring
            .is_full()
            .then(|| (self.ring.cap - self.nan) as f64)
    }

    fn window(&self) -> usize {
        self.ring.cap
    }
}

// ---------------------------------------------------------------------------------------------
// Sum and mean

/// Sum of the last `W` values, with compensated summation, recomputed from the window every `W`
/// values so that rounding never accumulates. See the [module docs](self).
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingSum};
/// // Energy used in the last 3 intervals, from a meter's per-interval readings in kWh.
/// let mut energy = RollingSum::new(3);
/// let out: Vec<_> = [0.5, 0.25, 1.0, 2.0].into_iter().map(|x| energy.push(x)).collect();
/// assert_eq!(out, [None, None, Some(1.75), Some(3.25)]);
/// ```
#[derive(Clone, Debug)]
pub struct RollingSum {
    ring: Ring,
    finite: Compensated,
    other: NonFinite,
    since_resync: usize,
}

impl RollingSum {
    /// Over the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn new(window: usize) -> Self {
        check_window(window);
        RollingSum {
            ring: Ring::new(window),
            finite: Compensated::default(),
            other: NonFinite::default(),
            since_resync: 0,
        }
    }

    fn value(&self) -> f64 {
        self.other.sum().unwrap_or_else(|| self.finite.value())
    }
}

impl RollingAggregate for RollingSum {
    fn push(&mut self, x: f64) -> Option<f64> {
        if let Some(old) = self.ring.push(x) {
            if !self.other.add(old, -1) {
                self.finite.add(-old);
            }
        }
        if !self.other.add(x, 1) {
            self.finite.add(x);
        }
        self.since_resync += 1;
        // O(W) every W values: O(1) amortised, and the error never grows with the stream. Also
        // after finite values overflowed (their sum is ±inf, its compensation NaN), so that the
        // state recovers as soon as they leave the window, not up to W values later.
        if self.since_resync == self.ring.cap || !self.finite.is_finite() {
            self.since_resync = 0;
            self.finite = Compensated::default();
            for &v in self.ring.values() {
                if v.is_finite() {
                    self.finite.add(v);
                }
            }
        }
        self.ring.is_full().then(|| self.value())
    }

    fn window(&self) -> usize {
        self.ring.cap
    }
}

/// Mean of the last `W` values: [`RollingSum`] divided by `W`. See the [module docs](self).
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingMean};
/// // Smooth a thermometer over its last 4 readings.
/// let mut smooth = RollingMean::new(4);
/// let out: Vec<_> = [20.0, 21.0, 23.0, 24.0, 27.0].into_iter().map(|x| smooth.push(x)).collect();
/// assert_eq!(out, [None, None, None, Some(22.0), Some(23.75)]);
/// ```
#[derive(Clone, Debug)]
pub struct RollingMean {
    sum: RollingSum,
}

impl RollingMean {
    /// Over the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn new(window: usize) -> Self {
        RollingMean {
            sum: RollingSum::new(window),
        }
    }
}

impl RollingAggregate for RollingMean {
    fn push(&mut self, x: f64) -> Option<f64> {
        let w = self.sum.ring.cap as f64;
        self.sum.push(x).map(|s| s / w)
    }

    fn window(&self) -> usize {
        self.sum.ring.cap
    }
}

// ---------------------------------------------------------------------------------------------
// Minimum and maximum

/// A monotonic deque: the candidates for the extremum of the window, with their positions.
/// Every value enters and leaves it at most once, so a push is O(1) amortised.
#[derive(Clone, Debug)]
struct Extremum<const MAX: bool> {
    window: usize,
    deque: VecDeque<(u64, f64)>,
    /// Values pushed so far (the position of the next one).
    count: u64,
    /// Position of the last NaN pushed.
    last_nan: Option<u64>,
}

impl<const MAX: bool> Extremum<MAX> {
    fn new(window: usize) -> Self {
        check_window(window);
        Extremum {
            window,
            // Grows with the candidates (at most `window` + 1), not allocated for the window.
            deque: VecDeque::new(),
            count: 0,
            last_nan: None,
        }
    }

    fn push(&mut self, x: f64) -> Option<f64> {
        let i = self.count;
        self.count += 1;
        let w = self.window as u64;
        if x.is_nan() {
            self.last_nan = Some(i);
        } else {
            // Drop candidates that `x` beats: they can never be the extremum again.
            while let Some(&(_, b)) = self.deque.back() {
                if (MAX && b <= x) || (!MAX && b >= x) {
                    self.deque.pop_back();
                } else {
                    break;
                }
            }
            self.deque.push_back((i, x));
        }
        while let Some(&(j, _)) = self.deque.front() {
            if j + w <= i {
                self.deque.pop_front();
            } else {
                break;
            }
        }
        if self.count < w {
            return None;
        }
        if self.last_nan.is_some_and(|j| j + w > i) {
            return Some(f64::NAN);
        }
        // With no NaN in the window, `x` itself is in the deque: it is not empty.
        self.deque.front().map(|&(_, v)| v)
    }
}

/// Smallest of the last `W` values, by a monotonic deque. See the [module docs](self).
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingMin};
/// // Lowest battery voltage over the last 3 samples.
/// let mut low = RollingMin::new(3);
/// let out: Vec<_> = [3.7, 3.6, 3.9, 3.8, 3.9].into_iter().map(|x| low.push(x)).collect();
/// assert_eq!(out, [None, None, Some(3.6), Some(3.6), Some(3.8)]);
/// ```
#[derive(Clone, Debug)]
pub struct RollingMin(Extremum<false>);

impl RollingMin {
    /// Over the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn new(window: usize) -> Self {
        RollingMin(Extremum::new(window))
    }
}

impl RollingAggregate for RollingMin {
    fn push(&mut self, x: f64) -> Option<f64> {
        self.0.push(x)
    }

    fn window(&self) -> usize {
        self.0.window
    }
}

/// Largest of the last `W` values, by a monotonic deque. See the [module docs](self).
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingMax};
/// // Peak vibration amplitude over the last 2 samples.
/// let mut peak = RollingMax::new(2);
/// let out: Vec<_> = [0.2, 0.9, 0.1, 0.3].into_iter().map(|x| peak.push(x)).collect();
/// assert_eq!(out, [None, Some(0.9), Some(0.9), Some(0.3)]);
/// ```
#[derive(Clone, Debug)]
pub struct RollingMax(Extremum<true>);

impl RollingMax {
    /// Over the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn new(window: usize) -> Self {
        RollingMax(Extremum::new(window))
    }
}

impl RollingAggregate for RollingMax {
    fn push(&mut self, x: f64) -> Option<f64> {
        self.0.push(x)
    }

    fn window(&self) -> usize {
        self.0.window
    }
}

// ---------------------------------------------------------------------------------------------
// Variance

/// Variance of the last `W` values. See the [module docs](self).
///
/// [`population`](Self::population) divides by `W`, [`sample`](Self::sample) by `W − 1`.
///
/// Kept as compensated (Neumaier) sums of `x − K` and `(x − K)²`, where the shift `K` is the
/// window's mean, recomputed with the sums every `W` values (a two-pass computation, O(1)
/// amortised), and sooner if the mean has moved so far from `K` that precision would suffer.
/// Shifting avoids the cancellation of the textbook `Σx² − (Σx)²/n` when the mean
/// is large beside the spread, and compensation lets a huge outlier (a sensor glitch) leave the
/// window without a trace, which plain running sums or Welford's update do not.
///
/// ```
/// use iotstream::ops::rolling::{RollingAggregate, RollingVariance};
/// // How steady is a motor's current draw over the last 4 samples?
/// let mut spread = RollingVariance::population(4);
/// let out: Vec<_> = [2.0, 4.0, 4.0, 6.0, 6.0].into_iter().map(|x| spread.push(x)).collect();
/// assert_eq!(out, [None, None, None, Some(2.0), Some(1.0)]);
/// let mut sample = RollingVariance::sample(4);
/// let last = [2.0, 4.0, 4.0, 6.0].into_iter().map(|x| sample.push(x)).last().unwrap();
/// assert_eq!(last, Some(8.0 / 3.0));
/// ```
#[derive(Clone, Debug)]
pub struct RollingVariance {
    ring: Ring,
    /// The shift `K`.
    shift: f64,
    /// Finite values in the window.
    n: usize,
    /// Σ (x − K) over the finite values in the window.
    s1: Compensated,
    /// Σ (x − K)² over the finite values in the window.
    s2: Compensated,
    other: NonFinite,
    since_resync: usize,
    divisor: f64,
}

impl RollingVariance {
    fn with_divisor(window: usize, divisor: f64) -> Self {
        check_window(window);
        RollingVariance {
            ring: Ring::new(window),
            shift: 0.0,
            n: 0,
            s1: Compensated::default(),
            s2: Compensated::default(),
            other: NonFinite::default(),
            since_resync: 0,
            divisor,
        }
    }

    /// Population variance Σ(x − mean)² / `window` of the last `window` values.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn population(window: usize) -> Self {
        Self::with_divisor(window, window as f64)
    }

    /// Sample variance Σ(x − mean)² / (`window` − 1) of the last `window` values: NaN when
    /// `window` is 1.
    ///
    /// # Panics
    ///
    /// If `window` is 0.
    pub fn sample(window: usize) -> Self {
        Self::with_divisor(window, (window as f64) - 1.0)
    }

    fn add(&mut self, x: f64) {
        if self.n == 0 {
            // A fresh start: shift by the first value.
            (self.shift, self.s1, self.s2) = (x, Compensated::default(), Compensated::default());
        }
        let d = x - self.shift;
        self.s1.add(d);
        self.s2.add(d * d);
        self.n += 1;
    }

    fn remove(&mut self, x: f64) {
        // The same `x` and shift give the same `d` as when it was added.
        let d = x - self.shift;
        self.s1.add(-d);
        self.s2.add(-(d * d));
        self.n -= 1;
    }

    /// Recentres on the window's mean and recomputes the sums from the window.
    fn resync(&mut self) {
        let values = self.ring.values();
        let n = values.iter().filter(|v| v.is_finite()).count();
        self.n = 0;
        self.s1 = Compensated::default();
        self.s2 = Compensated::default();
        if n == 0 {
            return;
        }
        // The mean as Σ (v / n), which stays within the largest |v|: the plain sum of large
        // values overflows (1e308 four times), and an infinite shift made every deviation
        // infinite, so the variance of equal values was ∞ instead of 0.
        let mut mean = Compensated::default();
        for &v in values.iter().filter(|v| v.is_finite()) {
            mean.add(v / n as f64);
        }
        self.shift = mean.value();
        for &v in self.ring.values().iter().filter(|v| v.is_finite()) {
            let d = v - self.shift;
            self.s1.add(d);
            self.s2.add(d * d);
        }
        self.n = n;
    }

    /// True when the shift is so far from the window's mean (after an outlier left, say) that
    /// `s2 − s1²/n` would lose more than about 1e-10 of the result to cancellation. Rare: each
    /// value leaving the window can trigger it at most once, and recentring stops it.
    fn stale(&self) -> bool {
        if self.n == 0 {
            return false;
        }
        let n = self.n as f64;
        let s1 = self.s1.value();
        let offset = s1 * s1 / n;
        let mean = self.shift + s1 / n;
        // Below ε·mean²·n, m2 is rounding noise of the data itself: do not chase it.
        let floor = f64::EPSILON * mean * mean * n;
        offset > 1e6 * (self.s2.value() - offset).max(floor)
    }

    /// Σ (x − mean)² over the finite values in the window.
    fn m2(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let s1 = self.s1.value();
        let m2 = self.s2.value() - s1 * s1 / self.n as f64;
        if m2.is_nan() {
            // Finite values whose squared deviations overflow (inf − inf): the variance is
            // beyond f64, not 0 (which `max(0.0)` would make of NaN).
            return f64::INFINITY;
        }
        m2.max(0.0)
    }
}

impl RollingAggregate for RollingVariance {
    fn push(&mut self, x: f64) -> Option<f64> {
        if let Some(old) = self.ring.push(x) {
            if !self.other.add(old, -1) {
                self.remove(old);
            }
        }
        if !self.other.add(x, 1) {
            self.add(x);
        }
        self.since_resync += 1;
        // Also after finite values overflowed a sum (it is then ±inf or NaN), so that the
        // state recovers as soon as they leave the window.
        let overflowed = !(self.s1.is_finite() && self.s2.is_finite());
        if self.since_resync == self.ring.cap || overflowed || self.stale() {
            self.since_resync = 0;
            self.resync();
        }
        if !self.ring.is_full() {
            return None;
        }
        if self.other.any() {
            return Some(f64::NAN);
        }
        Some(self.m2() / self.divisor)
    }

    fn window(&self) -> usize {
        self.ring.cap
    }
}

/// The square root of another aggregate (standard deviation from variance).
struct Sqrt<A>(A);

impl<A: RollingAggregate> RollingAggregate for Sqrt<A> {
    fn push(&mut self, x: f64) -> Option<f64> {
        self.0.push(x).map(f64::sqrt)
    }

    fn window(&self) -> usize {
        self.0.window()
    }
}

// ---------------------------------------------------------------------------------------------
// The operators

/// One input, one output, `aggregate.push(value(v))` for each element `v`, emitted as
/// `emit(v, aggregate)` once the window is full.
struct RollingAgent<T, O, A, V, E> {
    input: Input<T>,
    out: Stream<O>,
    aggregate: A,
    value: V,
    emit: E,
}

impl<T, O, A, V, E> Agent for RollingAgent<T, O, A, V, E>
where
    T: Element,
    O: Element,
    A: RollingAggregate,
    V: Fn(&T) -> f64 + Send + 'static,
    E: Fn(&T, f64) -> O + Send + 'static,
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
        let out = outputs.vec(&self.out);
        for x in new {
            if let Some(v) = self.aggregate.push((self.value)(x)) {
                out.push((self.emit)(x, v));
            }
        }
        inputs.consume(&self.input, n);
        Ok(())
    }
}

impl Graph {
    /// Adds the agent of every rolling operator: the aggregate of `value(v)` over the last
    /// elements, emitted as `emit(v, aggregate)`.
    fn rolling_agent<T, O, A, V, E>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        aggregate: A,
        value: V,
        emit: E,
    ) -> Stream<O>
    where
        T: Element,
        O: Element,
        A: RollingAggregate,
        V: Fn(&T) -> f64 + Send + 'static,
        E: Fn(&T, f64) -> O + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<O>("out");
            let agent = RollingAgent {
                input,
                out,
                aggregate,
                value,
                emit,
            };
            (agent, (input, out))
        });
        self.connect(stream, &input);
        out
    }

    /// [`Graph::rolling_agent`] with the struct that computes `aggregate` over `window` values;
    /// a window of 0 is a graph problem naming the agent.
    fn rolling_named<T, O, V, E>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        window: usize,
        aggregate: Rolling,
        value: V,
        emit: E,
    ) -> Stream<O>
    where
        T: Element,
        O: Element,
        V: Fn(&T) -> f64 + Send + 'static,
        E: Fn(&T, f64) -> O + Send + 'static,
    {
        if window == 0 {
            self.problem(format!(
                "agent '{name}': rolling window must be at least 1 (got 0)"
            ));
        }
        let w = window.max(1);
        // One arm runs: each moves `value` and `emit` into its own monomorphic agent.
        match aggregate {
            Rolling::Count => self.rolling_agent(name, stream, RollingCount::new(w), value, emit),
            Rolling::Sum => self.rolling_agent(name, stream, RollingSum::new(w), value, emit),
            Rolling::Mean => self.rolling_agent(name, stream, RollingMean::new(w), value, emit),
            Rolling::Min => self.rolling_agent(name, stream, RollingMin::new(w), value, emit),
            Rolling::Max => self.rolling_agent(name, stream, RollingMax::new(w), value, emit),
            Rolling::Variance => {
                let a = RollingVariance::population(w);
                self.rolling_agent(name, stream, a, value, emit)
            }
            Rolling::SampleVariance => {
                let a = RollingVariance::sample(w);
                self.rolling_agent(name, stream, a, value, emit)
            }
            Rolling::StdDev => {
                let a = Sqrt(RollingVariance::population(w));
                self.rolling_agent(name, stream, a, value, emit)
            }
            Rolling::SampleStdDev => {
                let a = Sqrt(RollingVariance::sample(w));
                self.rolling_agent(name, stream, a, value, emit)
            }
        }
    }

    /// The `aggregate` of the last `window` elements of `stream`, one value per element once
    /// `window` elements have arrived, in O(1) amortised time per element. Aligned like
    /// [`Graph::map_window`] with size `window` and step 1. See the [module docs](self).
    ///
    /// `window` 0 is reported when the application is built, naming the agent.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::Rolling;
    /// // A vibration sensor: smoothed level and peak over the last 4 samples.
    /// let mut g = Graph::new("vibration_monitor");
    /// let accel = g.source_iter("accelerometer", [0.25, 0.5, 0.25, 1.0, 2.0, 0.25]);
    /// let level = g.rolling("level", &accel, 4, Rolling::Mean);
    /// let peak = g.rolling("peak", &accel, 4, Rolling::Max);
    /// let level = g.collect("level_out", &level);
    /// let peak = g.collect("peak_out", &peak);
    /// g.run().unwrap();
    /// assert_eq!(level.values(), [0.5, 0.9375, 0.875]);
    /// assert_eq!(peak.values(), [1.0, 2.0, 2.0]);
    /// ```
    ///
    /// Integer streams work too (any [`RollingValue`]: every primitive number, and `bool`):
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::Rolling;
    /// let mut g = Graph::new("door_counter");
    /// let entries = g.source_iter("entries_per_minute", [3u64, 0, 5, 2]);
    /// let last_3_min = g.rolling("visitors_3_min", &entries, 3, Rolling::Sum);
    /// let out = g.collect("out", &last_3_min);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [8.0, 7.0]);
    /// ```
    pub fn rolling<T: RollingValue>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        window: usize,
        aggregate: Rolling,
    ) -> Stream<f64> {
        self.rolling_named(
            name,
            stream,
            window,
            aggregate,
            |x: &T| x.to_f64(),
            |_: &T, a| a,
        )
    }

    /// Like [`Graph::rolling`], with any [`RollingAggregate`]: one of this module's structs
    /// (configured as you like) or your own. Emits `aggregate.push(x)` for each element where
    /// it is `Some`.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::{RollingAggregate, RollingMax, RollingMin};
    ///
    /// /// Peak-to-peak amplitude of the last `W` samples.
    /// struct PeakToPeak(RollingMin, RollingMax);
    ///
    /// impl RollingAggregate for PeakToPeak {
    ///     fn push(&mut self, x: f64) -> Option<f64> {
    ///         let (lo, hi) = (self.0.push(x), self.1.push(x));
    ///         Some(hi? - lo?)
    ///     }
    ///     fn window(&self) -> usize {
    ///         self.0.window()
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("vibration");
    /// let accel = g.source_iter("accelerometer", [0.5, -0.5, 0.25, 1.0]);
    /// let p2p = g.rolling_with("peak_to_peak", &accel, PeakToPeak(RollingMin::new(3), RollingMax::new(3)));
    /// let out = g.collect("out", &p2p);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [1.0, 1.5]);
    /// ```
    pub fn rolling_with<T, A>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        aggregate: A,
    ) -> Stream<f64>
    where
        T: RollingValue,
        A: RollingAggregate,
    {
        self.rolling_agent(name, stream, aggregate, |x: &T| x.to_f64(), |_: &T, a| a)
    }

    /// The `aggregate` of the values of the last `window` elements of a `(t, v)` stream, as
    /// `(t, aggregate)` with the timestamp `t` of the element that completed the window: one
    /// pair per element once `window` elements have arrived. The window counts elements, not
    /// time; timestamps are carried as they are (not checked for order). Otherwise exactly
    /// [`Graph::rolling`]. See the [module docs](self).
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::Rolling;
    /// // A seismometer's counts (integers) at sample times in ms: short-term energy, timed.
    /// let mut g = Graph::new("station");
    /// let counts = g.source_iter("counts", [(1000u64, 3i32), (1010, -4), (1020, 12), (1030, 0)]);
    /// let energy = g.map("square", &counts, |&(t, c): &(u64, i32)| (t, i64::from(c) * i64::from(c)));
    /// let sta = g.rolling_timed("sta", &energy, 2, Rolling::Mean);
    /// let out = g.collect("out", &sta);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [(1010, 12.5), (1020, 80.0), (1030, 72.0)]);
    /// ```
    pub fn rolling_timed<V: RollingValue>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        window: usize,
        aggregate: Rolling,
    ) -> Stream<(u64, f64)> {
        self.rolling_named(
            name,
            stream,
            window,
            aggregate,
            |x: &(u64, V)| x.1.to_f64(),
            |x: &(u64, V), a| (x.0, a),
        )
    }

    /// Like [`Graph::rolling_timed`], with any [`RollingAggregate`]: emits `(t, a)` for each
    /// element `(t, v)` where `aggregate.push(v)` is `Some(a)`.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::RollingMin;
    /// // Lowest battery voltage over the last 3 reports, with the time of the newest.
    /// let mut g = Graph::new("battery");
    /// let volts = g.source_iter("volts", [(60u64, 3.7f32), (120, 3.5), (180, 3.75), (240, 3.75)]);
    /// let low = g.rolling_timed_with("low", &volts, RollingMin::new(3));
    /// let out = g.collect("out", &low);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [(180, 3.5), (240, 3.5)]);
    /// ```
    pub fn rolling_timed_with<V, A>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        aggregate: A,
    ) -> Stream<(u64, f64)>
    where
        V: RollingValue,
        A: RollingAggregate,
    {
        self.rolling_agent(
            name,
            stream,
            aggregate,
            |x: &(u64, V)| x.1.to_f64(),
            |x: &(u64, V), a| (x.0, a),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Per key

/// A fresh aggregate of `kind` over `window` values, boxed: one per key.
fn boxed(kind: Rolling, window: usize) -> Box<dyn RollingAggregate> {
    let w = window.max(1);
    match kind {
        Rolling::Count => Box::new(RollingCount::new(w)),
        Rolling::Sum => Box::new(RollingSum::new(w)),
        Rolling::Mean => Box::new(RollingMean::new(w)),
        Rolling::Min => Box::new(RollingMin::new(w)),
        Rolling::Max => Box::new(RollingMax::new(w)),
        Rolling::Variance => Box::new(RollingVariance::population(w)),
        Rolling::SampleVariance => Box::new(RollingVariance::sample(w)),
        Rolling::StdDev => Box::new(Sqrt(RollingVariance::population(w))),
        Rolling::SampleStdDev => Box::new(Sqrt(RollingVariance::sample(w))),
    }
}

impl Graph {
    /// [`Graph::rolling`] per key: the `aggregate` of the last `window` values of each key
    /// (`key(element)`, `value(element)`), emitted as `(key, aggregate)` for each element once
    /// its key has had `window` of them. At most `max_keys` keys are kept: a new key beyond
    /// that evicts the least recently seen one (counted in the returned
    /// [`KeyedMap::evicted`](crate::ops::event_window::KeyedMap::evicted)); a key that comes
    /// back starts afresh.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::Rolling;
    /// // Mean of the last 2 readings of each sensor.
    /// let mut g = Graph::new("sensors");
    /// let readings = g.source_iter("readings", [('a', 1.0), ('b', 10.0), ('a', 3.0), ('b', 30.0), ('a', 5.0)]);
    /// let means = g.keyed_rolling(
    ///     "means", &readings, 1_000,
    ///     |r: &(char, f64)| r.0, |r: &(char, f64)| r.1,
    ///     2, Rolling::Mean,
    /// );
    /// let out = g.collect("out", &means.out);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [('a', 2.0), ('b', 20.0), ('a', 4.0)]);
    /// assert_eq!(means.evicted.get(), 0);
    /// ```
    // A key function and a value function, both plain closures: spelled out like the other
    // keyed operators.
    #[allow(clippy::too_many_arguments)]
    pub fn keyed_rolling<T, K, KF, VF>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        max_keys: usize,
        key: KF,
        value: VF,
        window: usize,
        aggregate: Rolling,
    ) -> crate::ops::event_window::KeyedMap<K, f64>
    where
        T: Element,
        K: Element + Eq + std::hash::Hash,
        KF: Fn(&T) -> K + Send + 'static,
        VF: Fn(&T) -> f64 + Send + 'static,
    {
        if window == 0 {
            self.problem(format!(
                "agent '{name}': rolling window must be at least 1 (got 0)"
            ));
        }
        self.keyed_map_with_state(
            name,
            stream,
            max_keys,
            key,
            move |_: &K| boxed(aggregate, window),
            move |agg: &mut Box<dyn RollingAggregate>, e: &T| agg.push(value(e)),
        )
    }
}
