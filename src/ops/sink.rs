//! Sinks: where streams end.
//!
//! | call | IoTPy | does |
//! |---|---|---|
//! | [`Graph::for_each`] | `sink_element` | `f(v)` for each element |
//! | [`Graph::for_each_with_state`] | `sink_element(…, state=)` | `s' = f(v, s)` |
//! | [`Graph::try_for_each`] | — | `f(v)`; an error stops the application |
//! | [`Graph::sink_list`] | `sink_list` | `f(new elements)` |
//! | [`Graph::collect`] | `stream_to_list` | keeps every element in a [`Collected`], for tests |
//! | [`Graph::to_file`] | `stream_to_file` | writes one line per element |
//! | [`Graph::to_file_with`] | `stream_to_file` | writes `format(v)` as one line per element |
//! | [`Graph::to_stdout`] | `print_stream` | prints one line per element |
//!
//! In a threaded run every agent that is not placed with others has a thread of its own, so a
//! sink that blocks on I/O holds up only itself (and, through back-pressure, its writers).

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// Every element a [`Graph::collect`] sink received, readable during and after a run.
pub struct Collected<T> {
    inner: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Collected {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Clone> Collected<T> {
    /// A copy of what was received so far.
    pub fn values(&self) -> Vec<T> {
        self.lock().clone()
    }
    /// Takes what was received so far, leaving the collection empty.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }
    /// How many elements were received (and not taken).
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// True if nothing was received (or everything was taken).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A panic elsewhere never leaves the vector half-updated: extend is the only writer.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One input, a function on each new slice, no output.
struct SliceSink<T, F> {
    input: Input<T>,
    f: F,
    finish: Option<Box<dyn FnMut() -> Result<(), AgentError> + Send>>,
}

impl<T, F> Agent for SliceSink<T, F>
where
    T: Element,
    F: FnMut(&[T]) -> Result<(), AgentError> + Send + 'static,
{
    fn step(&mut self, inputs: &mut Inputs<'_>, _: &mut Outputs<'_>) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n > 0 {
            (self.f)(new)?;
            inputs.consume(&self.input, n);
        }
        Ok(())
    }

    fn finish(&mut self, _: &mut Outputs<'_>) -> Result<(), AgentError> {
        match &mut self.finish {
            Some(f) => f(),
            None => Ok(()),
        }
    }
}

impl Graph {
    fn slice_sink<T, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        f: F,
        finish: Option<Box<dyn FnMut() -> Result<(), AgentError> + Send>>,
    ) where
        T: Element,
        F: FnMut(&[T]) -> Result<(), AgentError> + Send + 'static,
    {
        let input = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            (SliceSink { input, f, finish }, input)
        });
        self.connect(stream, &input);
    }

    /// Calls `f(new elements)` for each batch (IoTPy's `sink_list`); an error stops the
    /// application.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// use iotstream::Graph;
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&seen);
    /// let mut g = Graph::new("count");
    /// let s = g.source_iter("events", 0..100u32);
    /// g.sink_list("count", &s, move |xs: &[u32]| { counter.fetch_add(xs.len(), Ordering::Relaxed); Ok(()) });
    /// g.run().unwrap();
    /// assert_eq!(seen.load(Ordering::Relaxed), 100);
    /// ```
    pub fn sink_list<T, F>(&mut self, name: &str, stream: &Stream<T>, f: F)
    where
        T: Element,
        F: FnMut(&[T]) -> Result<(), AgentError> + Send + 'static,
    {
        self.slice_sink(name, stream, f, None);
    }

    /// Calls `f(v)` for each element (IoTPy's `sink_element`).
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("print");
    /// let s = g.source_iter("events", ["start".to_string(), "stop".into()]);
    /// g.for_each("log", &s, |e: &String| println!("event: {e}"));
    /// g.run().unwrap();
    /// ```
    pub fn for_each<T, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F)
    where
        T: Element,
        F: FnMut(&T) + Send + 'static,
    {
        self.sink_list(name, stream, move |xs: &[T]| {
            xs.iter().for_each(&mut f);
            Ok(())
        });
    }

    /// Calls `f(v)` for each element; an `Err` stops the application with an error naming this
    /// agent.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("strict");
    /// let s = g.source_iter("events", [1, 2, -1]);
    /// g.try_for_each("check", &s, |v: &i32| if *v < 0 { Err(format!("negative reading {v}")) } else { Ok(()) });
    /// let err = g.run().unwrap_err();
    /// assert!(err.to_string().contains("negative reading -1"));
    /// ```
    pub fn try_for_each<T, E, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F)
    where
        T: Element,
        E: Into<AgentError>,
        F: FnMut(&T) -> Result<(), E> + Send + 'static,
    {
        self.sink_list(name, stream, move |xs: &[T]| {
            for x in xs {
                f(x).map_err(Into::into)?;
            }
            Ok(())
        });
    }

    /// Calls `s' = f(v, s)` for each element, starting from `state`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use iotstream::Graph;
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let sink_log = Arc::clone(&log);
    /// let mut g = Graph::new("numbered");
    /// let s = g.source_iter("letters", ['a', 'b']);
    /// g.for_each_with_state("number", &s, 0, move |v: &char, n| { sink_log.lock().unwrap().push((n, *v)); n + 1 });
    /// g.run().unwrap();
    /// assert_eq!(*log.lock().unwrap(), [(0, 'a'), (1, 'b')]);
    /// ```
    pub fn for_each_with_state<T, S, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        state: S,
        mut f: F,
    ) where
        T: Element,
        S: Send + 'static,
        F: FnMut(&T, S) -> S + Send + 'static,
    {
        let mut state = Some(state);
        self.sink_list(name, stream, move |xs: &[T]| {
            for x in xs {
                state = Some(f(
                    x,
                    state.take().expect("state is put back after each call"),
                ));
            }
            Ok(())
        });
    }

    /// Keeps every element of `stream` in memory, for tests and small results.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("keep");
    /// let s = g.source_iter("letters", ['a', 'b', 'c']);
    /// let out = g.collect("keep", &s);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), ['a', 'b', 'c']);
    /// ```
    pub fn collect<T: Element>(&mut self, name: &str, stream: &Stream<T>) -> Collected<T> {
        let collected = Collected {
            inner: Arc::default(),
        };
        let inner = Arc::clone(&collected.inner);
        self.sink_list(name, stream, move |xs: &[T]| {
            inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(xs);
            Ok(())
        });
        collected
    }

    /// Writes each element as one line of the file at `path` (created or truncated when the
    /// first batch arrives; flushed after every batch and at the end). For types that do not
    /// implement `Display` (tuples, your own structs), or for another format, use
    /// [`Graph::to_file_with`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let path = std::env::temp_dir().join(format!("iotstream-doc-to-file-{}", std::process::id()));
    /// let mut g = Graph::new("save");
    /// let s = g.source_iter("numbers", [1, 2]);
    /// g.to_file("save", &s, &path);
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
    /// std::fs::remove_file(path).unwrap();
    /// ```
    pub fn to_file<T: Element + Display>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
    ) {
        self.file_sink(name, stream, path.into(), |w, x: &T| writeln!(w, "{x}"));
    }

    /// Writes `format(v)` as one line of the file at `path` for each element `v`: the way to
    /// write tuples and structs, or CSV. `format` returns anything that implements `Display`
    /// (a `String` from `format!`, or a type of your own that writes without allocating); a
    /// newline is added after it. The file is created or truncated when the first batch
    /// arrives, flushed after every batch and at the end, as with [`Graph::to_file`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let path = std::env::temp_dir().join(format!("iotstream-doc-to-file-with-{}", std::process::id()));
    /// let mut g = Graph::new("save_csv");
    /// let s = g.source_iter("triggers", [(1200u64, 3.5), (4800, 4.25)]);
    /// g.to_file_with("csv", &s, &path, |(t, ratio): &(u64, f64)| format!("{t},{ratio:.2}"));
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "1200,3.50\n4800,4.25\n");
    /// std::fs::remove_file(path).unwrap();
    /// ```
    pub fn to_file_with<T, D, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
        mut format: F,
    ) where
        T: Element,
        D: Display,
        F: FnMut(&T) -> D + Send + 'static,
    {
        self.file_sink(name, stream, path.into(), move |w, x: &T| {
            writeln!(w, "{}", format(x))
        });
    }

    /// A sink writing each element to the file at `path` with `write` (created or truncated
    /// when the first batch arrives; flushed after every batch and at the end; an empty stream
    /// leaves an empty file).
    fn file_sink<T, W>(&mut self, name: &str, stream: &Stream<T>, path: PathBuf, mut write: W)
    where
        T: Element,
        W: FnMut(&mut std::io::BufWriter<std::fs::File>, &T) -> std::io::Result<()>
            + Send
            + 'static,
    {
        let file: Arc<Mutex<Option<std::io::BufWriter<std::fs::File>>>> = Arc::default();
        let (file_step, file_end) = (Arc::clone(&file), file);
        let (path_step, path_end) = (path.clone(), path);
        let step = move |xs: &[T]| -> Result<(), AgentError> {
            let mut guard = file_step.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                let f = std::fs::File::create(&path_step)
                    .map_err(|e| format!("cannot create file '{}': {e}", path_step.display()))?;
                *guard = Some(std::io::BufWriter::new(f));
            }
            let w = guard.as_mut().expect("opened above");
            let io =
                |e: std::io::Error| format!("cannot write file '{}': {e}", path_step.display());
            for x in xs {
                write(w, x).map_err(io)?;
            }
            w.flush().map_err(io)?;
            Ok(())
        };
        let finish = move || -> Result<(), AgentError> {
            let mut guard = file_end.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                // An empty stream still leaves an (empty) file behind.
                std::fs::File::create(&path_end)
                    .map_err(|e| format!("cannot create file '{}': {e}", path_end.display()))?;
            }
            if let Some(w) = guard.as_mut() {
                w.flush()
                    .map_err(|e| format!("cannot write file '{}': {e}", path_end.display()))?;
            }
            Ok(())
        };
        self.slice_sink(name, stream, step, Some(Box::new(finish)));
        self.last_agent_on_own_thread();
    }

    /// Prints each element as one line on standard output.
    pub fn to_stdout<T: Element + Display>(&mut self, name: &str, stream: &Stream<T>) {
        self.sink_list(name, stream, |xs: &[T]| {
            let mut out = std::io::stdout().lock();
            for x in xs {
                writeln!(out, "{x}").map_err(|e| format!("cannot write standard output: {e}"))?;
            }
            Ok(())
        });
        self.last_agent_on_own_thread();
    }
}
