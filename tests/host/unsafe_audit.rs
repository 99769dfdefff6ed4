//! `unsafe` only in the verbs provider, each use justified (docs/security.md, "Memory
//! safety"): scans src/ and fails on the keyword outside src/fabric/verbs/, and on an unsafe
//! block or impl there without a `// SAFETY:` comment in the comment lines right above it (or
//! on its own line). The compiler enforces the same from the other side: the library is
//! `#![deny(unsafe_code)]` (only `fabric::verbs` allows it), the binary
//! `#![forbid(unsafe_code)]`, and the verbs module denies
//! `clippy::undocumented_unsafe_blocks`.
use std::path::{Path, PathBuf};

const ALLOWED: &str = "src/fabric/verbs/";

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code part of a line (before a `//` comment); string literals are not stripped, so a
/// string containing the keyword counts too (rename it).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

fn uses_unsafe(line: &str) -> bool {
    code(line)
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == "unsafe")
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// Whether the unsafe use on line `i` carries a `// SAFETY:` comment: on the line itself, in
/// the comment lines right above it, or above the statement it continues (an `unsafe {`
/// opening inside a multi-line expression).
fn justified(lines: &[&str], i: usize) -> bool {
    if lines[i].contains("// SAFETY:") {
        return true;
    }
    let mut j = i;
    // Up to the start of the statement: skip continuation lines of the same expression.
    while j > 0 && !is_comment(lines[j - 1]) && continues(lines[j - 1]) {
        j -= 1;
    }
    while j > 0 && is_comment(lines[j - 1]) {
        j -= 1;
        if lines[j].contains("SAFETY:") {
            return true;
        }
    }
    false
}

/// Whether a line leaves its statement open (the next line continues it).
fn continues(line: &str) -> bool {
    let c = code(line).trim_end();
    c.ends_with('(') || c.ends_with(',') || c.ends_with('=') || c.ends_with('.')
}

#[test]
fn unsafe_only_in_the_verbs_provider_and_every_use_justified() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    assert!(files.len() > 20, "scanned {} files", files.len());
    let (mut outside, mut unjustified, mut uses) = (Vec::new(), Vec::new(), 0);
    for f in &files {
        let name = f.to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !uses_unsafe(line) || code(line).contains("unsafe_code") {
                continue;
            }
            if !name.starts_with(ALLOWED) {
                outside.push(format!("{name}:{}", i + 1));
            } else {
                uses += 1;
                if !justified(&lines, i) {
                    unjustified.push(format!("{name}:{}", i + 1));
                }
            }
        }
    }
    assert!(outside.is_empty(), "unsafe outside {ALLOWED}: {outside:?}");
    assert!(
        unjustified.is_empty(),
        "unsafe without // SAFETY: {unjustified:?}"
    );
    assert!(
        uses > 0,
        "no unsafe found at all: is the scan looking at src/?"
    );
}

#[test]
fn crate_attributes_keep_unsafe_in_the_verbs_provider() {
    let lib = std::fs::read_to_string("src/lib.rs").unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"), "src/lib.rs");
    let main = std::fs::read_to_string("src/cli/main.rs").unwrap();
    assert!(main.contains("#![forbid(unsafe_code)]"), "src/cli/main.rs");
    let verbs = std::fs::read_to_string("src/fabric/verbs/mod.rs").unwrap();
    assert!(verbs.contains("#![deny(clippy::undocumented_unsafe_blocks)]"));
    // Only the verbs provider lifts the library's deny.
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.to_string_lossy().replace('\\', "/");
        if text.contains("allow(unsafe_code)") {
            assert_eq!(
                name, "src/fabric/verbs/mod.rs",
                "allow(unsafe_code) in {name}"
            );
        }
    }
}

/// The scanner itself: it finds what it must.
#[test]
fn the_scan_catches_an_unjustified_block() {
    let bad = ["fn f() {", "    let x = 1;", "    unsafe { g() };", "}"];
    assert!(uses_unsafe(bad[2]) && !justified(&bad, 2));
    let good = ["// SAFETY: g has no preconditions.", "unsafe { g() };"];
    assert!(justified(&good, 1));
    let continued = [
        "// SAFETY: ptr is valid.",
        "let rc = call(",
        "    unsafe { *ptr },",
    ];
    assert!(justified(&continued, 2));
    assert!(!uses_unsafe("// an unsafe word in a comment"));
    assert!(!uses_unsafe("let not_unsafe_name = 1;"));
}
