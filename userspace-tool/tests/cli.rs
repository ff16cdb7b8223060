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
