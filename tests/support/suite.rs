//! The runner of the suites that have their own harness (`harness = false`: each scenario
//! starts processes of the test binary itself, as `app NAME ARGS`).
//!
//! Scenarios run one after the other, since most of them measure how processes behave on a
//! machine they have to themselves (drains, stalls, kills). A scenario that only waits (for a
//! timeout, using no CPU and nothing another scenario uses) runs *beside* them, on a thread of
//! its own, so that its wait does not lengthen the suite.
//!
//! `cargo test --test NAME -- FILTER` runs the scenarios whose name contains `FILTER`; a filter
//! that matches none is a failure, as is a suite in which nothing ran.

use std::time::Instant;

/// What a scenario found: nothing wrong, or what was.
pub type Outcome = Result<(), String>;

/// A scenario that only waits, run beside the others (see the [module](self) docs).
pub type Beside = (&'static str, fn() -> Outcome);

/// The filter given on the command line (the first argument not starting with `-`).
pub fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Runs `beside` on a thread of its own and `scenarios` meanwhile, one after the other (those
/// whose name contains `filter`), printing `test NAME ... ok (T s)` or `... FAILED` with why,
/// then `N passed, M failed`. True if every scenario run passed and at least one ran.
pub fn run<F: Fn() -> Outcome>(
    scenarios: &[(&str, F)],
    beside: &[Beside],
    filter: Option<&str>,
) -> bool {
    let chosen = |name: &str| filter.is_none_or(|f| name.contains(f));
    let waiting: Vec<Beside> = beside.iter().copied().filter(|(n, _)| chosen(n)).collect();
    let side = std::thread::Builder::new()
        .name("scenarios beside".into())
        .spawn(move || {
            waiting
                .into_iter()
                .map(|(name, f)| (name, timed(f)))
                .collect::<Vec<_>>()
        })
        .expect("start the thread of the scenarios that only wait");
    let (mut passed, mut failed) = (0, 0);
    let mut report = |name: &str, (outcome, seconds): (Outcome, f64)| match outcome {
        Ok(()) => {
            passed += 1;
            println!("test {name} ... ok ({seconds:.1} s)");
        }
        Err(e) => {
            failed += 1;
            println!("test {name} ... FAILED ({seconds:.1} s)\n{e}");
        }
    };
    for (name, f) in scenarios.iter().filter(|(n, _)| chosen(n)) {
        report(name, timed(f));
    }
    for (name, result) in side.join().expect("the scenarios beside ran") {
        report(name, result);
    }
    if passed + failed == 0 {
        println!("no scenario matched the filter");
    }
    println!("{passed} passed, {failed} failed");
    failed == 0 && passed > 0
}

/// Runs `f`, a panic being a failure; with the seconds it took.
fn timed(f: impl Fn() -> Outcome) -> (Outcome, f64) {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(match p.downcast_ref::<String>() {
            Some(s) => format!("panicked: {s}"),
            None => match p.downcast_ref::<&str>() {
                Some(s) => format!("panicked: {s}"),
                None => "panicked".to_string(),
            },
        })
    });
    (outcome, started.elapsed().as_secs_f64())
}
