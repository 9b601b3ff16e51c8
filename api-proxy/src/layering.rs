//! The proxy's modules are layered: each uses only modules below it, so any one can be read,
//! tested and changed knowing only what is beneath it. This test keeps it so.

/// Bottom to top; a module may use only modules earlier in this list (the crate root, which
/// wires them together, is above all of them).
const LAYERS: &[&str] = &[
    "clock",
    "pace",
    "text",
    "settings",
    "key_memo",
    "inject",
    "cache",
    "provider_limits",
    "state",
    "deadline",
    "wire",
    "outgoing",
    "h1_client",
    "pool",
    "h1_server",
    "relay",
    "worker",
    "forward",
    "server",
];

/// The modules `source` names (`crate::name`), outside comments and tests.
fn uses(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_uses_one_above_it() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path);
        }
    }
    let mut checked = 0;
    for path in files {
        let relative = path.strip_prefix(&src).unwrap();
        let module = relative.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if ["lib", "main", "testing", "layering"].contains(&module) || path.ends_with("tests.rs") {
            continue;
        }
        let rank = LAYERS.iter().position(|m| *m == module).unwrap_or_else(|| panic!("{module} is not in LAYERS"));
        for used in uses(&std::fs::read_to_string(&path).unwrap()) {
            let below = LAYERS.iter().position(|m| *m == used).unwrap_or_else(|| panic!("{used} is not in LAYERS"));
            assert!(below < rank || used == module, "{} uses `{used}`, which is above it", relative.display());
        }
        checked += 1;
    }
    assert!(checked >= LAYERS.len(), "only {checked} files were read");
}

#[test]
fn a_use_of_a_module_is_found_and_comments_and_tests_are_not() {
    let source = "use crate::wire::Io;\n// crate::server\nfn f() { crate::pool::x(); }\n#[cfg(test)]\nmod tests { use crate::server; }";
    assert_eq!(uses(source), ["wire", "pool"]);
}
