//! The backend's modules depend on each other in one direction only: tails
//! at the bottom, the wire above them, then the link, the peer server, the
//! mirror and routing, none of which knows its siblings. Read from the
//! sources (every `crate::` path outside comments), so that a new `use`
//! against the grain fails here, not in review.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each module may use besides the crate's root modules (buffers,
/// rings, the engine, errors, leases, counters), which use none of these.
const ALLOWED: &[(&str, &[&str])] = &[
    ("tail", &[]),
    ("wire", &["tail", "cache"]),
    ("link", &["tail", "wire"]),
    ("peer", &["tail", "wire"]),
    ("mirror", &["tail"]),
    ("route", &["tail"]),
    // The cached vdisks' coherence core is pure; its shells sit on tails,
    // and know nothing of how their messages travel.
    ("cache", &["tail"]),
    // Cached vdisks on the network: the shells' messages on the links and
    // from the peer server.
    ("cached", &["cache", "link", "peer", "wire"]),
];

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let owners = reexport_owners(&lib);
    let layered: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(module, allowed)| (*module, allowed.iter().copied().collect()))
        .collect();
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if module == "lib" {
            continue;
        }
        let mut used = BTreeSet::new();
        for file in rust_files(&path) {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in crate_paths(&text) {
                let owner = owners.get(&name).cloned().unwrap_or(name);
                if owner != module {
                    used.insert(owner);
                }
            }
        }
        found.insert(module, used);
    }
    assert!(
        layered.keys().all(|m| found.contains_key(*m)),
        "a layered module is missing: {found:?}"
    );
    for (module, used) in &found {
        let allowed = match layered.get(module.as_str()) {
            Some(allowed) => allowed.clone(),
            // A root module: it may use other root modules only.
            None => BTreeSet::new(),
        };
        let against: Vec<_> = used
            .iter()
            .filter(|u| layered.contains_key(u.as_str()) && !allowed.contains(u.as_str()))
            .collect();
        assert!(
            against.is_empty(),
            "module {module} uses {against:?}, against the layers (allowed: {allowed:?})"
        );
    }
}

/// The root modules' names that lib.rs re-exports, with the module of each.
fn reexport_owners(lib: &str) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in top_level_items(names) {
            let last = name.rsplit("::").next().unwrap_or(&name).to_owned();
            owners.insert(last, module.to_owned());
        }
    }
    owners
}

/// The first segment of every `crate::` path in `text`, comments left out.
fn crate_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if rest.starts_with('{') {
            let group = balanced(rest);
            names.extend(top_level_items(group).map(|item| first_segment(&item)));
        } else {
            names.push(first_segment(rest));
        }
    }
    names
}

/// `{ ... }` at the start of `text`, braces included.
fn balanced(text: &str) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=i];
                }
            }
            _ => {}
        }
    }
    text
}

/// The items of a `{a, b::{c, d}, e}` group (or a lone path), trimmed.
fn top_level_items(group: &str) -> impl Iterator<Item = String> + '_ {
    let inner = group
        .trim()
        .strip_prefix('{')
        .and_then(|g| g.strip_suffix('}'))
        .unwrap_or(group);
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(inner[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(inner[start..].trim().to_owned());
    items.into_iter().filter(|item| !item.is_empty())
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        files.extend(rust_files(&entry.unwrap().path()));
    }
    files
}
