//! Ctrl-C, SIGTERM and SIGHUP: one handler for the whole process, and the runs it serves.
//!
//! # How a signal is handled
//!
//! The first run that asks for signals ([`register`]) installs one handler for SIGINT,
//! SIGTERM and SIGHUP (a hang-up: the terminal closed, the SSH session dropped), for the rest
//! of the process's life, and a thread (`iotstream signals`) that takes each signal from it and
//! hands it to the **active runs**: those registered and not yet dropped. Each run says what a
//! signal does to it ([`OnSignal`]):
//!
//! - its **first** signal starts its drain (sources stop, data in flight is processed, sinks
//!   flush, the run ends normally);
//! - a **later** one, while it is still draining, ends at once: a one-process run, a starter
//!   and a member started by a starter run their cleanup (the starter kills its children and
//!   removes its rings) and the process exits with status 128 + the signal (130 for SIGINT,
//!   143 for SIGTERM, 129 for SIGHUP), as the `iotstream` launcher does; a member supervised
//!   by the launcher ignores it (its launcher decides when to kill it); the launcher's own
//!   supervisor is told and stops everything at once.
//!
//! A member ignores SIGINT and SIGHUP while it runs: a terminal's Ctrl-C and hang-up reach the
//! whole process group, and only its starter's (or launcher's) request may drain it.
//!
//! SIGHUP is left alone if it was ignored when the handler was installed (the program was
//! started under `nohup`, which asks for exactly that): a hang-up then changes nothing.
//!
//! With **no run active** (before the first, between runs, after the last) a signal does what
//! it did before the handler was installed: the default action (the process ends: a program
//! that finished its run and does other work is still stopped by Ctrl-C), or nothing if the
//! signal was ignored then (a child started with SIGINT ignored). A handler of the program's
//! own installed before ours is still called (signal-hook chains it) and nothing else happens.
//!
//! Why one handler: signal-hook cannot give a signal its default action back once a handler
//! is installed (unregistering leaves the signal ignored), so a handler per run left the
//! process deaf to Ctrl-C and SIGTERM once its first run was over.
//!
//! [`Graph::handle_signals`](crate::Graph::handle_signals)`(false)` keeps a program that owns
//! its signals (an embedder) out of all this: its starter or one-process run registers nothing.
//! The [`Harness`](crate::Harness) never does.

use std::sync::{Arc, Mutex, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::Error;

/// What a signal does to one run (see the [module](self) documentation).
pub(crate) struct OnSignal {
    /// The run drains on a terminal's signals too, SIGINT and SIGHUP (false: they are
    /// swallowed while it is active, as in a member process, which only its starter's or
    /// launcher's request drains).
    pub terminal: bool,
    /// The first signal: start the drain. Called with the signal's number.
    pub first: Box<dyn Fn(i32) + Send + Sync>,
    /// Every later signal.
    pub again: Again,
    /// The drain's bound: a drain the first signal started that is still under way this long
    /// after it ends the process as a later signal would (every active run's [`Again::Exit`]
    /// cleanup), with an error saying so and exit status 1, as the launcher does at its
    /// `drain_timeout_ms`. `None`: unbounded here (a member: its starter or launcher bounds it).
    pub bound: Option<DrainBound>,
}

/// When a drain that does not end ends the process ([`OnSignal::bound`]).
#[derive(Clone)]
pub(crate) struct DrainBound {
    /// The bound the user set (`IOTSTREAM_DRAIN_TIMEOUT_MS`), which the error names.
    pub bound: std::time::Duration,
    /// Waited beyond it before the process ends (a starter's supervisor acts at the bound
    /// itself, and its account of what held the drain up comes first).
    pub grace: std::time::Duration,
    /// Whether the drain is still under way (agents of this process not finished): a run
    /// whose drain ended but which the program has not joined yet is left alone.
    pub draining: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// What a run's second (and later) signal does.
pub(crate) enum Again {
    /// Nothing (a member supervised by the launcher: the launcher decides when to kill).
    Nothing,
    /// The process ends at once with status 128 + the signal, after this cleanup (and every
    /// other active run's cleanup).
    Exit(Box<dyn Fn() + Send + Sync>),
    /// This is called with the signal's number (the launcher's supervisor stops at once and
    /// ends the run itself).
    Call(Box<dyn Fn(i32) + Send + Sync>),
}

/// An active run: its actions apply while this lives; dropped, the run no longer takes
/// signals (an action already under way still completes).
pub(crate) struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
        runs.entries.retain(|e| e.id != self.id);
    }
}

/// Makes `actions` the response of this run to SIGINT, SIGTERM and SIGHUP until the returned
/// registration is dropped. The first call installs the process's handler and its thread.
pub(crate) fn register(actions: OnSignal) -> Result<Registration, Error> {
    install().map_err(|detail| Error::Runtime { detail })?;
    let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
    runs.next_id += 1;
    let id = runs.next_id;
    runs.entries.push(Entry {
        id,
        terminal: actions.terminal,
        seen: 0,
        first: Arc::from(actions.first),
        bound: actions.bound,
        again: match actions.again {
            Again::Nothing => Later::Nothing,
            Again::Exit(f) => Later::Exit(Arc::from(f)),
            Again::Call(f) => Later::Call(Arc::from(f)),
        },
    });
    Ok(Registration { id })
}

/// One active run.
struct Entry {
    id: u64,
    /// It takes SIGINT and SIGHUP ([`OnSignal::terminal`]).
    terminal: bool,
    /// Signals it took so far.
    seen: u32,
    first: Arc<dyn Fn(i32) + Send + Sync>,
    /// [`OnSignal::bound`].
    bound: Option<DrainBound>,
    again: Later,
}

/// [`Again`], shareable: actions are called outside the registry's lock, so that a run may
/// drop its registration while one of its actions runs.
enum Later {
    Nothing,
    Exit(Arc<dyn Fn() + Send + Sync>),
    Call(Arc<dyn Fn(i32) + Send + Sync>),
}

struct Runs {
    next_id: u64,
    entries: Vec<Entry>,
}

static RUNS: Mutex<Runs> = Mutex::new(Runs {
    next_id: 0,
    entries: Vec::new(),
});

/// What a signal's disposition was before our handler was installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Before {
    /// `SIG_DFL`: SIGINT, SIGTERM and SIGHUP end the process.
    Default,
    /// `SIG_IGN`.
    Ignored,
    /// A handler of the program's own (signal-hook calls it before our action).
    Handler,
}

/// The signals the handler takes, in the order of [`Dispositions`].
const HANDLED: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// What SIGINT, SIGTERM and SIGHUP did before our handler was installed (in [`HANDLED`]'s
/// order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dispositions([Before; 3]);

impl Dispositions {
    /// What `sig` did before our handler (the default action for a signal not in
    /// [`HANDLED`], which is never delivered to us).
    fn of(self, sig: i32) -> Before {
        match HANDLED.iter().position(|&s| s == sig) {
            Some(i) => self.0[i],
            None => Before::Default,
        }
    }
}

/// The dispositions from before our handler, once it is installed.
static INSTALLED: OnceLock<Result<Dispositions, String>> = OnceLock::new();

/// Installs the handler and its thread, once per process. SIGHUP is not taken if it was
/// ignored then (`nohup`): it stays ignored.
fn install() -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            let before = Dispositions([
                disposition(SIGINT)?,
                disposition(SIGTERM)?,
                disposition(SIGHUP)?,
            ]);
            let taken: Vec<i32> = HANDLED
                .into_iter()
                .filter(|&s| s != SIGHUP || before.of(SIGHUP) != Before::Ignored)
                .collect();
            let mut signals = signal_hook::iterator::Signals::new(&taken)
                .map_err(|e| format!("cannot install the SIGINT/SIGTERM/SIGHUP handler: {e}"))?;
            std::thread::Builder::new()
                .name("iotstream signals".into())
                .spawn(move || {
                    // Never ends: the handler stays for the process's life.
                    for sig in signals.forever() {
                        deliver(sig, before);
                    }
                })
                .map_err(|e| format!("cannot start the signal thread: {e}"))?;
            Ok(before)
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// The current disposition of `sig`.
fn disposition(sig: i32) -> Result<Before, String> {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a query only (no new action); `old` has room for the answer.
    if unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) } == -1 {
        return Err(format!(
            "cannot read the disposition of signal {sig}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: filled by the kernel.
    let handler = unsafe { old.assume_init() }.sa_sigaction;
    Ok(match handler {
        libc::SIG_DFL => Before::Default,
        libc::SIG_IGN => Before::Ignored,
        _ => Before::Handler,
    })
}

/// What one signal does, decided under the registry's lock and done outside it.
enum Step {
    /// No run is active: what the signal did before the handler was installed.
    Before(Before),
    /// Call these (first and later actions of the active runs), and watch the drains just
    /// started that have a bound (the run's id, its bound).
    Call(Vec<Arc<dyn Fn(i32) + Send + Sync>>, Vec<(u64, DrainBound)>),
    /// Run these cleanups, then end the process with 128 + the signal.
    Exit(Vec<Arc<dyn Fn() + Send + Sync>>),
}

/// Decides what signal `sig` does to the active runs `entries` (counting it in each run that
/// takes it), `before` being the dispositions from before the handler.
fn decide(sig: i32, entries: &mut [Entry], before: Dispositions) -> Step {
    if entries.is_empty() {
        return Step::Before(before.of(sig));
    }
    // A terminal's signals, sent to its whole foreground process group.
    let from_terminal = sig == SIGINT || sig == SIGHUP;
    let takes = |e: &Entry| !from_terminal || e.terminal;
    let ends = entries
        .iter()
        .any(|e| takes(e) && e.seen > 0 && matches!(e.again, Later::Exit(_)));
    if ends {
        // The process ends: every run's cleanup, whatever its own count.
        return Step::Exit(
            entries
                .iter()
                .filter_map(|e| match &e.again {
                    Later::Exit(f) => Some(Arc::clone(f)),
                    _ => None,
                })
                .collect(),
        );
    }
    let mut calls = Vec::new();
    let mut bounded = Vec::new();
    for e in entries.iter_mut().filter(|e| takes(e)) {
        e.seen = e.seen.saturating_add(1);
        if e.seen == 1 {
            calls.push(Arc::clone(&e.first));
            if let Some(bound) = &e.bound {
                bounded.push((e.id, bound.clone()));
            }
        } else if let Later::Call(f) = &e.again {
            calls.push(Arc::clone(f));
        }
    }
    Step::Call(calls, bounded)
}

/// Waits `bound` (and its grace), then, if run `id` is still active and its drain did not end,
/// ends the process as a later signal would: every active run's cleanup, then exit status 1.
fn watch_drain(id: u64, bound: DrainBound) {
    let spawned = std::thread::Builder::new()
        .name("iotstream drain bound".into())
        .spawn(move || {
            std::thread::sleep(bound.bound + bound.grace);
            let cleanups: Vec<Arc<dyn Fn() + Send + Sync>> = {
                let runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
                if !runs.entries.iter().any(|e| e.id == id) || !(bound.draining)() {
                    return;
                }
                runs.entries
                    .iter()
                    .filter_map(|e| match &e.again {
                        Later::Exit(f) => Some(Arc::clone(f)),
                        _ => None,
                    })
                    .collect()
            };
            tracing::error!(
                "the drain did not end within {} ms ({}): stopping at once; what was still in \
                 flight is lost",
                bound.bound.as_millis(),
                super::ENV_DRAIN_TIMEOUT_MS
            );
            for cleanup in cleanups {
                cleanup();
            }
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!("the drain is not bounded: cannot start a thread to bound it: {e}");
    }
}

/// Hands signal `sig` to the active runs (see the [module](self) documentation).
fn deliver(sig: i32, before: Dispositions) {
    let step = {
        let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
        decide(sig, &mut runs.entries, before)
    };
    match step {
        Step::Before(Before::Default) => {
            // Ends the process as the signal's default action would (the status shows the
            // signal); returns only if that failed.
            if let Err(e) = signal_hook::low_level::emulate_default_handler(sig) {
                tracing::error!("signal {sig}: cannot take its default action: {e}");
            }
        }
        Step::Before(Before::Ignored | Before::Handler) => {}
        Step::Call(calls, bounded) => {
            for call in calls {
                call(sig);
            }
            for (id, bound) in bounded {
                watch_drain(id, bound);
            }
        }
        Step::Exit(cleanups) => {
            tracing::warn!("signal {sig} again: stopping at once");
            for cleanup in cleanups {
                cleanup();
            }
            std::process::exit(128 + sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn entry(id: u64, terminal: bool, again: Later, hits: &Arc<AtomicU32>) -> Entry {
        let hits = Arc::clone(hits);
        Entry {
            id,
            terminal,
            seen: 0,
            first: Arc::new(move |_| {
                hits.fetch_add(1, Ordering::SeqCst);
            }),
            bound: None,
            again,
        }
    }

    fn run(step: Step) -> &'static str {
        match step {
            Step::Before(Before::Default) => "default",
            Step::Before(Before::Ignored) => "ignored",
            Step::Before(Before::Handler) => "handler",
            Step::Call(calls, _) => {
                for c in &calls {
                    c(SIGTERM);
                }
                "calls"
            }
            Step::Exit(cleanups) => {
                for c in &cleanups {
                    c();
                }
                "exit"
            }
        }
    }

    #[test]
    fn with_no_run_a_signal_does_what_it_did_before() {
        let before = Dispositions([Before::Ignored, Before::Default, Before::Handler]);
        assert_eq!(run(decide(SIGINT, &mut [], before)), "ignored");
        assert_eq!(run(decide(SIGTERM, &mut [], before)), "default");
        assert_eq!(run(decide(SIGHUP, &mut [], before)), "handler");
        let before = Dispositions([Before::Handler, Before::Handler, Before::Default]);
        assert_eq!(run(decide(SIGINT, &mut [], before)), "handler");
        assert_eq!(run(decide(SIGHUP, &mut [], before)), "default");
    }

    #[test]
    fn the_first_signal_drains_every_run_and_the_second_ends_the_process() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let cleaned = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&cleaned);
        let cleanup: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let mut runs = vec![
            entry(1, true, Later::Exit(Arc::clone(&cleanup)), &hits),
            entry(2, true, Later::Exit(cleanup), &hits),
        ];
        assert_eq!(run(decide(SIGINT, &mut runs, before)), "calls");
        assert_eq!(hits.load(Ordering::SeqCst), 2, "each run's first action");
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "exit");
        assert_eq!(cleaned.load(Ordering::SeqCst), 2, "each run's cleanup");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_run_registered_after_the_first_signal_gets_its_own_first() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let mut runs = vec![entry(1, true, Later::Nothing, &hits)];
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "calls");
        runs.push(entry(2, true, Later::Nothing, &hits));
        // Run 1 ignores its later signals; run 2 drains on this one.
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "calls");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!((runs[0].seen, runs[1].seen), (2, 1));
    }

    #[test]
    fn a_hang_up_drains_as_sigterm_does_and_a_second_ends_the_process() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let mut runs = vec![entry(1, true, Later::Exit(Arc::new(|| {})), &hits)];
        assert_eq!(run(decide(SIGHUP, &mut runs, before)), "calls");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the drain started");
        assert_eq!(run(decide(SIGHUP, &mut runs, before)), "exit");
    }

    #[test]
    fn a_member_swallows_a_hang_up() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let mut runs = vec![entry(1, false, Later::Exit(Arc::new(|| {})), &hits)];
        for _ in 0..3 {
            assert_eq!(run(decide(SIGHUP, &mut runs, before)), "calls");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "SIGHUP swallowed");
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "calls");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_member_swallows_sigint_and_drains_on_sigterm() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let mut runs = vec![entry(1, false, Later::Exit(Arc::new(|| {})), &hits)];
        for _ in 0..3 {
            assert_eq!(run(decide(SIGINT, &mut runs, before)), "calls");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "SIGINT swallowed");
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "calls");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(run(decide(SIGINT, &mut runs, before)), "calls");
        assert_eq!(run(decide(SIGTERM, &mut runs, before)), "exit");
    }

    #[test]
    fn a_launcher_hears_every_signal() {
        let before = Dispositions([Before::Default; 3]);
        let hits = Arc::new(AtomicU32::new(0));
        let h = Arc::clone(&hits);
        let mut runs = vec![entry(
            1,
            true,
            Later::Call(Arc::new(move |_| {
                h.fetch_add(10, Ordering::SeqCst);
            })),
            &hits,
        )];
        for _ in 0..3 {
            assert_eq!(run(decide(SIGINT, &mut runs, before)), "calls");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 21);
    }
}
