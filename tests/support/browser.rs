//! A headless Chromium for tests of the live view's web page: find it (or install Debian's
//! `chromium` where we may), load a page and read its DOM after its scripts ran, take a
//! screenshot, and read elements' attributes from the DOM text.
//!
//! Each run gets a fresh profile folder and its own process group, killed when the run ends
//! (Chromium's helpers included), so nothing outlives a test.

#![allow(dead_code)] // each test crate that includes this uses part of it

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest a browser run may take before it is killed: a safety bound so that a stuck
/// browser fails the test instead of hanging it, not a measure of anything.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A page as loaded.
pub struct Page {
    /// The DOM, serialized, after the scripts ran.
    pub dom: String,
    /// The page's console lines, uncaught errors included.
    pub console: Vec<String>,
}

/// A Chromium found on this machine.
pub struct Browser {
    exe: PathBuf,
}

impl Browser {
    /// Chromium from `$IOTSTREAM_CHROMIUM`, the `PATH`, or installed with `apt-get` (as root);
    /// the error says why none is available.
    /// Tests of one binary running at once share one search (and at most one install).
    pub fn find_or_install() -> Result<Browser, String> {
        static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let exe = FOUND
            .get_or_init(|| Browser::search().map(|b| b.exe))
            .clone()?;
        Ok(Browser { exe })
    }

    fn search() -> Result<Browser, String> {
        if let Some(exe) = find() {
            return Ok(Browser { exe });
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("chromium is not installed and we are not root to install it".into());
        }
        if !Path::new("/usr/bin/apt-get").exists() {
            return Err("chromium is not installed and there is no apt-get to install it".into());
        }
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            install();
        }
        find()
            .map(|exe| Browser { exe })
            .ok_or_else(|| "chromium is not installed and `apt-get install chromium` failed".into())
    }

    /// The DOM of `url` after its scripts ran for `virtual_ms` of virtual time, and what the
    /// page wrote to its console (uncaught errors included).
    pub fn dump_dom(&self, url: &str, virtual_ms: u32) -> Result<Page, String> {
        let (dom, console) = self.run(&[
            "--dump-dom".into(),
            format!("--virtual-time-budget={virtual_ms}"),
            url.into(),
        ])?;
        Ok(Page { dom, console })
    }

    /// A PNG screenshot of `url` in a 1400×900 window after `virtual_ms` of virtual time.
    pub fn screenshot(&self, url: &str, virtual_ms: u32, png: &Path) -> Result<(), String> {
        self.screenshot_sized(url, virtual_ms, (1400, 900), png)
    }

    /// A PNG screenshot of `url` in a window of `(width, height)` pixels after `virtual_ms`
    /// of virtual time.
    pub fn screenshot_sized(
        &self,
        url: &str,
        virtual_ms: u32,
        (width, height): (u32, u32),
        png: &Path,
    ) -> Result<(), String> {
        let _ = std::fs::remove_file(png);
        self.run(&[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".into(),
            format!("--virtual-time-budget={virtual_ms}"),
            url.into(),
        ])?;
        match std::fs::metadata(png) {
            Ok(m) if m.len() > 0 => Ok(()),
            _ => Err(format!("chromium wrote no screenshot to {}", png.display())),
        }
    }

    fn run(&self, args: &[String]) -> Result<(String, Vec<String>), String> {
        let profile = tempfile::tempdir().map_err(|e| format!("profile folder: {e}"))?;
        let mut child = Command::new(&self.exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            // The page's console lines come out on standard error, marked ":CONSOLE".
            .args(["--enable-logging=stderr", "--v=0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let err_reader = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            err
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if start.elapsed() > RUN_LIMIT => break Err("chromium ran too long"),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break Err("cannot wait for chromium"),
            }
        };
        // Its helpers too, whatever happened (they are gone already after a normal exit).
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let out = reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        let console = err
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(String::from)
            .collect();
        match status {
            Ok(s) if s.success() => Ok((out, console)),
            Ok(s) => Err(format!("chromium {args:?} exited with {s}")),
            Err(why) => Err(format!("{why}: {args:?}")),
        }
    }
}

fn find() -> Option<PathBuf> {
    if let Some(exe) = std::env::var_os("IOTSTREAM_CHROMIUM") {
        return Some(PathBuf::from(exe));
    }
    let path = std::env::var_os("PATH")?;
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The folder for files a test leaves to look at: `<target>/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    // The test binary is <target>/<profile>/deps/<name>.
    let exe = std::env::current_exe().expect("own path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts folder");
    dir
}

/// The attributes of every start tag in `dom` that has attribute `attr`, in document order
/// (values unescaped). Enough for Chromium's serialization: attributes in double quotes.
pub fn elements_with(dom: &str, attr: &str) -> Vec<BTreeMap<String, String>> {
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let attrs = parse_attributes(&rest[..end]);
        if attrs.contains_key(attr) {
            found.push(attrs);
        }
        rest = &rest[end..];
    }
    found
}

fn parse_attributes(tag: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    // Skip the tag name.
    let mut rest = tag.trim_start_matches(|c: char| !c.is_whitespace());
    loop {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let Some(value) = after.strip_prefix('"') else {
            break;
        };
        let Some(close) = value.find('"') else { break };
        attrs.insert(name.to_string(), unescape(&value[..close]));
        rest = &value[close + 1..];
    }
    attrs
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}
