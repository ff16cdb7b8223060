//! Runs the built `wbrepl` binary: help, usage errors and the no-device-mapper error path.

use std::process::{Command, Output};

fn wbrepl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wbrepl"))
        .args(args)
        .output()
        .expect("run wbrepl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_succeeds_and_lists_status() {
    let out = wbrepl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("status"),
        "{}",
        text(&out.stdout)
    );

    let out = wbrepl(&["status", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("--json") && help.contains("[DEVICE]..."),
        "{help}"
    );
    assert!(help.contains("Exit status"), "{help}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--bogus"][..],
        &["status", "--bogus"],
        &["nosuchcommand"],
        &[],
    ] {
        let out = wbrepl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).is_empty(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn status_without_device_mapper_is_an_operational_error() {
    let out = wbrepl(&["status", "--json"]);
    match out.status.code() {
        // No device-mapper here (the usual host): a clear message and status 1.
        Some(1) if out.stdout.is_empty() => {
            let err = text(&out.stderr);
            assert!(
                err.starts_with("wbrepl: cannot open /dev/mapper/control"),
                "{err}"
            );
            assert!(err.contains("root") && err.contains("dm_mod"), "{err}");
        }
        // A machine with device-mapper and root: a JSON document.
        Some(0) => assert!(
            text(&out.stdout).contains("\"stacks\""),
            "{}",
            text(&out.stdout)
        ),
        other => panic!("unexpected status {other:?}: {}", text(&out.stderr)),
    }
}

/// Runs wbrepl with `args`; asserts the exit status and that stderr contains `needle`.
fn refused(args: &[&str], code: i32, needle: &str) {
    let out = wbrepl(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn help_lists_every_command() {
    let out = wbrepl(&["--help"]);
    let help = text(&out.stdout);
    for cmd in [
        "status",
        "checkpoint",
        "stack",
        "secondary",
        "images",
        "--json",
        "Exit status",
    ] {
        assert!(help.contains(cmd), "{cmd}: {help}");
    }
    let out = wbrepl(&["images", "--help"]);
    let help = text(&out.stdout);
    for cmd in ["list", "expose", "unexpose", "restore", "delete", "prune"] {
        assert!(help.contains(cmd), "{cmd}: {help}");
    }
    for args in [
        &["checkpoint", "--help"][..],
        &["stack", "create", "--help"],
        &["secondary", "run", "--help"],
        &["images", "restore", "--help"],
    ] {
        let out = wbrepl(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("--json"), "{args:?}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    refused(
        &["checkpoint", "d", "--label", "two words"],
        2,
        "printable ASCII without spaces",
    );
    refused(
        &["checkpoint", "d", "--label", &"x".repeat(65)],
        2,
        "at most 64 bytes",
    );
    refused(&["checkpoint", "d", "--label", "-"], 2, "leave --label out");
    refused(
        &["checkpoint", "d", "--timeout", "0"],
        2,
        "from 1 ms to 24 h",
    );
    refused(
        &["checkpoint", "d", "--timeout", "soon"],
        2,
        "invalid duration",
    );
    refused(
        &["checkpoint", "d", "--mode", "fast"],
        2,
        "invalid value 'fast'",
    );
    refused(
        &["checkpoint", "d", "--abort", "--wait"],
        2,
        "cannot be used with",
    );
    refused(
        &["images", "prune", "s"],
        2,
        "required arguments were not provided",
    );
    refused(&["images", "prune", "s", "--keep", "0"], 2, "at least 1");
    refused(
        &["images", "prune", "s", "--max-age", "soon"],
        2,
        "invalid duration",
    );
    refused(
        &["images", "delete", "s"],
        2,
        "required arguments were not provided",
    );
    refused(
        &["secondary", "run", "s", "--keep", "x"],
        2,
        "--keep must be a whole number",
    );
    refused(
        &[
            "stack",
            "create",
            "x",
            "--data",
            "/dev/null",
            "--peer",
            "1.2.3.4:5",
            "--protocol",
            "fast",
        ],
        2,
        "invalid value 'fast'",
    );
    refused(
        &[
            "stack",
            "create",
            "x",
            "--data",
            "/dev/null",
            "--peer",
            "1.2.3.4:5",
            "--listen",
            "1.2.3.4:6",
        ],
        2,
        "cannot be used with",
    );
    refused(
        &[
            "stack",
            "create",
            "x",
            "--data",
            "/dev/null",
            "--peer",
            "1.2.3.4:5",
            "--block-size",
            "4096",
        ],
        2,
        "--cache",
    );
    refused(
        &["stack", "create", "--config", "f.toml", "x"],
        2,
        "cannot be used with",
    );
}

#[test]
fn bad_stacks_are_refused_before_device_mapper() {
    // The plan is checked before /dev/mapper/control is opened, so these work on any host.
    refused(
        &[
            "stack",
            "create",
            "x",
            "--data",
            "/dev/null",
            "--peer",
            "10.0.0.300:5",
        ],
        2,
        "an address is an IPv4",
    );
    let dir = std::env::temp_dir().join(format!("wbrepl-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("typo.toml");
    std::fs::write(
        &f,
        "name = \"x\"\n[repl]\ndata = \"/dev/null\"\npeer = \"1.2.3.4:5\"\nprotocl = \"sync\"\n",
    )
    .expect("write");
    let path = f.to_string_lossy().into_owned();
    refused(
        &["stack", "create", "--config", &path],
        2,
        "unknown field `protocl`",
    );
    refused(
        &["stack", "create", "--config", "/nonexistent/x.toml"],
        1,
        "cannot read /nonexistent/x.toml",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
