//! The crate's layers: no module imports one above it (see `docs/ARCHITECTURE.md`, "Layers").
//!
//! Reads every file under `src/`, finds each `crate::<module>` path outside the file's unit
//! tests (the `#[cfg(test)] mod tests` block at the end of a file may use anything), and checks
//! that `<module>` sits in the same layer or a lower one. A module missing from [`LAYERS`] is an
//! error too, so a new module has to be given its place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom-up. A module may import modules of its own layer and of layers below.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["error", "logging"]),
    ("elements and counters", &["stream", "metrics"]),
    ("transport", &["transport"]),
    ("fuzzing entry points", &["fuzzing"]),
    ("ports", &["port"]),
    ("agent API", &["agent"]),
    ("host", &["host"]),
    ("plain description", &["info"]),
    ("live view", &["observe"]),
    ("deployment model", &["deploy"]),
    ("graph", &["graph"]),
    ("operators", &["ops"]),
    ("deterministic harness", &["testing"]),
    ("process start", &["launch"]),
    ("runtime", &["runtime"]),
    ("launcher", &["launcher", "bench"]),
];

/// Where `module` sits in [`LAYERS`].
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs` and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a source text names as `crate::<module>`, with the line of the first mention,
/// up to its unit tests.
fn imports(text: &str) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.entry(name).or_insert(n + 1);
            }
        }
        // `use crate::{a, b}` groups.
        if let Some(at) = code.find("use crate::{") {
            let group = &code[at + "use crate::{".len()..];
            for name in group.split([',', '}']) {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    found.entry(name.to_string()).or_insert(n + 1);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_module_of_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 10,
        "found only {} files under src/",
        files.len()
    );

    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let shown = file.strip_prefix(root).unwrap_or(file).display();
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{shown}: module '{module}' has no layer in tests/layers.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        for (imported, line) in imports(&text) {
            checked += 1;
            match layer_of(&imported) {
                Some(l) if l <= own => {}
                Some(l) => problems.push(format!(
                    "{shown}:{line}: '{module}' (layer '{}') imports '{imported}' (layer '{}', above it)",
                    LAYERS[own].0, LAYERS[l].0
                )),
                None => problems.push(format!(
                    "{shown}:{line}: '{module}' imports '{imported}', which has no layer in tests/layers.rs"
                )),
            }
        }
    }
    assert!(
        checked > 50,
        "found only {checked} imports: the scan is broken"
    );
    assert!(
        problems.is_empty(),
        "the layering rule is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_finds_paths_groups_and_skips_unit_tests_and_comments() {
    let text = "use crate::stream::Batch;\n\
                use crate::{error::Error, metrics};\n\
                // see crate::launcher\n\
                fn f() { crate::host::x(); }\n\
                #[cfg(test)]\n\
                mod tests {\n\
                    use crate::runtime::RunHandle;\n\
                }\n";
    let found = imports(text);
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["error", "host", "metrics", "stream"]);
    assert_eq!(found["host"], 4);
}
