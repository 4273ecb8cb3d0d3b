//! What the transport's unit tests share: a run of no agents for the helper threads under test
//! (feeders, watchers, TCP link threads).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::mailbox::{FailureHook, FeederState, Linger, Run, RunContext};
use crate::error::Error;

/// A run for helper threads under test: never quiescent, over once it fails or is ended; the
/// failure hooks run at the failure, as in a real run. It can be made to stop (the application
/// asked to stop) without being over, and to end normally (over without stopping). It records
/// the lingers its links register (a real run waits on them after a normal end; a test looks).
#[derive(Default)]
pub(crate) struct TestRun {
    failed: Mutex<Option<String>>,
    lingers: Mutex<Vec<Arc<Linger>>>,
    hooks: Mutex<Vec<FailureHook>>,
    stop: AtomicBool,
    ended: AtomicBool,
    finished: AtomicUsize,
    restarted: AtomicBool,
}

impl RunContext for TestRun {
    fn feeder(&self, label: String) -> Arc<FeederState> {
        Arc::new(FeederState::new(label))
    }
    fn set_blocked(&self, feeder: &FeederState, blocked: bool) {
        feeder.blocked.store(blocked, Ordering::SeqCst);
    }
    fn finished(&self, _feeder: &FeederState) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    fn fail(&self, e: Error) {
        let mut failed = self.failed.lock().unwrap();
        if failed.is_none() {
            *failed = Some(e.to_string());
            drop(failed);
            for hook in self.hooks.lock().unwrap().iter() {
                hook();
            }
        }
    }
    fn on_failure(&self, hook: FailureHook) {
        self.hooks.lock().unwrap().push(hook);
    }
    fn stopping(&self) -> bool {
        self.failed.lock().unwrap().is_some() || self.stop.load(Ordering::SeqCst)
    }
    fn is_over(&self) -> bool {
        self.failed.lock().unwrap().is_some() || self.ended.load(Ordering::SeqCst)
    }
    fn failed(&self) -> bool {
        self.failed.lock().unwrap().is_some()
    }
    fn peers_may_restart(&self) -> bool {
        false
    }
    fn restarted(&self) -> bool {
        self.restarted.load(Ordering::SeqCst)
    }
    fn linger(&self, linger: Arc<Linger>) {
        self.lingers.lock().unwrap().push(linger);
    }
}

impl TestRun {
    /// The application is asked to stop (the run goes on).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The process is one a launcher started again (see [`RunContext::restarted`]).
    pub(crate) fn set_restarted(&self) {
        self.restarted.store(true, Ordering::SeqCst);
    }

    /// The run ends normally: helper threads end.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Why the run failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap().clone()
    }

    /// The lingers registered and not released: what a real process would still wait for
    /// after a normal end.
    pub(crate) fn lingering(&self) -> Vec<String> {
        let lingers = self.lingers.lock().unwrap();
        lingers
            .iter()
            .filter(|l| !l.released())
            .map(|l| l.label.clone())
            .collect()
    }

    /// How many feeders said they were finished.
    pub(crate) fn feeders_finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

/// A fresh [`TestRun`], as links hold it.
pub(crate) fn test_run() -> Run {
    Arc::new(TestRun::default())
}
