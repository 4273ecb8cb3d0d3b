//! Sinks: where streams end.
//!
//! | call | IoTPy | does |
//! |---|---|---|
//! | [`Graph::for_each`] | `sink_element` | `f(v)` for each element |
//! | [`Graph::for_each_with_state`] | `sink_element(…, state=)` | `s' = f(v, s)` |
//! | [`Graph::try_for_each`] | — | `f(v)`; an error stops the application |
//! | [`Graph::sink_list`] | `sink_list` | `f(new elements)` |
//! | [`Graph::collect`] | `stream_to_list` | keeps every element in a [`Collected`], for tests |
//! | [`Graph::to_file`] | `stream_to_file` | appends one line per element to a file |
//! | [`Graph::to_file_with`] | `stream_to_file` | appends `format(v)` as one line per element |
//! | [`Graph::to_file_with_mode`] | `stream_to_file` | the same, appending or truncating ([`FileMode`]) |
//! | [`Graph::to_json_lines`] | — | appends each element as one line of JSON |
//! | [`Graph::to_json_lines_with_mode`] | — | the same, appending or truncating ([`FileMode`]) |
//! | [`Graph::to_stdout`] | `print_stream` | prints one line per element |
//!
//! In a threaded run every agent that is not placed with others has a thread of its own, so a
//! sink that blocks on I/O holds up only itself (and, through back-pressure, its writers).
//!
//! # Files
//!
//! The file sinks append by default ([`FileMode::Append`]): a restarted application adds to
//! what its earlier runs wrote (alerts, logs), it never wipes them. [`FileMode::Truncate`]
//! starts the file afresh at each run (a report, a result a test reads). Either way the file is
//! opened when the first batch arrives (or at the end, for an empty stream, which still leaves
//! the file behind), each batch is written and flushed as a whole, and at the end of the stream
//! the file is flushed and synced to disk (`fsync`). An appended file whose last line lacks its
//! newline (a writer killed mid-line) first gets one, so the new lines start on a line of their
//! own.

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

/// What a file sink does to a file that is already there.
///
/// ```
/// use iotstream::FileMode;
/// assert_eq!(FileMode::default(), FileMode::Append);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FileMode {
    /// Keep what is there and add after it (the default: a restart never wipes earlier
    /// alerts or logs). If the file's last line lacks its newline, one is written first.
    #[default]
    Append,
    /// Empty the file when the sink opens it: the file holds only this run's lines.
    Truncate,
}

/// A file sink's open file.
struct OpenFile {
    w: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// Lines the sink wrote (to name the line an error is about).
    lines: u64,
}

impl OpenFile {
    fn open(path: &std::path::Path, mode: FileMode) -> Result<OpenFile, AgentError> {
        let cannot = |e: std::io::Error| format!("cannot open file '{}': {e}", path.display());
        let mut options = std::fs::OpenOptions::new();
        match mode {
            FileMode::Append => options.append(true).read(true),
            FileMode::Truncate => options.write(true).truncate(true),
        };
        let mut file = options.create(true).open(path).map_err(cannot)?;
        if mode == FileMode::Append {
            use std::io::{Read, Seek, SeekFrom};
            // A last line without its newline (a writer killed mid-line) gets one, so the
            // first new line is not glued to it.
            let len = file.metadata().map_err(cannot)?.len();
            if len > 0 {
                let mut last = [0u8];
                file.seek(SeekFrom::Start(len - 1)).map_err(cannot)?;
                file.read_exact(&mut last).map_err(cannot)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n").map_err(cannot)?;
                }
            }
        }
        Ok(OpenFile {
            w: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            lines: 0,
        })
    }

    /// An error writing line `lines + 1` of this run.
    fn write_error(&self, e: std::io::Error) -> AgentError {
        let (path, line) = (self.path.display(), self.lines + 1);
        format!("cannot write file '{path}' (this run's line {line}): {e}").into()
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
    /// agent and the element's index in the stream (counting from 0).
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
        // The stream index of the next element: what an error names.
        let mut index: u64 = 0;
        self.sink_list(name, stream, move |xs: &[T]| {
            for x in xs {
                f(x).map_err(|e| -> AgentError {
                    let e: AgentError = e.into();
                    format!("element {index} of the stream (counting from 0): {e}").into()
                })?;
                index += 1;
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

    /// Appends each element as one line to the file at `path` (created if missing, never
    /// truncated: see [`FileMode`]; flushed after every batch, synced at the end). For types
    /// that do not implement `Display` (tuples, your own structs), or for another format, use
    /// [`Graph::to_file_with`]; to start the file afresh at each run,
    /// [`Graph::to_file_with_mode`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let dir = std::env::temp_dir().join(format!("iotstream-doc-to-file-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("alerts.log");
    /// for run in [[1, 2], [3, 4]] {
    ///     let mut g = Graph::new("save");
    ///     let s = g.source_iter("numbers", run);
    ///     g.to_file("save", &s, &path);
    ///     g.run().unwrap();
    /// }
    /// // The second run appended to what the first wrote.
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n4\n");
    /// std::fs::remove_dir_all(dir).unwrap();
    /// ```
    pub fn to_file<T: Element + Display>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
    ) {
        let path = path.into();
        self.file_sink(name, stream, path, FileMode::Append, |w, x: &T| {
            writeln!(w, "{x}")
        });
    }

    /// Appends `format(v)` as one line to the file at `path` for each element `v`: the way to
    /// write tuples and structs, or CSV. `format` returns anything that implements `Display`
    /// (a `String` from `format!`, or a type of your own that writes without allocating); a
    /// newline is added after it. The file is created if missing and never truncated, flushed
    /// after every batch and synced at the end, as with [`Graph::to_file`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let dir = std::env::temp_dir().join(format!("iotstream-doc-to-file-with-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("triggers.csv");
    /// let mut g = Graph::new("save_csv");
    /// let s = g.source_iter("triggers", [(1200u64, 3.5), (4800, 4.25)]);
    /// g.to_file_with("csv", &s, &path, |(t, ratio): &(u64, f64)| format!("{t},{ratio:.2}"));
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "1200,3.50\n4800,4.25\n");
    /// std::fs::remove_dir_all(dir).unwrap();
    /// ```
    pub fn to_file_with<T, D, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
        format: F,
    ) where
        T: Element,
        D: Display,
        F: FnMut(&T) -> D + Send + 'static,
    {
        self.to_file_with_mode(name, stream, path, FileMode::Append, format);
    }

    /// [`Graph::to_file_with`] with an explicit [`FileMode`]: [`FileMode::Truncate`] empties
    /// the file when the first batch arrives (or at the end of an empty stream), so each run
    /// leaves only its own lines.
    ///
    /// ```
    /// use iotstream::{FileMode, Graph};
    /// let dir = std::env::temp_dir().join(format!("iotstream-doc-to-file-mode-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("report.txt");
    /// for run in [[1, 2], [3, 4]] {
    ///     let mut g = Graph::new("report");
    ///     let s = g.source_iter("numbers", run);
    ///     g.to_file_with_mode("report", &s, &path, FileMode::Truncate, |v: &i32| *v);
    ///     g.run().unwrap();
    /// }
    /// // Only the last run's lines.
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "3\n4\n");
    /// std::fs::remove_dir_all(dir).unwrap();
    /// ```
    pub fn to_file_with_mode<T, D, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
        mode: FileMode,
        mut format: F,
    ) where
        T: Element,
        D: Display,
        F: FnMut(&T) -> D + Send + 'static,
    {
        self.file_sink(name, stream, path.into(), mode, move |w, x: &T| {
            writeln!(w, "{}", format(x))
        });
    }

    /// Appends each element to the file at `path` as one line of JSON (`serde_json`, one
    /// object, array or value per line: "JSON lines"), created if missing and never truncated
    /// (see [`FileMode`]); each batch is written and flushed as a whole, and at the end of the
    /// stream the file is synced to disk. An element that cannot be written as JSON (a map
    /// whose keys cannot be written as strings: tuples, structs or a NaN, say; serde_json
    /// writes integer, boolean and finite float keys as strings) stops the application with an
    /// error naming the file and the element's line. A float that is NaN or infinite is written as `null`
    /// (serde_json's rule, JSON has no such numbers), with no error: such a line does not read
    /// back as a float; use `Option<f64>` (`None` is `null` too) or a string where it matters.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let path = std::env::temp_dir().join(format!("iotstream-doc-nan-{}.jsonl", std::process::id()));
    /// let mut g = Graph::new("readings");
    /// let s = g.source_iter("celsius", [21.5f64, f64::NAN]);
    /// g.to_json_lines("save", &s, &path);
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "21.5\nnull\n");
    /// # std::fs::remove_file(&path).unwrap();
    /// ```
    ///
    /// ```
    /// use iotstream::Graph;
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Alert { sensor: String, level: f64 }
    ///
    /// let dir = std::env::temp_dir().join(format!("iotstream-doc-json-lines-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("alerts.jsonl");
    /// let mut g = Graph::new("alerts");
    /// let s = g.source_iter("alerts", [Alert { sensor: "pump-3".into(), level: 7.5 }]);
    /// g.to_json_lines("save", &s, &path);
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"sensor\":\"pump-3\",\"level\":7.5}\n");
    /// std::fs::remove_dir_all(dir).unwrap();
    /// ```
    pub fn to_json_lines<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
    ) {
        self.to_json_lines_with_mode(name, stream, path, FileMode::Append);
    }

    /// [`Graph::to_json_lines`] with an explicit [`FileMode`].
    ///
    /// ```
    /// use iotstream::{FileMode, Graph};
    /// let dir = std::env::temp_dir().join(format!("iotstream-doc-json-mode-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("latest.jsonl");
    /// std::fs::write(&path, "old\n").unwrap();
    /// let mut g = Graph::new("latest");
    /// let s = g.source_iter("pairs", [(1u32, "a".to_string())]);
    /// g.to_json_lines_with_mode("save", &s, &path, FileMode::Truncate);
    /// g.run().unwrap();
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1,\"a\"]\n");
    /// std::fs::remove_dir_all(dir).unwrap();
    /// ```
    pub fn to_json_lines_with_mode<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: impl Into<PathBuf>,
        mode: FileMode,
    ) {
        // Each element is encoded whole before any of it is written (a failed one leaves no
        // half line), into one buffer kept from element to element.
        let mut line = Vec::new();
        self.file_sink(name, stream, path.into(), mode, move |w, x: &T| {
            line.clear();
            serde_json::to_writer(&mut line, x).map_err(std::io::Error::from)?;
            line.push(b'\n');
            w.write_all(&line)
        });
    }

    /// A sink writing each element to the file at `path` with `write` (opened per `mode` when
    /// the first batch arrives; flushed after every batch; flushed and synced at the end; an
    /// empty stream leaves the file behind, empty if it was not there).
    fn file_sink<T, W>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        path: PathBuf,
        mode: FileMode,
        mut write: W,
    ) where
        T: Element,
        W: FnMut(&mut std::io::BufWriter<std::fs::File>, &T) -> std::io::Result<()>
            + Send
            + 'static,
    {
        let file: Arc<Mutex<Option<OpenFile>>> = Arc::default();
        let (file_step, file_end) = (Arc::clone(&file), file);
        let (path_step, path_end) = (path.clone(), path);
        let step = move |xs: &[T]| -> Result<(), AgentError> {
            let mut guard = file_step.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Some(OpenFile::open(&path_step, mode)?);
            }
            let f = guard.as_mut().expect("opened above");
            let mut result = Ok(());
            for x in xs {
                if let Err(e) = write(&mut f.w, x) {
                    result = Err(f.write_error(e));
                    break;
                }
                f.lines += 1;
            }
            // What was written before a failure is in the file too.
            f.w.flush().map_err(|e| f.write_error(e))?;
            result
        };
        let finish = move || -> Result<(), AgentError> {
            let mut guard = file_end.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                // An empty stream still leaves the file behind.
                *guard = Some(OpenFile::open(&path_end, mode)?);
            }
            let f = guard.as_mut().expect("opened above");
            f.w.flush().map_err(|e| f.write_error(e))?;
            f.w.get_ref()
                .sync_all()
                .map_err(|e| format!("cannot sync file '{}' to disk: {e}", path_end.display()))?;
            Ok(())
        };
        self.slice_sink(name, stream, step, Some(Box::new(finish)));
        self.last_agent_on_own_thread();
    }

    /// Prints each element as one line on standard output.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("alerts");
    /// let readings = g.source_iter("readings", [12.5, 31.0, 18.25]);
    /// let hot = g.filter("hot", &readings, |c: &f64| *c > 30.0);
    /// g.to_stdout("print", &hot); // prints "31"
    /// g.run().unwrap();
    /// ```
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
