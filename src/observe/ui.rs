//! The live view's web page: one self-contained HTML file (inline CSS and JavaScript, nothing
//! fetched from elsewhere) that a metrics server returns on `/`.
//!
//! The page asks the server that served it for `api/graph` once and `api/metrics` every
//! reporting interval (relative URLs), and draws the graph with a small SVG renderer of its
//! own: agents in columns by their longest path from the sources (edges closing a cycle are
//! drawn as dashed feedback and left out of the layout), grouped in a box per process, processes
//! in a box per host. Each edge is labelled with its transport, rate, backlog (in flight /
//! capacity) and drops; each agent shows its busy share, each process its status, CPU share,
//! memory and restarts. A link whose writer is blocked most of the interval, whose backlog is at
//! capacity or that keeps dropping, and a failed process, are red; lesser signs amber. If the
//! page's URL carries `?token=X`, the page sends `Authorization: Bearer X` with its requests.
//!
//! # What a test (or a script) can read in the page's DOM
//!
//! - `<body data-updates="N">`: how many metrics reports the page has shown.
//! - `#app[data-app]`, `#run`, `#up`, `#updated[data-time-ms]`; `#api[data-api]` is `waiting`,
//!   `ok` or `down` (then `#note` says why, and the last data stay shown, greyed).
//! - Hosts `[data-host]`, processes `[data-process][data-status][data-state]` (with `data-pid`,
//!   `data-cpu`, `data-rss`, `data-restarts`), agents `[data-agent][data-busy][data-steps]`.
//! - Edges `[data-edge="i"]` (`i` is the index in
//!   [`GraphInfo::edges`](crate::info::GraphInfo::edges)) with `data-from`, `data-to`,
//!   `data-stream`, `data-transport`, `data-capacity`, and after a report `data-rate`
//!   (elements/s, empty before the second report), `data-backlog`, `data-dropped`,
//!   `data-blocked`, `data-elements`.
//! - `data-state` on processes, agents and edges: `ok`, `warn`, `bad`, `idle` (no data yet);
//!   processes also `done` (ended), agents `down` (their process failed).
//! - `#problems li[data-problem]` (`bad` or `warn`): one sentence per problem.

/// The page, served as `text/html; charset=utf-8`.
pub const PAGE: &str = include_str!("ui.html");

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_fetches_nothing_from_outside() {
        // The one absolute URL is the SVG namespace, which is a name, not a request.
        let without_ns = PAGE.replace("http://www.w3.org/2000/svg", "");
        for needle in [
            "http://",
            "https://",
            "//cdn",
            "<link",
            "<script src",
            "@import",
            "url(http",
        ] {
            assert!(!without_ns.contains(needle), "the page contains {needle:?}");
        }
        assert!(PAGE.contains("\"api/graph\"") && PAGE.contains("\"api/metrics\""));
    }

    #[test]
    fn the_page_is_one_short_file() {
        assert!(PAGE.starts_with("<!doctype html>"));
        let lines = PAGE.lines().count();
        assert!(lines < 600, "the page has {lines} lines");
    }
}
