//! The files operators install: the example config validates, the systemd unit passes
//! `systemd-analyze verify` with memroute's real binary in it, and the container file copies
//! paths that exist and runs memroute with arguments it accepts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::TempFiles;
use common::Proxy;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs memroute with `args`; its exit status must be 0.
fn memroute_accepts(args: &[&str]) {
    let out = Command::new(Proxy::binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "memroute {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_config_validates() {
    let path = repo("config/memroute.toml");
    memroute_accepts(&["--config", path.to_str().unwrap(), "--check"]);
}

#[test]
fn the_systemd_unit_verifies_and_its_command_line_is_accepted() {
    let unit = std::fs::read_to_string(repo("config/memroute.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/memroute"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args, ["--config", "/etc/memroute/memroute.toml"]);
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));

    // With the binary and the example config where the unit expects them (in a temp folder).
    let files = TempFiles::new();
    let config = repo("config/memroute.toml");
    let binary = Proxy::binary();
    let local = unit
        .replace("/usr/local/bin/memroute", binary.to_str().unwrap())
        .replace("/etc/memroute/memroute.toml", config.to_str().unwrap());
    let path = files.write("memroute.service", &local);
    memroute_accepts(&["--config", config.to_str().unwrap(), "--check"]);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd; scripts/test.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host (no systemd running in a container) are not about the unit.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("memroute.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

#[test]
fn the_container_file_copies_what_exists_and_runs_the_embedded_default() {
    let text = std::fs::read_to_string(repo("config/Containerfile")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(repo(src).exists(), "{line}: {src} does not exist");
        }
    }
    let cmd = text
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec (JSON) form");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(args, ["--listen", "0.0.0.0:11211"]);
    args.push("--check");
    memroute_accepts(&args);
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/memroute\"]"));
}
